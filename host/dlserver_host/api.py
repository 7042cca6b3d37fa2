"""The host as a Python call: ``run(program, inputs, outputs, argv, limits) -> RunOutcome``.

Each call is one ``dl-server`` run in a child process (the guest's arguments after
``--``, so no args.cfg is written and concurrent runs can share a working directory).
A child process rather than an in-process run: the sandbox's sources are relative to
the working directory, which is per process, and a crash or a timeout of one run cannot
take its caller down. The cost is Python's start-up and loading the compiled component
from the cache (~0.3 s a run, small beside a training run). Concurrent runs each lease a CPU
of their own (cpu_lease).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Limits:
    """The host's limits of one run: linear memory (bytes) and wall time (seconds)."""

    max_memory: int | None = None
    timeout: float | None = None


@dataclass(frozen=True)
class RunOutcome:
    """What one run gave: exit status (0 = success), the guest's output, the manifest record."""

    status: int
    stdout: str
    stderr: str
    seconds: float
    manifest: dict | None

    @property
    def ok(self) -> bool:
        return self.status == 0

    def error_line(self) -> str:
        """The last line of stderr (the guest's or the host's one-line error)."""
        lines = self.stderr.strip().splitlines()
        return lines[-1] if lines else f"exit status {self.status}"


def host_command() -> list[str]:
    """The ``dl-server`` console script next to this interpreter, else ``python -m``."""
    exe = Path(sys.executable).parent / "dl-server"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "dlserver_host.cli"]


def run(
    program: str | os.PathLike,
    inputs: Sequence[str],
    outputs: Sequence[str],
    argv: Sequence[str],
    limits: Limits = Limits(),
    *,
    cwd: str | os.PathLike = ".",
    manifest: str | os.PathLike | None = None,
) -> RunOutcome:
    """Run ``program`` with ``argv`` (after its name) in a sandbox seeing ``inputs`` (read-only)
    and ``outputs`` (written back on success), paths relative to ``cwd``; with ``manifest``,
    the run's provenance record is written there and returned."""
    if not argv:
        raise ValueError("argv: the guest needs a command")
    cmd = [*host_command(), "--program", os.fspath(program), "--no-progress"]
    if inputs:
        cmd += ["--input-source", *inputs]
    if outputs:
        cmd += ["--output-source", *outputs]
    if manifest is not None:
        cmd += ["--manifest", os.fspath(manifest)]
    if limits.max_memory is not None:
        cmd += ["--max-memory", str(limits.max_memory)]
    if limits.timeout is not None:
        cmd += ["--timeout", str(limits.timeout)]
    cmd += ["--", *argv]
    started = time.perf_counter()
    with cpu_lease() as cpu:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if cpu is not None:
            try:
                os.sched_setaffinity(proc.pid, {cpu})  # before the host pins its guest thread
            except OSError:
                pass
        stdout, stderr = proc.communicate()
    seconds = time.perf_counter() - started
    record = None
    if manifest is not None:
        path = Path(cwd, manifest)
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            record = None
    return RunOutcome(proc.returncode, stdout, stderr, seconds, record)


@contextlib.contextmanager
def cpu_lease() -> Iterator[int | None]:
    """A CPU that no other run through this API holds on this machine (one lock file per CPU),
    or None when all are taken (or on a system without CPU affinity).

    The host pins its guest thread to the CPU it happens to run on when the guest starts
    (runtime.pin_thread_to_its_cpu); two runs started together, e.g. two Flower clients, can
    land on the same CPU and then take turns on it while the other CPU idles. A run that holds
    a lease starts on its own CPU, so concurrent runs spread over the CPUs.
    """
    if not hasattr(os, "sched_getaffinity"):
        yield None
        return
    locks = Path(tempfile.gettempdir()) / f"dl-server-cpus-{os.getuid()}"
    locks.mkdir(exist_ok=True)
    for cpu in sorted(os.sched_getaffinity(0)):
        lock = open(locks / f"cpu{cpu}.lock", "w")  # noqa: SIM115  (held until the run ends)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            continue
        try:
            yield cpu
        finally:
            lock.close()  # releases the lock
        return
    yield None
