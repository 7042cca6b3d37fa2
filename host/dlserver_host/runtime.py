"""Run a WASI command component (``wasi:cli/run``) under wasmtime-py.

With ``--timeout`` the engine has epoch interruption on and a run is stopped by
bumping the epoch. Without it the epoch checks are left out of the generated code
(they cost ~40% in the guest's kernel loops); Ctrl-C or SIGTERM then abandon the
run: the host cleans up and its process exits, which ends the guest thread.
Compiled components are cached on disk (compile_cache.py), keyed by the wasm bytes,
the wasmtime version and the engine settings.
``wasmtime`` is imported only when first needed, so ``--help`` stays instant.
"""

from __future__ import annotations

import enum
import os
import signal
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from . import compile_cache
from .guest_stdio import FileTail, OutputCallback, last_line, nearly_full
from .sources import Mount
from .tempdirs import OwnedDir

RUN_INTERFACE = "wasi:cli/run@0.2.0"
# Part of the cache key: anything here that changes generated code must change the key.
ENGINE_SETTINGS = {True: "epoch-interruption-rsd", False: "plain-rsd"}  # rsd: relaxed SIMD deterministic


class HostError(Exception):
    """A problem on the host side (unreadable program, bad component); message is user-facing."""


class Outcome(enum.Enum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # the guest returned an error or exited non-zero
    TRAPPED = "trapped"  # the guest crashed (wasm trap)
    TIMED_OUT = "timed out"
    INTERRUPTED = "interrupted"  # Ctrl-C or SIGTERM on the host
    OUT_OF_MEMORY = "out of memory"
    NO_SPACE = "no space"  # the guest's stdout/stderr files could not grow (detail: where)


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived while the host was not waiting for the guest."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum


class StopSignals:
    """SIGINT and SIGTERM for the length of a run: exit status 128 + the signal's number.

    While sources are staged or the program loads, a signal raises Interrupted (the
    staging is removed on the way out); while the guest runs, it stops the guest
    (``GuestRun.stop``: at once, the guest is abandoned when its engine has no epoch
    checks); while outputs are renamed into place (``deferred``) it waits until the
    last rename is done, so a write-back is never left half done. Installed only in
    the main thread (elsewhere Python cannot handle signals).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self._run: GuestRun | None = None
        self._deferring = False
        self._previous: dict[int, Any] = {}

    @property
    def exit_status(self) -> int:
        return 128 + (self.signum or signal.SIGINT)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is None:
            self.signum = signum
        if self._run is not None:
            self._run.stop(Outcome.INTERRUPTED)
        elif not self._deferring:
            raise Interrupted(signum)

    @contextmanager
    def guest(self, run: GuestRun) -> Iterator[None]:
        """While the guest runs: a signal stops it."""
        self._run = run
        if self.signum is not None:
            run.stop(Outcome.INTERRUPTED)
        try:
            yield
        finally:
            self._run = None

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """A step a signal must not cut in two; Interrupted after it if one came."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
        if self.signum is not None:
            raise Interrupted(self.signum)


class RunResult(NamedTuple):
    outcome: Outcome
    detail: str = ""  # e.g. the trap message's last line


def wasmtime_version() -> str:
    """Version of the installed wasmtime-py (from its dist-info; importlib.metadata is slow)."""
    import wasmtime

    site = Path(wasmtime.__file__).resolve().parent.parent
    for entry in os.listdir(site):
        if entry.startswith("wasmtime-") and entry.endswith(".dist-info"):
            return entry[len("wasmtime-") : -len(".dist-info")]
    from importlib.metadata import version

    return version("wasmtime")


def make_engine(interruptible: bool = True):
    """A wasmtime Engine, with epoch interruption when it must be stoppable (ENGINE_SETTINGS)."""
    from wasmtime import Config, Engine

    config = Config()
    config.epoch_interruption = interruptible
    # relaxed SIMD (the fast units may use relaxed_madd, docs/darknet-contract.md §10.5), and its
    # deterministic semantics: a relaxed_madd is fused on every machine, results do not depend on it
    config.wasm_relaxed_simd = True
    config.wasm_relaxed_simd_deterministic = True
    engine = Engine(config)
    engine.dl_server_interruptible = interruptible  # type: ignore[attr-defined]  # our mark on wasmtime's Engine
    return engine


def is_interruptible(engine) -> bool:
    """Whether the engine's code checks epochs (engines made elsewhere are assumed to)."""
    return getattr(engine, "dl_server_interruptible", True)


def require_wasm_file(wasm_path: str | os.PathLike) -> None:
    """HostError unless ``wasm_path`` can be read and begins with WebAssembly's magic bytes."""
    try:
        with open(wasm_path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise HostError(f"cannot read program {wasm_path}: {e.strerror}") from None
    if magic != b"\0asm":
        raise HostError(f"not a WebAssembly file: {wasm_path}")


def load_component(engine, wasm_path: str | os.PathLike, cache_dir: Path | None):
    """Compile ``wasm_path``, or load it from the compile cache (``cache_dir=None``: no cache).

    A cache file is used only if it is owned by us; a stale or broken one is
    replaced.  The cache is written atomically (temporary file, then rename).
    """
    from wasmtime import WasmtimeError
    from wasmtime.component import Component

    try:
        digest = compile_cache.wasm_digest(Path(wasm_path), cache_dir)
    except OSError as e:
        raise HostError(f"cannot read program {wasm_path}: {e.strerror}") from None
    cached = None
    if cache_dir is not None:
        settings = ENGINE_SETTINGS[is_interruptible(engine)]
        cached = cache_dir / f"{digest}-wasmtime{wasmtime_version()}-{settings}.cwasm"
        if compile_cache.is_own_file(cached):
            try:
                component = Component.deserialize_file(engine, str(cached))
            except WasmtimeError:
                pass  # incompatible or corrupt: compile again and overwrite
            else:
                compile_cache.mark_used(cached)
                return component
    require_wasm_file(wasm_path)
    try:
        component = Component.from_file(engine, wasm_path)
    except WasmtimeError as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else "unknown error"
        raise HostError(f"{wasm_path} is not a loadable component: {first_line}") from None
    if cached is not None:
        compile_cache.store(cached, component.serialize())
    return component


class LoadedProgram(NamedTuple):
    """A compiled component and the engine it runs on: what the CLI starts guests from."""

    engine: Any
    component: Any

    def start(self, **settings: Any) -> GuestRun:
        """A GuestRun of this program (settings: GuestRun's keyword arguments), started."""
        return GuestRun(self.engine, self.component, **settings).start()

    @property
    def engine_description(self) -> str:
        return inprocess_description()


def inprocess_description() -> str:
    """The in-process engine as the manifest's ``host.engine`` names it."""
    return f"wasmtime-py {wasmtime_version()}"


class InProcessLoader(NamedTuple):
    """What loads a program for the in-process engine: the component at ``path``, on an engine
    with epoch checks when it must be ``interruptible``, through the compile cache."""

    path: str | os.PathLike
    interruptible: bool
    cache_dir: Path | None

    def load(self) -> LoadedProgram:
        engine = make_engine(interruptible=self.interruptible)
        return LoadedProgram(engine, load_component(engine, self.path, self.cache_dir))


def load_program(
    path: str | os.PathLike, *, interruptible: bool, cache_dir: Path | None, engine: str = "inprocess"
):
    """The engine (epoch checks only when it must be stoppable) and the component at ``path``;
    ``engine`` 'cli' or 'auto' (where the CLI can run: the binary and Landlock are there): a
    cli_engine.CliProgram, which needs no epoch checks to be stopped. Under 'auto' it runs the
    guest in-process instead when the launcher finds that a step of its sandbox is not allowed."""
    from . import cli_engine

    loader = InProcessLoader(path, interruptible, cache_dir)
    if cli_engine.choose(engine) == "cli":
        return cli_engine.load_cli_program(path, cache_dir, fallback=loader if engine == "auto" else None)
    return loader.load()


def pin_thread_to_its_cpu() -> None:
    """Keep the calling thread, and the threads it starts, on the CPU it is running on.

    wasmtime-py's WASI runs every file operation (open-at, read, stat) on a thread of
    tokio's blocking pool and waits for it: two hand-offs between threads per operation.
    The wasmtime CLI avoids them (``allow_blocking_current_thread``, which the C API does
    not expose). Hand-offs between threads on one CPU cost a fraction of those between
    CPUs, and the guest is single-threaded, so its thread and the pool threads it starts
    (which inherit this affinity) share its CPU. Nothing is done where affinity is not
    available.
    """
    if not hasattr(os, "sched_setaffinity"):
        return
    try:
        with open("/proc/thread-self/stat", "rb") as f:
            after_name = f.read().rpartition(b")")[2].split()
        cpu = int(after_name[36])  # field 39, "processor": the CPU it last ran on
        os.sched_setaffinity(0, {cpu})
    except (OSError, ValueError, IndexError):
        pass


def schedule_as_batch() -> None:
    """Put the calling thread, and the threads it starts from now on, under SCHED_BATCH.

    Each WASI file operation is two hand-offs between the guest thread and a thread of
    tokio's blocking pool (pin_thread_to_its_cpu). Under the default policy the thread woken
    by a hand-off preempts the one that woke it before that one has gone back to waiting, and
    the two switch back and forth again. SCHED_BATCH is the normal policy (same share of the
    CPU, no privilege needed) without that wake-up preemption: each thread finishes its step
    first. A `classifier valid` of 10000 images: 35,000 involuntary context switches -> 125,
    CPU time -12% (docs/host-io.md). Nothing is done where the policy is not available.
    """
    if not hasattr(os, "sched_setscheduler") or not hasattr(os, "SCHED_BATCH"):
        return
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))  # 0: the calling thread
    except OSError:
        pass


