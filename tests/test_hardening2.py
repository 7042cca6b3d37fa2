"""Hardening, second part (issue 11): the work estimate checked before a run, staging left by a
SIGKILLed host removed by the next run, a full $TMPDIR as one error line, aggregation rules that
hold every model refused up front when the models do not fit."""

import contextlib
import fcntl
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import NEEDS_HOST_WASM, ROOT, flat_lenet_weights, gray_png, lenet_aggregation
from dlserver import limits
from dlserver.main import main
from dlserver.network import parse_network_cfg
from dlserver.work import check_work
from dlserver_host import tempdirs

LENET = ROOT / "cfg" / "mnist_lenet.cfg"
YOLOV3 = Path("/usr/share/darknet/cfg/yolov3.cfg")


def host_component(test):
    """A test of the host running dl-server.wasm (component-marked, skipped when not built)."""
    for mark in NEEDS_HOST_WASM:
        test = mark(test)
    return test


def quiet_parse(cfg, **kwargs):
    with contextlib.redirect_stderr(io.StringIO()):
        return parse_network_cfg(str(cfg), **kwargs)


def guest(*argv: str) -> tuple[int, str]:
    """dlserver.main natively: exit status and stderr."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = main(["dl-server", *argv])
    return status, err.getvalue()


# ------------------------------------------------------------------ the work estimate


def test_conv_multiply_adds_are_half_darknets_bflops():
    """Each conv layer's estimate is the BFLOPs of Darknet's layer table (2 flops a multiply-add)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        net = parse_network_cfg(str(ROOT / "cfg" / "yolov3-tiny.cfg"), batch=1)
    printed = [float(m) for m in re.findall(r"([0-9.]+) BFLOPs", err.getvalue())]
    convs = [layer for layer in net.layers if layer.kind == "convolutional"]
    assert len(printed) == len(convs) == 13
    for layer, bflops in zip(convs, printed):
        assert f"{2 * layer.multiply_adds() / 1e9:5.3f}" == f"{bflops:5.3f}"


def test_other_layers_count_their_products():
    text = textwrap.dedent("""\
        [net]
        batch=1
        height=8
        width=8
        channels=2
        [maxpool]
        size=3
        stride=1
        [connected]
        output=5
        [rnn]
        output=4
        """)
    cfg = Path("work.cfg")
    cfg.write_text(text)
    try:
        pool, conn, rnn = quiet_parse(cfg, batch=1).layers
    finally:
        cfg.unlink()
    assert pool.multiply_adds() == 8 * 8 * 2 * 9
    assert conn.multiply_adds() == 128 * 5
    assert rnn.multiply_adds() == 5 * 4 + 4 * 4 + 4 * 4  # input, self and output sublayers


def test_every_real_use_is_under_the_default_limit(monkeypatch):
    monkeypatch.delenv("DL_SERVER_MAX_WORK", raising=False)
    limits.refresh()
    lenet = quiet_parse(LENET)
    assert lenet.max_batches == 2000
    rows = 10000 * lenet.batch * lenet.subdivisions  # LeNet trained for 10000 batches of 100
    check_work(lenet, rows, "LeNet, 10000 batches", training=True)
    resnet = quiet_parse(ROOT / "cfg" / "mnist_resnet.cfg")  # demo-bn
    check_work(resnet, resnet.max_batches * resnet.batch, "demo-bn", training=True)
    check_work(lenet, 10000, "valid of the 10000 MNIST test images")
    # and the margin: 5 times LeNet's 10000 batches, at least
    assert 5 * 3 * sum(x.multiply_adds() for x in lenet.layers) * rows <= limits.MAX_WORK


@pytest.mark.skipif(not YOLOV3.exists(), reason="Debian's darknet cfgs not installed")
def test_yolov3_at_608_detects_under_the_default_limit(monkeypatch):
    monkeypatch.setenv("DL_SERVER_MAX_BUFFER_BYTES", str(3 << 30))
    monkeypatch.delenv("DL_SERVER_MAX_WORK", raising=False)
    limits.refresh()
    net = quiet_parse(YOLOV3, batch=1)
    assert (net.w, net.h) == (608, 608)
    check_work(net, 1, "detect of 1 image")
    del net


