"""Fuzz the guest natively (the dlserver package and its C kernels) with atheris.

    .venv/bin/python scripts/fuzz.py TARGET [--seconds N] [--runs N]

Each target writes the fuzzer's bytes into one file of a small workspace (LeNet's cfg and
weights, an image, an ONNX model and its input) and runs a guest command on it through
dlserver.main.main, or builds and runs a network from them. A clean `dl-server: error:` is
what bad input must give; the catch-all (`internal error`), an `out of memory` (a limit not
checked before the allocation) or any exception out of the target is a crash: libFuzzer
stops and writes the input to build/fuzz/crash-<target>-*. Seeds are made by code
(fuzz_seeds); the corpus grows in build/fuzz/corpus/<target>.
"""

import argparse
import contextlib
import io
import os
import shutil
import struct
import sys
import tempfile
import zlib
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parent.parent
# DL_SERVER_NATIVE_KERNELS: another build of _dlk (`make sanitize`: build/sanitize)
sys.path[:0] = [
    str(ROOT / "guest"),
    os.environ.get("DL_SERVER_NATIVE_KERNELS", str(ROOT / "build" / "native")),
]
# atheris 2.3's bytecode rewriting breaks wire._skip_group under Python 3.11 (a local
# becomes unbound in its `while True` loop: a false crash), so wire.py runs uninstrumented
with atheris.instrument_imports(include=["dlserver"], exclude=["dlserver.onnx.wire"]):
    from dlserver import buffers
    from dlserver.errors import DLServerError
    from dlserver.image.jpeg import encode_jpeg
    from dlserver.image.load import decode_image
    from dlserver.main import main as guest_main
    from dlserver.network import parse_network_cfg
    from dlserver.weights import weights_bytes

PREDICT = ["classifier", "predict", "cfg/mnist.dataset", "cfg/mnist_lenet.cfg", "model/lenet.weights"]
ONNX_PREDICT = ["aggregation", "onnx_predict", "model/m.onnx", "data/in.pb"]
# target: (the file the fuzzer's bytes go to, the guest's argv; None: read args.cfg)
TARGETS: dict[str, tuple[str, list[str] | None]] = {
    "png": ("img.png", [*PREDICT, "img.png"]),  # decoded by run_image: faster
    "jpeg": ("img.jpg", [*PREDICT, "img.jpg"]),
    "cfg": ("cfg/fuzz.cfg", []),  # built and run forward by run_cfg
    "weights": ("model/lenet.weights", [*PREDICT, "img.png"]),
    "onnx": ("model/m.onnx", ONNX_PREDICT),
    "onnx-input": ("data/in.pb", ONNX_PREDICT),
    "onnx-aggregation": (
        "model/m2.onnx",
        ["aggregation", "onnx", "out.onnx", "model/m.onnx", "model/m2.onnx"],
    ),
    "args": ("args.cfg", None),
}


class Crash(Exception):
    """A failure that is not a clean error line."""