class GuestRunBase:
    """What the runs of both engines share (GuestRun here, cli_engine.CliGuestRun): the settings,
    the directory of the guest's stdout/stderr files, the timeout's timer, the first reason to
    stop, the tail of stderr, and the result handed over by the thread that runs or waits."""

    def __init__(
        self,
        *,
        argv: list[str],
        env: Iterable[tuple[str, str]],
        mounts: Iterable[Mount],
        stdout: OutputCallback,
        stderr: OutputCallback,
        max_memory: int | None = None,
        timeout: float | None = None,
    ):
        self._argv = list(argv)
        self._env = list(env)
        self._mounts = list(mounts)
        self._stdout = stdout
        self._stderr = stderr
        self._stderr_tail = b""
        self._max_memory = max_memory
        self._timeout = timeout
        self._stop_reason: Outcome | None = None
        self._stream_owned = OwnedDir("dl-server-stdio-")
        self._stream_dir = str(self._stream_owned.path)
        self._lock = threading.Lock()
        self._result: RunResult | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run_in_thread, name="guest", daemon=True)
        self._timer: threading.Timer | None = None

    def _run_in_thread(self) -> None:
        raise NotImplementedError

    def stop(self, reason: Outcome) -> None:
        raise NotImplementedError

    def _start_timer(self) -> None:
        """Start the timeout's timer (it calls ``stop(TIMED_OUT)``), once."""
        if self._timeout is not None and self._timer is None:
            self._timer = threading.Timer(self._timeout, self.stop, args=(Outcome.TIMED_OUT,))
            self._timer.daemon = True
            self._timer.start()

    def _start_thread(self) -> None:
        """Start the timeout's timer (unless started) and the run's thread."""
        self._start_timer()
        self._thread.start()

    def _note_stop(self, reason: Outcome) -> None:
        """Record why the run is stopped; the first reason wins."""
        with self._lock:
            if self._stop_reason is None:
                self._stop_reason = reason

    def _finished(self) -> RunResult | None:
        """Once the thread has ended: the result, or the HostError it met."""
        if self._timer is not None:
            self._timer.cancel()
        if self._error is not None:
            raise self._error
        return self._result

    def _looks_out_of_memory(self) -> bool:
        """With --max-memory, a failure whose last stderr mentions running out of memory.

        wasmtime only makes ``memory.grow`` fail past the limit; the guest sees
        MemoryError (Python) or a NULL malloc (C) and fails its own way, so this
        reads what the guest last said.
        """
        if self._max_memory is None:
            return False
        tail = self._stderr_tail.lower()
        return b"memoryerror" in tail or b"out of memory" in tail

    def _capture_stderr(self, data: bytes) -> None:
        self._stderr_tail = (self._stderr_tail + data)[-4096:]
        self._stderr(data)