def test_the_limit_is_read_at_each_run(workdir, monkeypatch):
    """DL_SERVER_MAX_WORK lowered refuses LeNet's valid of 3 images, naming the cfg; the
    default lets it run."""
    (workdir / "img_c5.png").write_bytes(gray_png())
    (workdir / "v.list").write_text("img_c5.png\n" * 3)
    (workdir / "v.dataset").write_text("classes=10\nvalid=v.list\nlabels=data/mnist/mnist.labels.list\n")
    argv = ["classifier", "valid", "v.dataset", "cfg/mnist_lenet.cfg"]
    monkeypatch.setenv("DL_SERVER_MAX_WORK", "1500000")
    status, err = guest(*argv)
    assert status == 1
    assert err.splitlines()[-1] == (
        "dl-server: error: cfg/mnist_lenet.cfg: the network needs about 1.75e+06 multiply-adds for valid"
        " of 3 images, over the work limit 1.5e+06 (DL_SERVER_MAX_WORK raises it)"
    )
    monkeypatch.delenv("DL_SERVER_MAX_WORK")
    status, err = guest(*argv)
    assert status == 0, err[-500:]


def test_training_counts_only_the_batches_left(workdir, monkeypatch):
    """A weights file that has seen 1990 of max_batches=2000 batches leaves 10 to train."""
    import struct

    weights = struct.pack("<iiiQ", 0, 2, 0, 1990 * 100) + flat_lenet_weights()[20:]
    (workdir / "model" / "late.weights").write_bytes(weights)
    net = quiet_parse(LENET)
    per_batch = 3 * sum(layer.multiply_adds() for layer in net.layers) * 100
    monkeypatch.setenv("DL_SERVER_MAX_WORK", str(11 * per_batch))  # 10 batches fit, 2000 do not
    (workdir / "t.dataset").write_text("classes=10\ntrain=none.list\nlabels=data/mnist/mnist.labels.list\n")
    status, err = guest("classifier", "train", "t.dataset", "cfg/mnist_lenet.cfg", "model/late.weights")
    assert "work limit" not in err and "none.list" in err.splitlines()[-1]  # past the check
    status, err = guest("classifier", "train", "t.dataset", "cfg/mnist_lenet.cfg")
    assert status == 1
    assert "needs about" in err and "training 2000 batches of 100 rows" in err.splitlines()[-1]


# ------------------------------------------------------------------ aggregation memory


def test_rules_that_hold_every_model_are_refused_up_front(workdir, monkeypatch):
    """Under a small buffer budget the streaming mean of 12 LeNet files runs; median (and a rule
    of dlserver.rules) would hold all 12: one error line naming the cfg, no output."""
    for i in range(12):
        (workdir / "model" / f"c{i}.weights").write_bytes(flat_lenet_weights(i / 10))
    inputs = [f"model/c{i}.weights" for i in range(12)]
    monkeypatch.setenv("DL_SERVER_MAX_BUFFER_BYTES", str(256 << 10))
    status, err = guest(*lenet_aggregation("model/mean.weights", *inputs))
    assert status == 0, err[-500:]
    for method in ("median", "krum:1"):
        status, err = guest(*lenet_aggregation("model/out.weights", *inputs), "-method", method)
        assert status == 1
        last = err.splitlines()[-1]
        assert last.startswith(f"dl-server: error: cfg/mnist_lenet.cfg: -method {method} holds 12 models"), (
            last
        )
        assert "DL_SERVER_MAX_BUFFER_BYTES raises it" in last
        assert not (workdir / "model" / "out.weights").exists()
    monkeypatch.delenv("DL_SERVER_MAX_BUFFER_BYTES")
    status, err = guest(*lenet_aggregation("model/out.weights", *inputs), "-method", "median")
    assert status == 0, err[-500:]


