"""``dl-server``: run dl-server.wasm the way Veracruz's freestanding execution engine does.

Module-level imports are kept to the standard library's light corner so that
``--help`` and argument errors are instant; wasmtime is imported by runtime.py
only when a run starts.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

PROG = "dl-server"
EXIT_OK, EXIT_FAILURE, EXIT_INTERRUPTED = 0, 1, 130
STATUS_REFRESH_SECONDS = 0.25
DEFAULT_MAX_MEMORY = "3G"  # of wasm32's 4 GiB; the guest's own buffer limits stay below it
# Without --timeout a run is abandoned after this (its engine has no epoch checks, which cost
# speed; the host exits, which ends the guest); --timeout stops it through epochs instead.
DEFAULT_TIMEOUT = 3600.0

DESCRIPTION = """\
Run a WASI command component (dl-server.wasm) in a sandbox that sees only the
given sources, as Veracruz's freestanding execution engine (FEE) does. The guest
gets no arguments besides its name, so dl-server.wasm reads args.cfg, unless
arguments follow '--' (then each concurrent run needs no args.cfg of its own)."""

EPILOG = """\
sources:
  Source paths are relative to the current directory (an absolute path must lie
  inside it; '..' is refused, and so is a symlink leading out of it). The guest
  sees each source at the same relative path, with its working directory at '/',
  and nothing else of the host: no other files, no network.
  - Input sources are read-only. A directory is mounted where it lies (not
    copied; symlinks in it that lead out of it are refused); a file is copied
    into a private directory (its siblings stay hidden).
  - Output sources are directories ('./' = the whole tree). The guest writes
    into a private copy, which starts with the host's contents when the path is
    also an input or lies in an input directory (e.g. -i model -o model). Input
    directories inside an output stay read-only; input files inside it are
    copied in and count as output if the guest changes them (as in the FEE).
  - Only if the guest succeeds are the files it created or changed copied back,
    each atomically (temporary name, then rename), never through a symlink.
    Deleted files are not deleted on the host. On failure, timeout or memory
    exhaustion nothing is written back.

output:
  Without -d/-e the guest's stdout/stderr are passed through live. With -d (-e)
  its stdout (stderr) is printed at the end between '---- stdout dump ----' and
  '---- stdout dump end ----' lines, as the FEE does. When stderr is a terminal, a
  status line (elapsed time, last stdout line) is shown during the run.

provenance (--manifest FILE):
  A JSON record of the run: sha256 of the program, of every file of the input
  sources (hashed while the guest runs) and of every file written back; the
  command line, the guest's argv (after '--', else from args.cfg), outcome, exit status, start
  time (UTC) and duration, wasmtime version. Written atomically, also when the
  guest or the host fails; on the host, never through the sandbox. FILE is
  written exactly where given (inside an output source only if you name such a
  path; it is then not among the outputs).

policy and signature (--policy POLICY, --sign-key KEY):
  Run only the program a Veracruz policy pins by hash, on the sources it grants
  (its read/write rights are the sources when no -i/-o is given), with its clock
  and memory cap; the manifest records the policy's sha256 and is signed (Ed25519).
  See `dl-server keygen`, `dl-server policy init`, `dl-server verify MANIFEST`.

exit status:
  0 if the guest succeeded, 1 if it failed (a component can only report
  success or failure) or on a host error, 2 on a usage error, 130 (Ctrl-C) or
  143 (SIGTERM) when stopped by a signal (nothing is written back).

examples:
  dl-server --program dl-server.wasm --input-source args.cfg cfg data model -d -e
  dl-server -r dl-server.wasm -i args.cfg cfg model -o model --max-memory 1G
  dl-server -r dl-server.wasm -i cfg model -- aggregation darknet cfg/x.cfg out.weights a b"""

SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text: str) -> int:
    """'512M' -> bytes.  Units K, M, G are powers of 1024 (optional 'B'/'iB')."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?)(?:I?B)?\s*", text.upper())
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 65536, 64K, 512M, 2G)")
    size = int(float(match.group(1)) * SIZE_UNITS[match.group(2)])
    if size <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return size