def png(width: int = 28, height: int = 28) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\1" + bytes((x * 9 + y) & 255 for x in range(width)) for y in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def onnx_model() -> tuple[bytes, bytes]:
    """A small MLP (MatMul, Add, Relu, Reshape, Concat, Softmax) and a 1x16 input for it."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b"),
        numpy_helper.from_array(np.array([1, 8], dtype=np.int64), "s"),
    ]
    nodes = [
        helper.make_node("MatMul", ["X", "w"], ["h"]),
        helper.make_node("Add", ["h", "b"], ["a"]),
        helper.make_node("Relu", ["a"], ["r"]),
        helper.make_node("Reshape", ["r", "s"], ["f"]),
        helper.make_node("Concat", ["f", "f"], ["c"], axis=1),
        helper.make_node("Softmax", ["c"], ["Y"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()
    x = numpy_helper.from_array(rng.standard_normal((1, 16)).astype(np.float32), "X").SerializeToString()
    return model, x


def make_workspace(top: Path) -> dict[str, bytes]:
    """The workspace every input runs in; returns its files (the targets' seeds among them)."""
    lenet = (ROOT / "cfg" / "mnist_lenet.cfg").read_bytes()
    with contextlib.redirect_stderr(io.StringIO()):
        weights = weights_bytes(parse_network_cfg(str(ROOT / "cfg" / "mnist_lenet.cfg"), batch=1))
    model, x = onnx_model()
    args = "\n".join([*PREDICT, "img.png", "-t", "3"]) + "\n"
    files = {
        "cfg/mnist_lenet.cfg": lenet,
        "cfg/mnist.dataset": (ROOT / "cfg" / "mnist.dataset").read_bytes(),
        "data/mnist/mnist.labels.list": (ROOT / "data/mnist/mnist.labels.list").read_bytes(),
        "data/mnist/mnist.names.list": (ROOT / "data/mnist/mnist.names.list").read_bytes(),
        "model/lenet.weights": weights,
        "img.png": png(),
        "img.jpg": encode_jpeg(24, 16, bytes(range(256)) * 4 + bytes(128), 75),
        "cfg/fuzz.cfg": lenet,
        "model/m.onnx": model,
        "model/m2.onnx": model,
        "data/in.pb": x,
        "args.cfg": args.encode(),
    }
    for rel, data in files.items():
        (top / rel).parent.mkdir(parents=True, exist_ok=True)
        (top / rel).write_bytes(data)
    return files


def fuzz_seeds(target: str, files: dict[str, bytes]) -> list[bytes]:
    """Seeds for a target: its file in the workspace, and a few relatives."""
    seeds = [files[TARGETS[target][0]]]
    if target == "cfg":
        seeds += [(ROOT / "cfg" / name).read_bytes() for name in ("mnist_resnet.cfg", "yolov3-tiny.cfg")]
    if target == "png":
        seeds.append(png(3, 5))
    return seeds


def run_guest(argv: list[str] | None) -> None:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        guest_main(["dl-server", *argv] if argv is not None else ["dl-server"])
    text = err.getvalue()
    if "internal error" in text or "error: out of memory" in text:
        raise Crash(text.strip().split("\n")[-1])


def run_cfg(path: str) -> None:
    """Build the cfg's network at batch 1 and run one forward pass on zeros."""
    with contextlib.redirect_stderr(io.StringIO()):
        try:
            net = parse_network_cfg(path, batch=1)
            net.forward(buffers.zeros(net.inputs))
        except DLServerError:
            pass


def run_image(data: bytes, name: str) -> None:
    """Decode an image (what the commands do first with one)."""
    try:
        decode_image(data, name)
    except DLServerError:
        pass


def make_test(target: str, top: Path):
    rel, argv = TARGETS[target]
    path = top / rel
    original = path.read_bytes()

    def test_one_input(data: bytes) -> None:
        if target in ("png", "jpeg"):
            run_image(data, rel)
            return
        path.write_bytes(data)
        try:
            if target == "cfg":
                run_cfg(rel)
            else:
                run_guest(argv)
        finally:
            path.write_bytes(original)
            for extra in ("out.onnx", "predictions.jpg"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(top / extra)

    return test_one_input


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("target", choices=sorted(TARGETS))
    parser.add_argument("--seconds", type=int, default=int(os.environ.get("FUZZ_SECONDS", "60")))
    parser.add_argument("--runs", type=int, default=-1, help="stop after this many inputs (-1: no limit)")
    parser.add_argument("--corpus", type=Path, help="corpus directory (default build/fuzz/corpus/TARGET)")
    args = parser.parse_args()
    out_dir = ROOT / "build" / "fuzz"
    out_dir.mkdir(parents=True, exist_ok=True)  # crash files go there (libFuzzer needs it to exist)
    corpus = args.corpus or out_dir / "corpus" / args.target
    corpus.mkdir(parents=True, exist_ok=True)
    top = Path(tempfile.mkdtemp(prefix="dl-server-fuzz-"))
    try:
        files = make_workspace(top)
        for i, seed in enumerate(fuzz_seeds(args.target, files)):
            (corpus / f"seed-{i}").write_bytes(seed)
        test = make_test(args.target, top)
        cwd = os.getcwd()
        os.chdir(top)
        libfuzzer = [
            sys.argv[0],
            f"-max_total_time={args.seconds}",
            f"-runs={args.runs}",
            "-timeout=30",
            "-rss_limit_mb=3072",
            "-max_len=65536",
            f"-artifact_prefix={out_dir}/crash-{args.target}-",
            str(corpus.resolve()),
        ]
        atheris.Setup(libfuzzer, test)
        try:
            atheris.Fuzz()
        finally:
            os.chdir(cwd)
    finally:
        shutil.rmtree(top, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
