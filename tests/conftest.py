"""Shared fixtures: the guest package imported natively, the seed files, the component, and
what the host's component tests (test_host_*) build their workspaces from."""

import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SEED = Path(os.environ.get("DL_SERVER_SEED", ROOT.parent / "shared" / "seed" / "files"))
EXPECTED = SEED.parent / "expected"
WASM = ROOT / "dl-server.wasm"
NATIVE_KERNEL = ROOT / "build" / "native" / "_dlk.abi3.so"
MNIST_IMAGE = ROOT / "data" / "mnist" / "images_client1" / "t_00000_c5.png"
# args_files/prediction_one.cfg: predict MNIST_IMAGE with the seed's LeNet
PREDICT_ARGS = [
    "classifier",
    "predict",
    "cfg/mnist.dataset",
    "cfg/mnist_lenet.cfg",
    "model/mnist_lenet.weights",
    "data/mnist/images_client1/t_00000_c5.png",
]

# Rebuilds only when a kernel source is newer than the library (a stale one would test old code).
subprocess.run(
    [sys.executable, str(ROOT / "scripts" / "build_kernels.py"), "native"],
    check=True,
    stdout=subprocess.DEVNULL,
)
# DL_SERVER_NATIVE_KERNELS: another build of _dlk to test (`make sanitize`: build/sanitize)
for path in (Path(os.environ.get("DL_SERVER_NATIVE_KERNELS", ROOT / "build" / "native")), ROOT / "guest"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))


def seed_file(relative: str) -> Path:
    """A file of the original example in ../shared, or skip the test when it is absent."""
    path = SEED / relative
    if not path.exists():
        pytest.skip(f"seed file {relative} not present in {SEED}")
    return path


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A working directory with the repo's cfg/ and data/ lists, like the example's root."""
    shutil.copytree(ROOT / "cfg", tmp_path / "cfg")
    shutil.copytree(ROOT / "args_files", tmp_path / "args_files")
    (tmp_path / "data" / "mnist").mkdir(parents=True)
    for name in ("mnist.labels.list", "mnist.names.list"):
        shutil.copy(ROOT / "data" / "mnist" / name, tmp_path / "data" / "mnist" / name)
    shutil.copy(ROOT / "data" / "coco.names", tmp_path / "data" / "coco.names")
    (tmp_path / "model").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def lenet_weights(workdir):
    """The seed's trained LeNet weights copied into workdir/model/."""
    src = seed_file("model/mnist_lenet.weights")
    dst = workdir / "model" / "mnist_lenet.weights"
    shutil.copy(src, dst)
    return dst


def mnist_images(workdir: Path, names: list[str]) -> list[str]:
    """Copy these prepared MNIST images into workdir (skip the test without them); their paths."""
    if not MNIST_IMAGE.exists():
        pytest.skip("MNIST not prepared (make mnist_training)")
    src = MNIST_IMAGE.parent
    dst = workdir / "data" / "mnist" / "images_client1"
    dst.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(src / name, dst / name)
    return [f"data/mnist/images_client1/{name}" for name in names]


@pytest.fixture
def prediction_one(workdir, lenet_weights):
    """workdir ready for args_files/prediction_one.cfg (PREDICT_ARGS) as args.cfg."""
    mnist_images(workdir, [MNIST_IMAGE.name])
    shutil.copy(workdir / "args_files" / "prediction_one.cfg", workdir / "args.cfg")
    return workdir


def wasmtime_cli() -> str:
    exe = Path(sys.executable).parent / "wasmtime"
    return str(exe) if exe.exists() else shutil.which("wasmtime") or "wasmtime"


@pytest.fixture
def component():
    """Path of the built dl-server.wasm (component tests skip without it)."""
    if not WASM.exists():
        pytest.skip("dl-server.wasm not built (run make)")
    return WASM