def parse_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"timeout must be positive: {text!r}")
    if seconds > threading.TIMEOUT_MAX:  # also inf: a timer cannot wait that long
        raise argparse.ArgumentTypeError(f"timeout too large: {text!r} (at most {threading.TIMEOUT_MAX:g})")
    return seconds


def parse_env(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected VAR=VAL, got {text!r}")
    return name, value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-r",
        "--program",
        "--pipeline",
        "-p",
        dest="program",
        required=True,
        metavar="WASM",
        help="the component to run (a path to the .wasm)",
    )
    for short, long, dest, text in (
        ("-i", "--input-source", "inputs", "files or directories the guest may read"),
        ("-o", "--output-source", "outputs", "directories the guest may write"),
    ):  # the FEE's two lists of sources, each repeatable
        parser.add_argument(
            short, long, dest=dest, nargs="*", action="extend", default=[], metavar="PATH", help=text
        )
    parser.add_argument(
        "-d",
        "--dump-stdout",
        action="store_true",
        help="print the guest's stdout at the end, between dump markers",
    )
    parser.add_argument(
        "-e",
        "--dump-stderr",
        action="store_true",
        help="print the guest's stderr at the end, between dump markers",
    )
    parser.add_argument(
        "-c",
        "--enable-clock",
        action="store_true",
        help="let the guest report real times (else it prints 0.000000 seconds, "
        "as under the FEE): sets DL_SERVER_CLOCK=1 instead of 0",
    )
    parser.add_argument(
        "--fast",
        action="store_true",
        help="the guest's fast mode (sets DL_SERVER_FAST=1, as -fast among its arguments): "
        "Winograd convolutions, not bit-identical to Darknet",
    )
    parser.add_argument(
        "--env",
        dest="env",
        action="append",
        type=parse_env,
        default=[],
        metavar="VAR=VAL",
        help="environment variable for the guest (repeatable)",
    )
    parser.add_argument(
        "--max-memory",
        type=parse_size,
        default=DEFAULT_MAX_MEMORY,
        metavar="SIZE",
        help=f"limit of the guest's linear memory, e.g. 512M (units K, M, G; default {DEFAULT_MAX_MEMORY})",
    )
    parser.add_argument(
        "--timeout",
        type=parse_seconds,
        metavar="SECONDS",
        help="stop the guest after this many seconds (counts as a failure; without it, "
        f"a run is abandoned after {DEFAULT_TIMEOUT:g} s)",
    )
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help="compile the program afresh; do not read or write the compile cache "
        "($XDG_CACHE_HOME/dl-server, default ~/.cache/dl-server)",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="no live status line, even when stderr is a terminal"
    )
    parser.add_argument(
        "--manifest", metavar="FILE", help="write a JSON provenance record of the run to FILE (see below)"
    )
    parser.add_argument(
        "--engine",
        choices=("auto", "cli", "inprocess"),
        default=os.environ.get("DL_SERVER_HOST_ENGINE", "auto"),
        help="what runs the guest: the wasmtime CLI in a child process confined by Landlock "
        "(cli: fast file access), wasmtime-py in this process (inprocess), or the CLI where its sandbox "
        "can be set up, else in-process (auto, the default; $DL_SERVER_HOST_ENGINE sets another)",
    )
    from .provenance import add_options

    add_options(parser)  # --policy, --sign-key
    parser.add_argument(
        "guest_args",
        nargs="*",
        metavar="-- ARG",
        help="the guest's arguments after '--' (then it does not read args.cfg), e.g. "
        "-- classifier train data/mnist.dataset cfg/mnist_lenet.cfg",
    )
    return parser


