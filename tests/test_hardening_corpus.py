"""The bad-input corpus (tests/corpus/hostile.py) run natively through dlserver.main.main: every
case one clean error line naming its file, exit status 1, no file written or changed, and
done within CASE_SECONDS; none reaches the catch-all `internal error`."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, wasmtime_cli
from corpus import hostile
from dlserver import buffers
from dlserver.main import main
from dlserver.network import parse_network_cfg
from dlserver.weights import weights_bytes

CASE_SECONDS = 10.0


def _lenet_size() -> int:
    from conftest import SEED

    path = SEED / "model" / "mnist_lenet.weights"
    return path.stat().st_size if path.exists() else 0


CASES = hostile.cases(_lenet_size())


@pytest.fixture(scope="session")
def template(tmp_path_factory):
    """The base workspace every case starts from (see tests/corpus/hostile.py)."""
    from conftest import SEED

    if not (SEED / "model" / "mnist_lenet.weights").exists():
        pytest.skip("seed files not present")
    root = tmp_path_factory.mktemp("corpus-base")
    shutil.copytree(ROOT / "cfg", root / "cfg")
    (root / "data" / "mnist").mkdir(parents=True)
    for name in ("mnist.labels.list", "mnist.names.list"):
        shutil.copy(ROOT / "data" / "mnist" / name, root / "data" / "mnist" / name)
    shutil.copy(ROOT / "data" / "coco.names", root / "data" / "coco.names")
    (root / "model").mkdir()
    shutil.copy(SEED / "model" / "mnist_lenet.weights", root / "model" / "mnist_lenet.weights")
    shutil.copy(SEED / "model" / "mnist_model_c1.onnx", root / "model" / "c1.onnx")
    shutil.copy(SEED / "data" / "mnist_input_0.pb", root / "data" / "in.pb")
    (root / "img.png").write_bytes(hostile.png())
    (root / "dog.png").write_bytes(hostile.png(64, 64, colour=2))
    (root / "cfg" / "yolo-small.cfg").write_text(hostile.YOLO_SMALL)
    net = parse_network_cfg(str(root / "cfg" / "yolo-small.cfg"), batch=1)
    (root / "model" / "yolo-small.weights").write_bytes(weights_bytes(net))
    del net
    return root


def snapshot(root: Path) -> dict:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file() or p.is_dir()
    }


def materialise(case: hostile.Case, root: Path) -> None:
    lenet = (root / "model" / "mnist_lenet.weights").read_bytes()
    for rel, content in case.files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, tuple) and content[0] in hostile.SPECIAL:
            path.unlink(missing_ok=True)
            make_special(path, *content)
            continue
        if isinstance(content, tuple):
            kind, arg = content
            content = lenet[:arg] + bytes(max(0, arg - len(lenet))) if kind == "LEN" else arg + lenet[12:]
        path.write_bytes(content)


def make_special(path: Path, kind: str, arg) -> None:
    """A FIFO, a sparse file of `arg` bytes or a directory where the case says (hostile.SPECIAL)."""
    if kind == "FIFO":
        os.mkfifo(path)
    elif kind == "SPARSE":
        with open(path, "wb") as f:
            f.truncate(arg)
    else:
        path.mkdir()


def run_case(case: hostile.Case, template: Path, tmp_path: Path, monkeypatch, capsys):
    root = tmp_path / "w"
    shutil.copytree(template, root)
    materialise(case, root)
    for name, value in case.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(root)
    before = snapshot(root)
    capsys.readouterr()
    start = time.monotonic()
    status = main(["dl-server", *case.argv] if case.argv is not None else ["dl-server"])
    seconds = time.monotonic() - start
    out, err = capsys.readouterr()
    return status, out, err, seconds, before, snapshot(root)


def printable(text: str) -> bool:
    return all(ch >= " " and ch != "\x7f" for ch in text)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_corpus_case(case, template, tmp_path, monkeypatch, capsys):
    status, _, err, seconds, before, after = run_case(case, template, tmp_path, monkeypatch, capsys)
    last = err.rstrip("\n").split("\n")[-1]
    assert "internal error" not in err, last
    assert "out of memory" not in last, last  # a limit is checked before the allocation
    assert last.startswith("dl-server: error: "), err[-2000:]
    assert status == 1
    assert case.names in last, last
    assert printable(last), repr(last)
    assert after == before, sorted(set(after.items()) ^ set(before.items()))
    assert seconds < CASE_SECONDS, f"{case.name}: {seconds:.1f} s"
    assert buffers.live_bytes() < 2**30


def test_corpus_size():
    assert len(CASES) >= 150
    kinds = {c.name.split("-")[0] for c in CASES}
    assert {"cfg", "weights", "image", "onnx", "args", "argsfile", "dataset", "detect"} <= kinds


def test_the_base_workspace_runs_clean(template, tmp_path, monkeypatch, capsys):
    """The corpus's base workspace itself predicts, detects and runs ONNX without error: each
    case's failure is its own hostile input."""
    for argv in (hostile.PREDICT + ["img.png"], hostile.DETECT, hostile.ONNX_PREDICT):
        case = hostile.Case("good", argv)
        status, out, err, _, _, _ = run_case(case, template, tmp_path / argv[0], monkeypatch, capsys)
        assert status == 0, err[-500:]


