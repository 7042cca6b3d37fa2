"""Shared fixtures: the guest package imported natively, the seed files, the component."""

import os
import shutil
import subprocess
import sys
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
for path in (ROOT / "build" / "native", ROOT / "guest"):
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