class LiveStatus:
    """A one-line status on a terminal: elapsed time and the guest's last stdout line.

    The caller holds GuestOutput's lock around every method.  The line is erased
    before anything else is written to the terminal and drawn again only when
    the cursor is at the start of a line.
    """

    def __init__(self, terminal, started: float, width: int):
        self._terminal = terminal
        self._started = started
        self._width = max(width - 1, 20)
        self._shown = ""
        self.at_line_start = True
        self.message = "starting"

    def erase(self) -> None:
        if self._shown:
            self._terminal.write("\r\x1b[K")
            self._terminal.flush()
            self._shown = ""

    def draw(self) -> None:
        """Show the line (again) if the cursor is at a line start and the text changed."""
        if not self.at_line_start:
            return
        elapsed = int(time.monotonic() - self._started)
        text = f"[{PROG} {elapsed // 60}:{elapsed % 60:02d}] {self.message}"[: self._width]
        if text != self._shown:
            self._terminal.write("\r\x1b[K" + text)
            self._terminal.flush()
            self._shown = text


class GuestOutput:
    """Where the guest's stdout and stderr go: passed through live, or kept for the dumps.

    The write methods are called from the guest's thread (wasmtime callbacks);
    ``tick`` from the main thread to refresh the status line.
    """

    def __init__(self, dump_stdout: bool, dump_stderr: bool, status: LiveStatus | None):
        self._dump_stdout = dump_stdout
        self._dump_stderr = dump_stderr
        self._status = status
        # the dumps are spooled (to a temporary file past 1 MiB): the host's memory stays bounded
        self._stdout_kept = tempfile.SpooledTemporaryFile(max_size=1 << 20)  # noqa: SIM115 (finish closes it)
        self._stderr_kept = tempfile.SpooledTemporaryFile(max_size=1 << 20)  # noqa: SIM115 (finish closes it)
        self._partial_line = b""
        self._lock = threading.Lock()
        self._stdout_on_terminal = status is not None and _isatty(sys.stdout)
        self._broken: set[str] = set()  # names of host streams that failed (closed pipe)

    def stdout(self, data: bytes) -> None:
        with self._lock:
            if self._dump_stdout:
                self._stdout_kept.write(data)
            else:
                self._pass_through(sys.stdout, data, self._stdout_on_terminal)
            if self._status is not None:
                self._note_stdout_line(data)
                self._status.draw()

    def stderr(self, data: bytes) -> None:
        with self._lock:
            if self._dump_stderr:
                self._stderr_kept.write(data)
            else:
                self._pass_through(sys.stderr, data, self._status is not None)
                if self._status is not None:
                    self._status.draw()

    @property
    def has_status(self) -> bool:
        return self._status is not None

    def tick(self) -> None:
        assert self._status is not None  # called only when has_status
        with self._lock:
            self._status.draw()

    def set_status(self, message: str) -> None:
        if self._status is not None:
            with self._lock:
                self._status.message = message
                self._status.draw()

    def finish(self) -> None:
        """Erase the status line and print the dumps (stdout, then stderr)."""
        with self._lock:
            if self._status is not None:
                self._status.erase()
            if self._dump_stdout:
                _write_dump(sys.stdout, "stdout", self._stdout_kept)
            if self._dump_stderr:
                _write_dump(sys.stderr, "stderr", self._stderr_kept)

    def _pass_through(self, stream, data: bytes, on_terminal: bool) -> None:
        name = "stdout" if stream is sys.stdout else "stderr"
        if name in self._broken:
            return
        if on_terminal:
            assert self._status is not None  # on a terminal only with a status line
            self._status.erase()
            if data:
                self._status.at_line_start = data.endswith(b"\n")
        try:
            stream.flush()
            stream.buffer.write(data)
            stream.buffer.flush()
        except OSError:  # e.g. a closed pipe: keep the guest running, drop its output
            self._broken.add(name)

    def _note_stdout_line(self, data: bytes) -> None:
        assert self._status is not None  # called only with a status line
        lines = (self._partial_line + data).split(b"\n")
        self._partial_line = lines.pop()[-1000:]
        complete = [line for line in lines if line.strip()]
        if complete:
            text = complete[-1].decode("utf-8", "replace")
            self._status.message = "".join(c if c.isprintable() else " " for c in text).strip()