def test_onnx_rules_that_hold_every_model_are_refused_up_front(workdir, monkeypatch):
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    for i in range(6):
        w = numpy_helper.from_array(np.full((256, 256), i, np.float32), "w")
        x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 256])
        y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 256])
        graph = helper.make_graph([helper.make_node("MatMul", ["X", "w"], ["Y"])], "g", [x], [y], [w])
        (workdir / f"m{i}.onnx").write_bytes(helper.make_model(graph).SerializeToString())
    argv = ["aggregation", "onnx", "out.onnx", *[f"m{i}.onnx" for i in range(6)], "-method", "median"]
    monkeypatch.setenv("DL_SERVER_MAX_BUFFER_BYTES", str(1 << 20))  # 8 copies of 256 KiB do not fit
    status, err = guest(*argv)
    assert status == 1
    assert err.splitlines()[-1].startswith(
        "dl-server: error: m0.onnx: -method median holds 6 models of 65536"
    )
    assert not (workdir / "out.onnx").exists()
    monkeypatch.setenv("DL_SERVER_MAX_BUFFER_BYTES", str(4 << 20))
    status, err = guest(*argv)
    assert status == 0, err[-500:]


# ------------------------------------------------------------------ staging of killed runs

HOLD = """
import sys, time
from dlserver_host.tempdirs import OwnedDir
d = OwnedDir(sys.argv[1], sys.argv[2])
print(d.path, flush=True)
time.sleep(600)
"""


def _holder(prefix: str, parent: Path) -> tuple[subprocess.Popen, Path]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, prefix, str(parent)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    return proc, Path(proc.stdout.readline().strip())


def test_a_killed_owners_directories_are_removed_a_live_ones_kept(tmp_path):
    dead, dead_dir = _holder("dl-server-", tmp_path)
    live, live_dir = _holder("dl-server-stdio-", tmp_path)
    try:
        assert dead_dir.name.startswith(f"dl-server-{dead.pid}-")
        (dead_dir / "out0").mkdir()
        (dead_dir / "out0" / "half.weights").write_bytes(bytes(1000))
        other = tmp_path / "dl-server-notours"  # not a name this module makes
        other.mkdir()
        dead.send_signal(signal.SIGKILL)
        dead.wait()
        assert tempdirs.remove_abandoned(tmp_path) == [dead_dir]
        assert not dead_dir.exists() and live_dir.is_dir() and other.is_dir()
    finally:
        for proc in (dead, live):
            proc.kill()
            proc.wait()
    assert tempdirs.remove_abandoned(tmp_path) == [live_dir]


def test_an_unlocked_directory_goes_only_when_its_pid_is_dead(tmp_path):
    """Killed between mkdtemp and the lock: no .owner file, the PID decides."""
    mine = tmp_path / f"dl-server-{os.getpid()}-abcdefgh"
    mine.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    gone = tmp_path / f"dl-server-{proc.pid}-abcdefgh"
    gone.mkdir()
    assert tempdirs.remove_abandoned(tmp_path) == [gone]
    assert mine.is_dir()


