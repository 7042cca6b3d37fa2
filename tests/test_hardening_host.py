"""The host under hostile conditions: symlinked sources, signals, full disks, absurd flags,
a guest that writes a lot with -d."""

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest

from conftest import NEEDS_HOST_WASM, ROOT, flat_lenet_weights, gray_png
from dlserver_host import cli, sources
from dlserver_host.atomic import TEMP_SUFFIX
from dlserver_host.runtime import Interrupted, StopSignals

AGGREGATE = ["aggregation", "darknet", "cfg/mnist_lenet.cfg", "model/avg.weights", "model/a.weights"]


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch) -> Path:
    """cwd with LeNet's cfg, a weights file, one image; `outside/` next to it holds a secret."""
    ws = tmp_path / "ws"
    (ws / "cfg").mkdir(parents=True)
    for name in ("mnist.dataset", "mnist_lenet.cfg"):
        shutil.copy(ROOT / "cfg" / name, ws / "cfg" / name)
    (ws / "data").mkdir()
    shutil.copy(ROOT / "data/mnist/mnist.labels.list", ws / "data/labels.list")
    (ws / "data/t_00000_c5.png").write_bytes(gray_png())
    (ws / "model").mkdir()
    (ws / "model/a.weights").write_bytes(flat_lenet_weights(0.5))
    (ws / "dl-server.wasm").write_bytes(b"\0asm")  # the symlink checks come before loading
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside/secret.txt").write_text("secret")
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    monkeypatch.chdir(ws)
    return ws


def host(*flags: str) -> int:
    return cli.main(["--program", "dl-server.wasm", *flags])


@pytest.mark.parametrize(
    ("link", "target", "flags"),
    [
        ("secret.txt", "outside/secret.txt", ["-i", "secret.txt"]),
        ("ext", "outside", ["-i", "ext"]),
        ("args.cfg", "outside/secret.txt", ["-i", "args.cfg"]),
        ("out", "outside", ["-o", "out"]),
        ("out", "outside", ["-o", "out/sub"]),
        ("model2", "outside", ["-i", "cfg", "-o", "model2"]),
    ],
)
def test_a_source_symlinked_outside_is_refused(workspace, capfd, link, target, flags):
    os.symlink(workspace.parent / target, workspace / link)
    before = sorted(p.name for p in (workspace.parent / "outside").iterdir())
    assert host(*flags) == 1
    err = capfd.readouterr().err
    resolved = os.path.realpath(workspace.parent / target)
    assert err.count("\n") == 1, err
    assert err.startswith("dl-server: error: source path resolves outside the current directory")
    assert resolved in err
    assert sorted(p.name for p in (workspace.parent / "outside").iterdir()) == before
    assert list((workspace.parent / "tmp").iterdir()) == []


def test_a_symlink_inside_the_working_directory_is_fine(workspace):
    os.symlink("cfg", workspace / "cfg2")
    staged = sources.stage_sources(["cfg2"], [], workspace)
    staged.cleanup()


@pytest.mark.parametrize("value", ["inf", "1e308", "nan", "-1", "0"])
def test_absurd_timeouts_are_usage_errors(workspace, capsys, value):
    with pytest.raises(SystemExit) as stop:
        host("--timeout", value)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "--timeout" in err and "Traceback" not in err


def _changed_files(workspace: Path) -> sources.StagedSources:
    """Staged sources whose output `model` has two new files, as a guest would leave them."""
    staged = sources.stage_sources(["model"], ["model"], workspace)
    private = next(m.host_dir for m in staged.mounts if m.writable)
    (private / "one.weights").write_bytes(b"1" * 1000)
    (private / "two.weights").write_bytes(b"2" * 1000)
    return staged


def test_a_failed_copy_in_the_write_back_writes_nothing(workspace, monkeypatch):
    real = sources.copy_beside
    calls = []

    def full_disk(src, dest):
        calls.append(dest)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(src, dest)

    monkeypatch.setattr(sources, "copy_beside", full_disk)
    before = sorted(os.listdir(workspace / "model"))
    with (
        _changed_files(workspace) as staged,
        pytest.raises(sources.SourceError, match="nothing was written back"),
    ):
        staged.write_back()
    assert sorted(os.listdir(workspace / "model")) == before  # no file, no temporary file


def test_a_signal_during_the_renames_waits_for_the_last(workspace, monkeypatch):
    real_replace = os.replace
    renamed = []

    def replace_then_signal(src, dst):
        real_replace(src, dst)
        renamed.append(dst)
        if len(renamed) == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # handled between these two renames

    monkeypatch.setattr(sources.os, "replace", replace_then_signal)
    with StopSignals() as signals, _changed_files(workspace) as staged, pytest.raises(Interrupted):
        staged.write_back(signals.deferred)
    assert signals.exit_status == 128 + signal.SIGTERM
    assert len(renamed) == 2
    assert (workspace / "model/one.weights").read_bytes() == b"1" * 1000
    assert (workspace / "model/two.weights").read_bytes() == b"2" * 1000
    assert not [p for p in os.listdir(workspace / "model") if p.endswith(TEMP_SUFFIX)]


def test_a_signal_while_staging_raises_and_leaves_nothing(workspace):
    with StopSignals() as signals, pytest.raises(Interrupted):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)
    assert signals.exit_status == 130