def run_wasmtime(cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`wasmtime --dir=./ dl-server.wasm [args]` in cwd, as the README runs it."""
    return subprocess.run(
        [wasmtime_cli(), "run", "-C", "cache=y", "--dir=./", str(WASM), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# The host's component tests: DL_SERVER_WASM runs them against another build.
HOST_WASM = Path(os.environ.get("DL_SERVER_WASM", WASM))
NEEDS_HOST_WASM = [
    pytest.mark.component,
    pytest.mark.skipif(not HOST_WASM.is_file(), reason=f"{HOST_WASM} is not built (run `make`)"),
]
LENET_PARAMETERS = 456 + 906 + 35400 + 10164 + 850  # conv1, conv2, fc 294-120, 120-84, 84-10


def lenet_aggregation(output: str, *inputs: str) -> list[str]:
    """The guest's args for `aggregation darknet` of LeNet weights files into output."""
    return ["aggregation", "darknet", "cfg/mnist_lenet.cfg", output, *inputs]


def flat_lenet_weights(value: float = 0.0) -> bytes:
    """A LeNet weights file (major 0, minor 2, revision 0, seen 0) with every parameter = value."""
    return struct.pack("<iiiQ", 0, 2, 0, 0) + struct.pack("<f", value) * LENET_PARAMETERS


def gray_png(width: int = 28, height: int = 28) -> bytes:
    """An 8-bit grayscale PNG with a diagonal stroke."""
    rows = b"".join(
        b"\x00" + bytes(255 if abs(x - y) < 2 else 0 for x in range(width)) for y in range(height)
    )

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="session")
def program() -> str:
    """HOST_WASM, compiled once into the shared compile cache for the whole session."""
    from dlserver_host import compile_cache, runtime

    engine = runtime.make_engine(interruptible=False)
    runtime.load_component(engine, HOST_WASM, compile_cache.default_cache_dir())
    return str(HOST_WASM)


def run_host(program: str, args_cfg: list[str] | None, *flags: str) -> int:
    """Write args.cfg (unless None) and run the `dl-server` host in-process; its exit status."""
    from dlserver_host import cli

    if args_cfg is not None:
        Path("args.cfg").write_text("".join(a + "\n" for a in args_cfg))
    return cli.main(["--program", program, *flags])


def write_band_dataset(workdir: Path) -> Path:
    """24 8x8 RGB PNGs of 3 classes (a bright band per class) under data/p/, their list,
    labels and cfg/p.dataset (its cfg, cfg/p.cfg, is the caller's); returns workdir."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    (workdir / "data" / "p").mkdir(parents=True)
    paths = []
    for i in range(24):
        label = i % 3
        pixels = rng.integers(0, 40, (8, 8, 3), dtype=np.uint8)
        pixels[:, label * 2 : label * 2 + 3] = 220
        path = f"data/p/p_{i:03d}_c{label}.png"
        Image.fromarray(pixels, "RGB").save(workdir / path)
        paths.append(path)
    (workdir / "data" / "p.list").write_text("\n".join(paths) + "\n")
    (workdir / "data" / "labels.list").write_text("c0\nc1\nc2\n")
    (workdir / "cfg" / "p.dataset").write_text(
        "classes=3\ntrain=data/p.list\nvalid=data/p.list\nbackup=model\nlabels=data/labels.list\n"
        "names=data/labels.list\ntop=2\n"
    )
    return workdir


TRAIN_BAND_ARGS = ("classifier", "train", "cfg/p.dataset", "cfg/p.cfg", "-seed", "3")
PREDICT_BAND_ARGS = (
    "classifier",
    "predict",
    "cfg/p.dataset",
    "cfg/p.cfg",
    "model/p.weights",
    "data/p/p_000_c0.png",
)


def train_then_predict_band(capsys, batches: int) -> str:
    """Train cfg/p.cfg on write_band_dataset's images natively (DL_SERVER_CLOCK=0 set by the
    caller), check `batches` finite losses, then predict one image and check its top 2; the
    training run's stderr (the layer table) is returned."""
    import math

    from dlserver.main import main
    from dlserver_host.darknet_output import TRAIN_LINE

    assert main(["dl-server", *TRAIN_BAND_ARGS]) == 0
    out, err = capsys.readouterr()
    losses = [float(m.group(3)) for m in map(TRAIN_LINE.match, out.splitlines()) if m]
    assert len(losses) == batches and all(map(math.isfinite, losses)), out
    assert main(["dl-server", *PREDICT_BAND_ARGS]) == 0
    out = capsys.readouterr().out
    assert len([line for line in out.splitlines() if "%:" in line]) == 2, out
    return err


def assert_component_trains_as_native(workdir: Path, capsys, args, weights: str) -> None:
    """The same seeded training run natively and in dl-server.wasm prints the same lines (but
    the seconds: the component's clock runs) and writes the same weights file."""
    import re

    from dlserver.main import main

    assert main(["dl-server", *args]) == 0
    native_out = capsys.readouterr().out
    native = (workdir / weights).read_bytes()
    (workdir / weights).unlink()
    run = run_wasmtime(workdir, *args)
    assert run.returncode == 0, run.stderr
    seconds = re.compile(r", [0-9.]+ seconds,")
    assert seconds.sub(",", run.stdout) == seconds.sub(",", native_out)
    assert (workdir / weights).read_bytes() == native


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 1 MiB tmpfs at tmp_path/full (needs root; skipped where mount is refused)."""
    mount_point = tmp_path / "full"
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], capture_output=True
    )
    if result.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)
