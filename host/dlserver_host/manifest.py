"""``dl-server --manifest FILE``: a JSON provenance record of one run.

The record says what ran (sha256 of the program), on what (sha256 of every file
of the input sources, read-only to the guest), with which arguments (the host's
command line, and the guest's argv as it reads it from ``args.cfg``), how it
ended (outcome, exit status, duration) and what came out (sha256 of every file
written back to the host).  Format (keys in this order)::

    {
      "format": "dl-server-manifest/1",
      "started_utc": "2026-11-27T14:40:00.123Z",
      "duration_seconds": 3.21,             # from start to the end of the write-back
      "command_line": ["dl-server", "--program", "dl-server.wasm", ...],
      "cwd": "/abs/path",                   # every path below is relative to it
      "host": {"dl_server_host": "0.1.0", "wasmtime": "50.0.1", "python": "3.11.2",
               "engine": "wasmtime CLI 49.0.3"},  # wasmtime: wasmtime-py's version; engine:
                                                  # what ran the guest (or "wasmtime-py 50.0.1")
      "program": {"path": "dl-server.wasm", "sha256": "..."},
      "guest_argv": ["dl-server.wasm", "classifier", "train", ...],
      "args_file": "args.cfg",              # null if the guest cannot see one
      "inputs": {
        "sources": [{"path": "data/mnist/images_client1", "kind": "dir",
                     "files": 15000, "bytes": 4051234, "sha256": "..."}, ...],
        "files": {"args.cfg": "...", "data/mnist/images_client1/t_00000_c5.png": "...", ...}
      },
      "outputs": {"sources": ["model"], "files": {"model/mnist_lenet.weights": "..."}},
      "outcome": "succeeded",               # failed, trapped, timed out, out of memory,
      "exit_status": 0,                     # interrupted, host error
      "error": null,                        # the host's error message, if any
      "hashing": {"files": 15004, "bytes": 4052000, "seconds": 0.41,
                  "seconds_added": 0.02}    # hashing runs while the guest runs
    }

A directory source's ``sha256`` is that of the text ``sha256sum`` would print
for its files, sorted by path: lines ``<sha256>  <path>\\n`` with the paths
relative to ``cwd`` (so ``find DIR -type f | LC_ALL=C sort | xargs sha256sum |
sha256sum`` checks it).  Only regular files are listed; symlinks and special
files are skipped (the sandbox refuses symlinks that leave a source anyway).

Input files are hashed in a background thread while the guest runs (they are
read-only to it), each in one streaming pass; the record keeps how long that
took and how much of it the run waited for.  The file is written atomically
(temporary name, then rename), also when the guest or the host failed.  It is
written on the host, never through the sandbox: the guest never sees it.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import stat
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from .atomic import write_atomically

FORMAT = "dl-server-manifest/1"
HOST_VERSION = "0.1.0"
ARGS_FILE = "args.cfg"
MAX_GUEST_ARGS_BYTES = 1 << 16


class ManifestError(Exception):
    """The manifest cannot be written where asked (message is user-facing)."""


READ_BLOCK = 1 << 20


def sha256_file(path: str | os.PathLike) -> tuple[str, int]:
    """(hex sha256, size) of a file, read in one streaming pass of 1 MiB blocks.

    Plain os.open/os.read: for the 70000 small MNIST files, a file object's
    set-up (and an extra stat for the size) would cost more than the hashing.
    """
    digest = hashlib.sha256()
    size = 0
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        while block := os.read(fd, READ_BLOCK):
            digest.update(block)
            size += len(block)
    finally:
        os.close(fd)
    return digest.hexdigest(), size


def _posix(rel: PurePosixPath) -> str:
    return rel.as_posix()


class InputHasher:
    """Hash every regular file of the input sources, in a background thread.

    ``sources`` are cwd-relative PurePosixPaths (as sources.source_relpath gives
    them).  A file met twice (an input file inside an input directory) is hashed
    once.
    """

    def __init__(self, cwd: Path, sources: list[PurePosixPath]):
        self._cwd = cwd
        self._sources = list(dict.fromkeys(sources))
        self.files: dict[str, str] = {}
        self._sizes: dict[str, int] = {}
        self.summaries: list[dict] = []
        self.bytes = 0
        self.seconds = 0.0
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="manifest-hash", daemon=True)

    def start(self) -> InputHasher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def wait(self) -> float:
        """Wait for the hashing to end; return the seconds waited."""
        started = time.monotonic()
        self._thread.join()
        return time.monotonic() - started

    @property
    def complete(self) -> bool:
        return not self._thread.is_alive() and not self._stop.is_set() and self.error is None

    def _run(self) -> None:
        started = time.monotonic()
        try:
            for rel in self._sources:
                if self._stop.is_set():
                    return
                self.summaries.append(self._hash_source(rel))
        except OSError as e:
            self.error = f"cannot hash {e.filename}: {e.strerror or e}"
        finally:
            self.seconds = time.monotonic() - started

    def _hash_source(self, rel: PurePosixPath) -> dict:
        host = self._cwd / rel
        st = os.stat(host)
        if not stat.S_ISDIR(st.st_mode):
            digest, length = self._hash_one(_posix(rel), host)
            return {"path": _posix(rel), "kind": "file", "bytes": length, "sha256": digest}
        lines, count, size = [], 0, 0
        for path, rel_file in _walk_files(host, rel):
            if self._stop.is_set():
                break
            digest, length = self._hash_one(rel_file, path)
            lines.append(f"{digest}  {rel_file}\n")
            count += 1
            size += length
        lines.sort(key=lambda line: line[66:])
        tree = hashlib.sha256("".join(lines).encode("utf-8", "surrogateescape")).hexdigest()
        return {"path": _posix(rel), "kind": "dir", "files": count, "bytes": size, "sha256": tree}

    def _hash_one(self, rel_file: str, path: str | os.PathLike) -> tuple[str, int]:
        known = self._sizes.get(rel_file)
        if known is not None:
            return self.files[rel_file], known
        digest, size = sha256_file(path)
        self.files[rel_file] = digest
        self._sizes[rel_file] = size
        self.bytes += size
        return digest, size


def _walk_files(top: Path, rel_top: PurePosixPath):
    """Yield (host path, cwd-relative posix path) of the regular files under ``top``.

    Plain strings rather than pathlib: with 70000 files pathlib would cost more
    than the hashing itself.
    """
    prefix = "" if rel_top == PurePosixPath(".") else _posix(rel_top) + "/"
    stack = [(str(top), prefix)]
    while stack:
        directory, rel_dir = stack.pop()
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append((entry.path, rel_dir + entry.name + "/"))
                elif entry.is_file(follow_symlinks=False):
                    yield entry.path, rel_dir + entry.name


def guest_args(cwd: Path, inputs: list[PurePosixPath]) -> tuple[str | None, list[str] | None]:
    """(args file path, its arguments as the guest reads them) if the guest can see args.cfg.

    The guest gets only its name as argv and reads ``args.cfg`` in its working
    directory ``/``, which is the host's ``cwd/args.cfg`` when an input source
    covers it.  Lines are split as the guest does: on ``\\n``, a trailing ``\\r``
    dropped, no empty last line.
    """
    target = PurePosixPath(ARGS_FILE)
    covered = any(rel == target or rel == PurePosixPath(".") for rel in inputs)
    if not covered:
        return None, None
    try:
        with open(cwd / ARGS_FILE, "rb") as f:
            data = f.read(MAX_GUEST_ARGS_BYTES)
    except OSError:
        return ARGS_FILE, None
    lines = data.decode("utf-8", "replace").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return ARGS_FILE, [line.removesuffix("\r") for line in lines]


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def check_destination(path: Path) -> None:
    """Refuse a manifest path that cannot be a file (before the guest runs for nothing)."""
    if path.is_dir():
        raise ManifestError(f"--manifest {path}: is a directory")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ManifestError(f"--manifest {path}: {parent} is not a directory")


def write_record(path: Path, record: dict) -> None:
    """Write the JSON record atomically (temporary file in the same directory, then rename)."""
    text = json.dumps(record, indent=1, ensure_ascii=False) + "\n"
    try:
        write_atomically(path, text)
    except OSError as e:
        raise ManifestError(f"cannot write --manifest {path}: {e.strerror or e}") from None


class Recorder:
    """Collects the record of one run; ``write`` puts it on disk."""

    def __init__(self, path: str, command_line: list[str], cwd: Path):
        self.path = Path(path) if os.path.isabs(path) else cwd / path
        self.cwd = cwd
        self._started = time.monotonic()
        self.record: dict = {
            "format": FORMAT,
            "started_utc": utc_now(),
            "duration_seconds": None,
            "command_line": list(command_line),
            "cwd": str(cwd),
            "host": {"dl_server_host": HOST_VERSION, "wasmtime": None, "python": platform.python_version()},
            "program": None,
            "guest_argv": None,
            "args_file": None,
            "inputs": {"sources": [], "files": {}},
            "outputs": {"sources": [], "files": {}},
            "outcome": None,
            "exit_status": None,
            "error": None,
            "hashing": None,
        }
        self.hasher: InputHasher | None = None
        self._waited = 0.0

    def relative(self, path: str | os.PathLike) -> str:
        """A host path as recorded: relative to cwd when inside it."""
        absolute = Path(os.path.abspath(path))
        try:
            return absolute.relative_to(self.cwd).as_posix()
        except ValueError:
            return str(absolute)

    def program(self, program: str, sha256: str) -> None:
        self.record["program"] = {"path": self.relative(program), "sha256": sha256}
        try:
            from .runtime import wasmtime_version

            self.record["host"]["wasmtime"] = wasmtime_version()
        except Exception:  # version unknown: keep null rather than fail the run
            pass

    def engine(self, description: str) -> None:
        """What ran the guest, e.g. "wasmtime CLI 49.0.3" or "wasmtime-py 50.0.1" (host.engine)."""
        self.record["host"]["engine"] = description

    def sources(
        self,
        program: str,
        inputs: list[PurePosixPath],
        outputs: list[PurePosixPath],
        given_args: list[str] | None = None,
    ) -> None:
        """Note the sources, the guest's arguments (given, else read from args.cfg) and start
        hashing the inputs."""
        self.record["outputs"]["sources"] = [_posix(rel) for rel in outputs]
        args_file, args = (None, given_args) if given_args else guest_args(self.cwd, inputs)
        self.record["args_file"] = args_file
        name = os.path.basename(program)
        self.record["guest_argv"] = [name, *args] if args is not None else [name]
        self.hasher = InputHasher(self.cwd, inputs).start()

    def inputs_hashed(self) -> None:
        """Wait until the inputs are hashed (the time waited counts as added by hashing)."""
        if self.hasher is not None:
            self._waited += self.hasher.wait()

    def outputs(self, written: list[Path]) -> None:
        files = {}
        for path in sorted(written):
            files[self.relative(path)] = sha256_file(path)[0]
        self.record["outputs"]["files"] = files

    def finish(self, outcome: str, status: int, error: str | None = None) -> None:
        if self.hasher is not None:
            if outcome == "interrupted":
                self.hasher.stop()
            waited = self._waited + self.hasher.wait()
            self.record["inputs"] = {
                "sources": self.hasher.summaries,
                "files": dict(sorted(self.hasher.files.items())),
            }
            self.record["hashing"] = {
                "files": len(self.hasher.files),
                "bytes": self.hasher.bytes,
                "seconds": round(self.hasher.seconds, 3),
                "seconds_added": round(waited, 3),
                "complete": self.hasher.complete,
            }
            if self.hasher.error and error is None:
                error = self.hasher.error
        self.record["outcome"] = outcome
        self.record["exit_status"] = status
        self.record["error"] = error
        self.record["duration_seconds"] = round(time.monotonic() - self._started, 3)

    def write(self) -> None:
        write_record(self.path, self.record)


def command_line(argv: list[str] | None, prog: str) -> list[str]:
    return list(sys.argv) if argv is None else [prog, *argv]