def test_the_dumps_are_spooled_not_kept_in_memory(capfdbinary):
    output = cli.GuestOutput(dump_stdout=True, dump_stderr=False, status=None)
    chunk = b"x" * 65535 + b"\n"
    tracemalloc.start()
    for _ in range(400):  # 25 MiB of guest stdout
        output.stdout(chunk)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 4 << 20
    output.finish()
    out = capfdbinary.readouterr().out
    assert out.startswith(b"---- stdout dump ----\n") and out.endswith(b"---- stdout dump end ----\n")
    assert len(out) == 400 * len(chunk) + len(b"---- stdout dump ----\n---- stdout dump end ----\n")


def test_a_full_temporary_directory_is_one_error(workspace, tiny_tmpfs, monkeypatch, capfd):
    monkeypatch.setattr("tempfile.tempdir", str(tiny_tmpfs))
    (workspace / "big.bin").write_bytes(os.urandom(2 << 20))
    assert host("-i", "big.bin") == 1
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "cannot stage the sources" in err and "No space left on device" in err
    assert os.listdir(tiny_tmpfs) == []


def test_a_full_output_disk_writes_nothing_back(workspace, tiny_tmpfs):
    """The output source on a file system with room for the first file only."""
    (tiny_tmpfs / "filler").write_bytes(bytes(900 << 10))
    (tiny_tmpfs / "model").mkdir()
    with _changed_files_in(tiny_tmpfs) as staged, pytest.raises(sources.SourceError, match="No space left"):
        staged.write_back()
    assert os.listdir(tiny_tmpfs / "model") == []


def _changed_files_in(root: Path) -> sources.StagedSources:
    staged = sources.stage_sources([], ["model"], root)
    private = next(m.host_dir for m in staged.mounts if m.writable)
    (private / "one.weights").write_bytes(b"1" * (60 << 10))
    (private / "two.weights").write_bytes(b"2" * (200 << 10))
    return staged


# ------------------------------------------------------------------ signals, through the component


def _training_workspace(ws: Path) -> None:
    (ws / "cfg/train.dataset").write_text(
        "classes=10\ntrain=data/train.list\nlabels=data/labels.list\nbackup=model\n"
    )
    (ws / "data/train.list").write_text("data/t_00000_c5.png\n")
    (ws / "args.cfg").write_text("classifier\ntrain\ncfg/train.dataset\ncfg/mnist_lenet.cfg\n")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("mark", NEEDS_HOST_WASM)
def test_a_signal_stops_the_guest_within_a_second(workspace, program, signum, mark):
    _training_workspace(workspace)
    before = sorted(os.listdir(workspace / "model"))
    dl_server = Path(sys.executable).parent / "dl-server"
    proc = subprocess.Popen(
        [str(dl_server), "--program", program, "-i", "args.cfg", "cfg", "data", "-o", "model"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "TMPDIR": str(workspace.parent / "tmp")},
        # SIGINT ignored, as a shell without job control starts background commands: the host
        # handles it all the same
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if b"images" in line:  # a training line: the guest runs
            break
    start = time.monotonic()
    proc.send_signal(signum)
    try:
        status = proc.wait(timeout=10)
    finally:
        proc.kill()
    assert time.monotonic() - start < 1.0
    assert status == 128 + signum
    assert proc.stderr is not None and proc.stderr.read().endswith(b"dl-server: error: interrupted\n")
    assert sorted(os.listdir(workspace / "model")) == before
    assert list((workspace.parent / "tmp").iterdir()) == []


@pytest.mark.parametrize("mark", NEEDS_HOST_WASM)
def test_guest_output_to_a_full_temporary_directory_is_named(
    workspace, tiny_tmpfs, program, monkeypatch, capfd, mark
):
    """600 KB of args echoed to stdout, whose file in $TMPDIR (1 MiB) cannot hold them."""
    (workspace / "args.cfg").write_text(("x" * 1000 + "\n") * 600)
    monkeypatch.setattr("tempfile.tempdir", str(tiny_tmpfs))
    status = cli.main(["--program", program, "-i", "args.cfg", "-d"])
    err = capfd.readouterr().err
    assert status == 1
    assert err.endswith(
        f"dl-server: error: no space left in {tiny_tmpfs} for the guest's stdout and stderr"
        " (free some, or set TMPDIR to another directory)\n"
    )
    assert "Traceback" not in err
    assert os.listdir(tiny_tmpfs) == []


def test_without_timeout_a_run_is_abandoned_after_the_default_bound(workspace, monkeypatch, capfd):
    """No epoch checks (no speed cost), a timer of DEFAULT_TIMEOUT, and its own message."""
    from dlserver_host import runtime

    seen: dict = {}

    class TimedOut:
        def wait(self, poll=None):
            return runtime.RunResult(runtime.Outcome.TIMED_OUT)

        def stop(self, reason):
            pass

    class Program:
        def start(self, **settings):
            seen.update(settings)
            return TimedOut()

    def load_program(path, **kwargs):
        seen.update(kwargs)
        return Program()

    monkeypatch.setattr(runtime, "load_program", load_program)
    assert host("-i", "cfg") == 1
    assert seen["interruptible"] is False and seen["timeout"] == cli.DEFAULT_TIMEOUT
    limit = f"{cli.DEFAULT_TIMEOUT:g}s"
    assert capfd.readouterr().err.endswith(f"default time limit of {limit} (--timeout raises it)\n")
