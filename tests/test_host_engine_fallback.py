"""--engine auto where the CLI engine's sandbox is not allowed (docs/host-io.md, "The CLI engine").

The launcher (landlock_exec.py) exits with UNAVAILABLE_STATUS when the system refuses a step of
the sandbox before its exec; under ``auto`` the host then runs the guest in-process, and the
manifest's host.engine says so; under ``--engine cli`` the run is the one error line it was.
The refusals are real: the launcher, or the whole host, runs under a seccomp filter installed
first (FORBID, as a container's profile would be) that fails the calls a step needs:
seccomp(2) and prctl(PR_SET_SECCOMP) with EPERM, or Landlock's calls with ENOSYS (an old kernel).
"""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dlserver_host import cli_engine, landlock_exec, runtime
from dlserver_host.landlock_exec import MIN_ABI
from dlserver_host.runtime import HostError, InProcessLoader
from dlserver_host.sources import Mount
from test_host_engine import launch, needs_cli, needs_host_wasm
from test_host_sandbox import IMAGE, PREDICT, snapshot, workspace  # noqa: F401 (a fixture)

# Run ARGV with some system calls failing: a seccomp filter installed (after no-new-privs, as an
# unprivileged process must) before the exec, inherited by everything ARGV starts.
FORBID = r"""
import ctypes, os, struct, sys
separator = sys.argv.index("--")
error, rules, argv = int(sys.argv[1]), sys.argv[2:separator], sys.argv[separator + 1 :]
arch = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}[os.uname().machine]
LD, JEQ, RET = 0x20, 0x15, 0x06  # BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, BPF_RET|BPF_K
program = [(LD, 0, 0, 4), (JEQ, 1, 0, arch), (RET, 0, 0, 0x7FFF0000), (LD, 0, 0, 0)]
hits = []  # the jumps to the ERRNO return
for rule in rules:  # NR, or NR,ARG0: that call with that first argument
    number, _, first = rule.partition(",")
    if first:
        program += [(JEQ, 0, 3, int(number)), (LD, 0, 0, 16)]  # args[0] (its low half)
        hits.append(len(program))
        program += [(JEQ, 0, 0, int(first)), (LD, 0, 0, 0)]
    else:
        hits.append(len(program))
        program.append((JEQ, 0, 0, int(number)))
program.append((RET, 0, 0, 0x7FFF0000))  # SECCOMP_RET_ALLOW
for i in hits:
    code, _, jf, k = program[i]
    program[i] = (code, len(program) - i - 1, jf, k)
program.append((RET, 0, 0, 0x00050000 | error))  # SECCOMP_RET_ERRNO
filters = b"".join(struct.pack("=HBBI", *op) for op in program)
buffer = ctypes.create_string_buffer(filters, len(filters))
fprog = ctypes.create_string_buffer(struct.pack("=HxxxxxxQ", len(program), ctypes.addressof(buffer)), 16)
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(38, 1, 0, 0, 0) or libc.prctl(22, 2, fprog, 0, 0):  # NO_NEW_PRIVS, SET_SECCOMP
    sys.exit("cannot install the filter: " + os.strerror(ctypes.get_errno()))
os.execv(argv[0], argv)
"""
SECCOMP, PRCTL = {"x86_64": (317, 157), "aarch64": (277, 167)}.get(os.uname().machine, (0, 0))
PR_SET_SECCOMP = 22
LANDLOCK_CALLS = (444, 445, 446)  # create_ruleset, add_rule, restrict_self: the same on both
NO_SECCOMP_FILTERS = (str(errno.EPERM), str(SECCOMP), f"{PRCTL},{PR_SET_SECCOMP}")
NO_LANDLOCK = (str(errno.ENOSYS), *map(str, LANDLOCK_CALLS))
DL_SERVER = Path(sys.executable).parent / "dl-server"

pytestmark = [
    needs_cli,
    pytest.mark.skipif(not SECCOMP, reason="FORBID knows the calls of x86_64 and aarch64 only"),
]


def forbidding(rules: tuple[str, ...]) -> tuple[str, ...]:
    """The command that runs what follows it under FORBID with ``rules`` (errno, then the calls)."""
    return (sys.executable, "-S", "-I", "-c", FORBID, *rules, "--")


# ------------------------------------------------------------------ the launcher's exit status