COMPONENT_CASES = [
    "cfg-conv-filters-digits",
    "cfg-section-escape",
    "cfg-conv-filters-900000",
    "cfg-route-100000-sources",
    "weights-len-17",
    "image-png-zlib-bomb",
    "image-jpeg-8192",
    "onnx-concat-bomb",
    "argsfile-nul",
    "args-thresh-negative",
    "fifo-cfg",
    "fifo-image",
    "argsfile-sparse-2g",
    "dataset-train-epoch-dir-in-the-way",
    "dataset-valid-image-fifo-dir",
    "dataset-valid-image-fifo-21st-dir",
    "dataset-train-image-fifo-dir",
]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """dl-server.wasm compiled into wasmtime's cache first, so compiling is not timed."""
    from conftest import WASM

    if not WASM.exists():
        pytest.skip("dl-server.wasm not built (run make)")
    empty = tmp_path_factory.mktemp("empty")
    subprocess.run(
        [wasmtime_cli(), "run", "-C", "cache=y", "--dir=./", str(WASM)], cwd=empty, capture_output=True
    )
    return WASM


RSS_LAUNCHER = (
    "import os, subprocess, sys\n"
    "p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
    "_, status, usage = os.wait4(p.pid, 0)\n"
    "print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)\n"
)


@pytest.mark.component
@pytest.mark.parametrize("name", COMPONENT_CASES)
def test_corpus_case_through_the_component(name, template, tmp_path, compiled):
    """A few cases under the wasmtime CLI: the same clean line, within 10 s and 1 GiB."""
    case = next(c for c in CASES if c.name == name)
    root = tmp_path / "w"
    shutil.copytree(template, root)
    materialise(case, root)
    if case.argv is not None:
        (root / "args.cfg").write_text("".join(a + "\n" for a in case.argv))
    before = snapshot(root)
    start = time.monotonic()
    # A small launcher forks wasmtime: a child forked from this (possibly large) test process
    # would inherit its peak RSS in ru_maxrss, even across exec.
    wasmtime = [wasmtime_cli(), "run", "-C", "cache=y", "--dir=./", str(compiled)]
    proc = subprocess.run(
        [sys.executable, "-c", RSS_LAUNCHER, *wasmtime], cwd=root, capture_output=True, timeout=120
    )
    err = proc.stderr.decode("utf-8", "replace")
    proc.returncode, maxrss = map(int, proc.stdout.split())
    seconds = time.monotonic() - start
    last = err.rstrip("\n").split("\n")[-1]
    assert proc.returncode == 1 and last.startswith("dl-server: error: "), err[-2000:]
    assert case.names in last and printable(last) and "out of memory" not in last, last
    assert snapshot(root) == before
    assert seconds < CASE_SECONDS
    assert maxrss < 1 << 20  # KiB: 1 GiB