def test_owner_file_appears_only_locked(tmp_path):
    """A run's ``.owner`` is locked before it has that name: a second run's tidying, racing
    a run that has just made its directory, cannot find it unlocked and remove it."""
    owned = tempdirs.OwnedDir("dl-server-", tmp_path)
    try:
        assert sorted(p.name for p in owned.path.iterdir()) == [tempdirs.OWNER_FILE]
        fd = os.open(owned.path / tempdirs.OWNER_FILE, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
        assert tempdirs.remove_abandoned(tmp_path) == []
    finally:
        owned.release()


def test_write_back_removes_temporary_files_a_killed_writer_left(tmp_path):
    """A write-back killed by SIGKILL between its copies and its renames leaves
    `.<name>.<pid>.<random>.dl-server-tmp` files; the next write-back into that directory
    removes those of dead PIDs, and keeps a live writer's."""
    from dlserver_host import sources
    from dlserver_host.atomic import copy_beside

    (tmp_path / "model").mkdir()
    src = tmp_path / "src.bin"
    src.write_bytes(b"new")
    ours = copy_beside(src, tmp_path / "model" / "a.weights")  # a live writer's: this process
    assert ours.name.startswith(f".a.weights.{os.getpid()}.")
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    dead = tmp_path / "model" / f".b.weights.{proc.pid}.abcdefgh.dl-server-tmp"
    dead.write_bytes(b"half")
    with sources.stage_sources([], ["model"], tmp_path) as staged:
        private = next(m.host_dir for m in staged.mounts if m.writable)
        (private / "c.weights").write_bytes(b"c")
        assert staged.write_back() == [tmp_path / "model" / "c.weights"]
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == sorted([ours.name, "c.weights"])


def _training_workspace(ws: Path) -> None:
    """LeNet training for 2000 batches on one image, through the host."""
    (ws / "cfg").mkdir(parents=True)
    shutil.copy(LENET, ws / "cfg" / "mnist_lenet.cfg")
    (ws / "data").mkdir()
    shutil.copy(ROOT / "data/mnist/mnist.labels.list", ws / "data/labels.list")
    (ws / "data/t_00000_c5.png").write_bytes(gray_png())
    (ws / "data/train.list").write_text("data/t_00000_c5.png\n")
    (ws / "model").mkdir()
    (ws / "cfg/train.dataset").write_text(
        "classes=10\ntrain=data/train.list\nlabels=data/labels.list\nbackup=model\n"
    )
    (ws / "args.cfg").write_text("classifier\ntrain\ncfg/train.dataset\ncfg/mnist_lenet.cfg\n")


@host_component
def test_staging_of_a_sigkilled_host_is_removed_by_the_next_run(tmp_path, program):
    ws = tmp_path / "ws"
    _training_workspace(ws)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    host = [str(Path(sys.executable).parent / "dl-server"), "--program", program]
    proc = subprocess.Popen(
        [*host, "-i", "args.cfg", "cfg", "data", "-o", "model"],
        cwd=ws,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "TMPDIR": str(tmp)},
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if b"images" in line:  # a training line: the guest runs, its staging is in tmp
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = sorted(p.name for p in tmp.iterdir())
    assert any(n.startswith(f"dl-server-{proc.pid}-") for n in left), left
    assert any(n.startswith(f"dl-server-stdio-{proc.pid}-") for n in left), left
    assert os.listdir(ws / "model") == []
    (ws / "args.cfg").write_text("classifier\npredict\n")  # a quick run (an error) that stages
    result = subprocess.run(
        [*host, "-i", "args.cfg", "cfg"], cwd=ws, env={**os.environ, "TMPDIR": str(tmp)}, capture_output=True
    )
    assert result.returncode == 1
    assert list(tmp.iterdir()) == []


# ------------------------------------------------------------------ a full $TMPDIR


@host_component
def test_guest_stdout_into_a_full_tmpdir_is_one_line_not_a_crash(tmp_path, tiny_tmpfs, program):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "args.cfg").write_text(("x" * 1000 + "\n") * 600)  # echoed to stdout: 600 KB
    (tiny_tmpfs / "filler").write_bytes(bytes(200 << 10))
    env = {**os.environ, "TMPDIR": str(tiny_tmpfs)}
    result = subprocess.run(
        [str(Path(sys.executable).parent / "dl-server"), "--program", program, "-i", "args.cfg", "-d"],
        cwd=ws,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert result.stderr == (
        f"dl-server: error: no space left in {tiny_tmpfs} for the guest's stdout and stderr"
        " (free some, or set TMPDIR to another directory)\n"
    )
    assert os.listdir(tiny_tmpfs) == ["filler"]


@host_component
def test_outputs_into_a_full_tmpdir_are_one_guest_error_and_nothing_written_back(
    tmp_path, tiny_tmpfs, program
):
    """The output source is staged in $TMPDIR: the guest's weights file cannot be written there;
    the guest names it, and nothing reaches the output directory."""
    ws = tmp_path / "ws"
    _training_workspace(ws)
    cfg = ws / "cfg" / "mnist_lenet.cfg"
    cfg.write_text(cfg.read_text().replace("max_batches=2000", "max_batches=2"))
    (tiny_tmpfs / "filler").write_bytes(bytes(900 << 10))
    result = subprocess.run(
        [str(Path(sys.executable).parent / "dl-server"), "--program", program]
        + ["-i", "args.cfg", "cfg", "data", "-o", "model"],
        cwd=ws,
        env={**os.environ, "TMPDIR": str(tiny_tmpfs)},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    last = result.stderr.splitlines()[-1]
    assert re.fullmatch(
        r"dl-server: error: model/mnist_lenet_\d+\.weights: cannot write weights file: .*", last
    )
    assert "Traceback" not in result.stderr and "crashed" not in result.stderr
    assert os.listdir(ws / "model") == []
    assert os.listdir(tiny_tmpfs) == ["filler"]