@pytest.mark.parametrize(
    "rules, error",
    [
        (NO_SECCOMP_FILTERS, "seccomp: Operation not permitted"),
        (NO_LANDLOCK, f"Landlock ABI 0 (at least {MIN_ABI} needed)"),
    ],
    ids=["seccomp-refused", "no-landlock"],
)
def test_a_sandbox_step_the_system_refuses_is_unavailable(tmp_path, rules, error):
    no_calls = forbidding(rules[:1])  # FORBID itself, failing nothing: the launcher runs
    assert launch(tmp_path, [tmp_path], ["/bin/true"], under=no_calls)[:2] == (0, "")
    status, reported, _ = launch(tmp_path, [tmp_path], ["/bin/true"], under=forbidding(rules))
    assert (status, reported) == (landlock_exec.UNAVAILABLE_STATUS, error)
    assert status != landlock_exec.FAILED_STATUS


def test_other_launcher_failures_are_not_unavailable(tmp_path):
    """A directory that cannot be opened (met before the seccomp step) fails the run, as before."""
    missing = tmp_path / "missing"
    status, reported, _ = launch(tmp_path, [missing], ["/bin/true"], under=forbidding(NO_SECCOMP_FILTERS))
    assert status == landlock_exec.FAILED_STATUS and reported.startswith(f"cannot open {missing}")


def test_auto_falls_back_only_when_the_sandbox_is_unavailable(tmp_path):
    """The launcher failing otherwise (here its exec: no such program) is the run's error under
    auto too: the in-process fallback is not loaded (loading it would fail: no such file)."""
    missing = tmp_path / "no-wasmtime"
    fallback = InProcessLoader(tmp_path / "no-such.wasm", False, None)
    program = cli_engine.CliProgram(missing, tmp_path / "guest.wasm", False, "test", fallback)
    run = program.start(
        argv=["guest"], env=[], mounts=[Mount("/out", tmp_path, True)], stdout=print, stderr=print
    )
    with pytest.raises(
        HostError, match=f"^cannot start the guest in its sandbox: cannot run {missing}: No such"
    ):
        run.wait()
    with pytest.raises(HostError, match="^cannot read program .*no-such.wasm"):
        fallback.load()  # what a fallback would have met


# ------------------------------------------------------------------ through the host


def run_host(rules: tuple[str, ...], engine: str, program: str, manifest: Path):
    """`dl-server --engine ENGINE` with args.cfg under FORBID with ``rules`` (none: no FORBID);
    (exit status, stdout, stderr, the manifest)."""
    host = [str(DL_SERVER), "--program", program, "-i", "args.cfg", "cfg", "data", "model"]
    host += ["--engine", engine, "--manifest", str(manifest)]
    under = forbidding(rules) if rules else ()
    done = subprocess.run([*under, *host], capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout, done.stderr, json.loads(manifest.read_text())


@needs_host_wasm
@pytest.mark.parametrize(
    "rules, cli_error",
    [
        (NO_SECCOMP_FILTERS, "cannot start the guest in its sandbox: seccomp: Operation not permitted"),
        (
            NO_LANDLOCK,
            f"--engine cli: Landlock is not available (ABI 0, at least {MIN_ABI} needed)",
        ),
    ],
    ids=["seccomp-refused", "no-landlock"],
)
def test_auto_runs_the_guest_in_process_where_the_sandbox_is_refused(
    program,
    workspace,  # noqa: F811 (a fixture of test_host_sandbox)
    tmp_path,
    rules,
    cli_error,
):
    (workspace / "args.cfg").write_text("".join(a + "\n" for a in [*PREDICT, "model/zero.weights", IMAGE]))
    status, expected, expected_err, manifest = run_host((), "auto", program, tmp_path / "control.json")
    assert status == 0 and "%: " in expected, expected_err
    cli = f"wasmtime CLI {cli_engine.cli_version(cli_engine.cli_binary(), None)}"
    assert manifest["host"]["engine"] == cli  # control: the CLI engine, unconfined by FORBID
    before = snapshot(workspace)

    status, out, err, manifest = run_host(rules, "auto", program, tmp_path / "auto.json")
    assert (status, out, err) == (0, expected, expected_err)
    assert manifest["host"]["engine"] == f"wasmtime-py {runtime.wasmtime_version()}"
    assert manifest["outcome"] == "succeeded"

    status, out, err, manifest = run_host(rules, "cli", program, tmp_path / "cli.json")
    assert (status, out, err) == (1, "", f"dl-server: error: {cli_error}\n")
    assert (manifest["outcome"], manifest["error"]) == ("host error", cli_error)
    assert snapshot(workspace) == before