def _write_dump(stream, name: str, kept) -> None:
    stream.flush()
    stream.buffer.write(f"---- {name} dump ----\n".encode())
    kept.seek(0)
    shutil.copyfileobj(kept, stream.buffer, 1 << 20)
    kept.close()
    stream.buffer.write(f"---- {name} dump end ----\n".encode())
    stream.buffer.flush()


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def error(message: str) -> None:
    """Print one ``dl-server: error: ...`` line on stderr."""
    sys.stderr.flush()
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dl-server`` console script; returns the exit status.

    Called without ``argv`` (as the console script), it ends the process itself
    once everything is flushed and cleaned up, skipping the interpreter's
    teardown of wasmtime (about 40 ms, a third of a short run's start-up cost).
    """
    status = _main(argv)
    if argv is None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except OSError:  # e.g. stdout piped into `head`
                pass
        os._exit(status)
    return status


def _main(argv: list[str] | None) -> int:
    from .commands import is_subcommand

    if is_subcommand(sys.argv[1:] if argv is None else argv):  # keygen, policy init, verify
        from .commands import run

        return run(sys.argv[1:] if argv is None else argv, PROG, error)
    args = build_parser().parse_args(argv)
    from .policy import PolicyError
    from .provenance import prepare
    from .runtime import HostError, Interrupted, StopSignals
    from .sources import SourceError

    try:
        args.guard = guard = prepare(args)  # --policy, --sign-key (provenance.py)
    except PolicyError as e:
        error(str(e))
        return EXIT_FAILURE

    recorder = None
    if args.manifest is not None:
        from .manifest import ManifestError, Recorder, check_destination, command_line

        recorder = Recorder(args.manifest, command_line(argv, PROG), Path.cwd())
        try:
            check_destination(recorder.path)
        except ManifestError as e:
            error(str(e))
            return EXIT_FAILURE
        if guard is not None:
            guard.attach(recorder)
    message = None
    signals = StopSignals()
    try:
        with signals:
            status, outcome, message = _run(args, recorder, signals)
    except (SourceError, HostError) as e:
        error(str(e))
        status, outcome, message = EXIT_FAILURE, "host error", str(e)
    except OSError as e:  # e.g. a full disk under the host's own files
        message = f"{e.filename}: {e.strerror or e}" if e.filename else str(e.strerror or e)
        error(message)
        status, outcome = EXIT_FAILURE, "host error"
    except (KeyboardInterrupt, Interrupted):
        error("interrupted")
        status, outcome, message = signals.exit_status, "interrupted", "interrupted"
    if recorder is not None:
        status = _write_manifest(recorder, status, outcome, message, guard)
    return status


def _write_manifest(recorder, status: int, outcome: str, message: str | None, guard=None) -> int:
    """Finish and write the record; a manifest that cannot be written fails the run."""
    from .manifest import ManifestError

    try:
        recorder.finish(outcome, status, message)
        if recorder.relative(recorder.path) in recorder.record["outputs"]["files"]:
            raise ManifestError(
                f"--manifest {recorder.path}: the guest wrote that file too "
                "(written back); the manifest is not written over it"
            )
        if guard is not None:
            guard.seal(recorder.record)
        recorder.write()
    except ManifestError as e:
        error(str(e))
        return status or EXIT_FAILURE
    except KeyboardInterrupt:
        error("interrupted: manifest not written")
        return EXIT_INTERRUPTED
    return status


def _run(args: argparse.Namespace, recorder, signals) -> tuple[int, str, str | None]:
    """Run the guest; return (exit status, outcome for the manifest, error message or None)."""
    from .compile_cache import default_cache_dir, wasm_digest
    from .runtime import HostError, Outcome, load_program
    from .sources import source_relpath, stage_sources

    if not os.path.isfile(args.program):
        raise HostError(f"program not found: {args.program}")
    started = time.monotonic()
    status = None
    if not args.no_progress and _isatty(sys.stderr):
        status = LiveStatus(sys.stderr, started, _terminal_width())
    output = GuestOutput(args.dump_stdout, args.dump_stderr, status)
    if getattr(args, "guard", None) is not None:
        output = args.guard.output(output)  # drops the streams a --policy does not grant
    env = dict([("DL_SERVER_CLOCK", "1" if args.enable_clock else "0"), *args.env])
    if args.fast:
        env["DL_SERVER_FAST"] = "1"

    with stage_sources(args.inputs, args.outputs) as staged:
        if recorder is not None:
            cwd = Path.cwd()
            recorder.sources(
                args.program,
                [source_relpath(p, cwd) for p in args.inputs],
                [source_relpath(p, cwd) for p in args.outputs],
                args.guest_args or None,
            )
            try:
                digest = wasm_digest(Path(args.program), None if args.no_cache else default_cache_dir())
            except OSError as e:
                raise HostError(f"cannot read program {args.program}: {e.strerror}") from None
            recorder.program(args.program, digest)
        output.set_status(f"loading {os.path.basename(args.program)} (compiled once, then cached)")
        program = load_program(
            args.program,
            interruptible=args.timeout is not None,
            cache_dir=None if args.no_cache else default_cache_dir(),
            engine=args.engine,
        )
        if recorder is not None and hasattr(program, "engine_description"):
            recorder.engine(program.engine_description)
        output.set_status("running")
        run = program.start(
            argv=[os.path.basename(args.program), *args.guest_args],
            env=env.items(),
            mounts=staged.mounts,
            stdout=output.stdout,
            stderr=output.stderr,
            max_memory=args.max_memory,
            timeout=args.timeout if args.timeout is not None else DEFAULT_TIMEOUT,
        )
        if recorder is not None and hasattr(run, "engine_description"):
            recorder.engine(run.engine_description)  # auto may have fallen back in-process at start
        try:
            with signals.guest(run):
                result = _wait(run, output)
        finally:
            output.finish()
        if result.outcome is Outcome.SUCCEEDED:
            if recorder is not None:
                recorder.inputs_hashed()  # before write-back: an output may land in an input dir
            written = staged.write_back(signals.deferred)
            if recorder is not None:
                recorder.outputs(written)
            return EXIT_OK, result.outcome.value, None
    message = _report_failure(result, args)
    exit_status = signals.exit_status if result.outcome is Outcome.INTERRUPTED else EXIT_FAILURE
    return exit_status, result.outcome.value, message


def _wait(run, output: GuestOutput):
    """Wait for the guest, refreshing the status line (StopSignals stops it on Ctrl-C or SIGTERM)."""
    while True:
        result = run.wait(STATUS_REFRESH_SECONDS if output.has_status else 0.5)
        if result is not None:
            return result
        if output.has_status:
            output.tick()


def _report_failure(result, args: argparse.Namespace) -> str | None:
    """Print why the run failed (when the guest has not said it); return that message."""
    from .runtime import Outcome

    message = None
    if result.outcome is Outcome.TIMED_OUT:
        if args.timeout is None:
            message = f"guest ran past the default time limit of {DEFAULT_TIMEOUT:g}s (--timeout raises it)"
        else:
            message = f"guest exceeded --timeout {args.timeout:g}s"
    elif result.outcome is Outcome.OUT_OF_MEMORY:
        message = f"guest ran out of memory (--max-memory {_format_size(args.max_memory)})"
    elif result.outcome is Outcome.INTERRUPTED:
        message = "interrupted"
    elif result.outcome is Outcome.TRAPPED:
        message = f"guest crashed: {result.detail}"
    elif result.outcome is Outcome.NO_SPACE:
        message = (
            f"no space left in {result.detail} for the guest's stdout and stderr"
            " (free some, or set TMPDIR to another directory)"
        )
    # Outcome.FAILED: the guest has said why on its stderr, as under the FEE.
    if message is not None:
        error(message)
    return message


def _format_size(size: int) -> str:
    for unit in ("G", "M", "K"):
        if size % SIZE_UNITS[unit] == 0:
            return f"{size // SIZE_UNITS[unit]}{unit}"
    return str(size)


def _terminal_width() -> int:
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns or 80
    except (OSError, ValueError):
        return 80


if __name__ == "__main__":
    sys.exit(main())