class GuestRun(GuestRunBase):
    """One run of a command component, started in a worker thread.

    ``start()`` returns at once; ``wait(poll)`` blocks until the guest ends and
    returns a RunResult.  ``stop(outcome)`` asks a running guest to stop (it
    traps at its next epoch check) and records why.
    """

    def __init__(self, engine, component, **settings: Any):
        super().__init__(**settings)
        self._engine = engine
        self._component = component
        self._abandoned = False

    def start(self) -> GuestRun:
        self._start_thread()
        return self

    @property
    def engine_description(self) -> str:
        return inprocess_description()

    def stop(self, reason: Outcome) -> None:
        """Interrupt the guest (or, on an engine without epochs, abandon it); the first reason wins."""
        self._note_stop(reason)
        if is_interruptible(self._engine):
            self._engine.increment_epoch()
        else:
            self._abandoned = True

    def wait(self, poll: float | None = None) -> RunResult | None:
        """Wait up to ``poll`` seconds (None: until done).

        Returns the result, or None if the guest is still running; re-raises a
        HostError met while setting the run up.
        """
        self._thread.join(poll)
        if self._thread.is_alive():
            if self._abandoned:
                assert self._stop_reason is not None  # stop() sets it before abandoning
                self._stream_owned.release()
                return RunResult(self._stop_reason, "abandoned: the guest cannot be interrupted")
            return None
        return self._finished()

    def _run_in_thread(self) -> None:
        try:
            result = self._call_run()
        except HostError as e:
            self._error = e
            return
        except BaseException as e:  # never lose the outcome of a run
            result = RunResult(Outcome.TRAPPED, f"host failure: {e!r}")
        if result.outcome in (Outcome.FAILED, Outcome.TRAPPED) and self._looks_out_of_memory():
            result = RunResult(Outcome.OUT_OF_MEMORY, result.detail)
        self._result = result

    def _call_run(self) -> RunResult:
        from wasmtime import Store, WasiConfig

        wasi = WasiConfig()
        wasi.argv = self._argv
        wasi.env = self._env
        for mount in self._mounts:
            wasi.preopen_dir(str(mount.host_dir), mount.guest_path, mount.writable)
        # stdout/stderr go to files that threads forward to the callbacks as they grow.
        # Not stdout_custom: with wasmtime-py 50 it passes on at most 8192 bytes of one
        # guest write and silently drops the rest (a `classifier valid` of 10000 images,
        # which writes ~10 KB at a time, lost 22% of its lines, its last line included).
        # No inherit_network(): wasmtime's WASI denies every socket address and name lookup.
        stream_dir = self._stream_dir
        pin_thread_to_its_cpu()
        schedule_as_batch()  # before the WASI runtime starts its threads, which inherit it
        try:
            wasi.stdout_file = os.path.join(stream_dir, "stdout")
            wasi.stderr_file = os.path.join(stream_dir, "stderr")
            with (
                FileTail(os.path.join(stream_dir, "stdout"), self._stdout),
                FileTail(os.path.join(stream_dir, "stderr"), self._capture_stderr),
            ):
                # The Store (and with it the WASI context) is closed explicitly: one still
                # alive when the interpreter exits makes wasmtime's tokio threads print
                # "panic in a function that cannot unwind" (seen with wasmtime-py 50).
                store = Store(self._engine)
                try:
                    result = self._instantiate_and_run(store, wasi)
                finally:
                    store.close()
            if result.outcome is Outcome.TRAPPED and nearly_full(stream_dir):
                # the guest's stdout/stderr files could not grow: its write failed, and it trapped
                return RunResult(Outcome.NO_SPACE, os.path.dirname(stream_dir))
            return result
        finally:
            self._stream_owned.release()

    def _instantiate_and_run(self, store, wasi) -> RunResult:
        from wasmtime import ExitTrap, WasmtimeError
        from wasmtime.component import Linker

        store.set_wasi(wasi)
        store.set_epoch_deadline(1)
        if self._max_memory is not None:
            store.set_limits(memory_size=self._max_memory)
        linker = Linker(self._engine)
        linker.add_wasip2()
        try:
            instance = linker.instantiate(store, self._component)
        except WasmtimeError as e:
            message = last_line(str(e))
            if self._max_memory is not None and "memory" in message and "limit" in message:
                return RunResult(Outcome.OUT_OF_MEMORY, message)
            raise HostError(f"cannot instantiate the component: {message}") from None
        run_index = self._component.get_export_index(RUN_INTERFACE)
        func_index = run_index and self._component.get_export_index("run", run_index)
        if func_index is None:
            raise HostError(f"the component does not export {RUN_INTERFACE}")
        run = instance.get_func(store, func_index)
        assert run is not None  # the run export of wasi:cli/run is a function
        if self._stop_reason is not None:
            # stopped before the store's epoch deadline was set (a --timeout shorter than the
            # compile, a signal while staging): that epoch bump is not seen by this store
            return RunResult(self._stop_reason)
        try:
            result = run(store)
        except ExitTrap as e:
            if self._stop_reason is not None and e.code != 0:
                return RunResult(self._stop_reason)
            return RunResult(Outcome.SUCCEEDED if e.code == 0 else Outcome.FAILED, f"exit status {e.code}")
        except WasmtimeError as e:
            if self._stop_reason is not None:
                return RunResult(self._stop_reason)
            return RunResult(Outcome.TRAPPED, last_line(str(e)))
        if self._stop_reason is not None:  # stopped as it ended: nothing is written back
            return RunResult(self._stop_reason)
        tag = getattr(result, "tag", "ok")
        return RunResult(Outcome.SUCCEEDED if tag == "ok" else Outcome.FAILED)
