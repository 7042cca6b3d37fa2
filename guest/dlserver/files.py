"""Reading and writing the user's files: one reader, one atomic writer, one error line on failure."""

import os

from .errors import DLServerError

# A WASI read returns at most 64 KiB whatever was asked: only a shorter read means the end.
CHUNK = 1 << 16


def read_file(path: str) -> bytes:
    """The bytes of a file; OSError as the system gives it (callers word their error line).

    os.open + pread: each WASI call costs ~45 us under wasmtime, and a read on a fresh
    descriptor ~3x a pread (which opens no stream); 60000 files add up."""
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            data = os.pread(fd, CHUNK, 0)
        except OSError:  # not seekable; under WASI also a directory, where read says EISDIR
            return _read_stream(fd)
        if len(data) == CHUNK:
            chunks = [data]
            offset = CHUNK
            while chunk := os.pread(fd, CHUNK, offset):
                chunks.append(chunk)
                offset += len(chunk)
            data = b"".join(chunks)
        return data
    finally:
        os.close(fd)


def _read_stream(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, CHUNK):
        chunks.append(chunk)
    return b"".join(chunks)


class Wording:
    """The error lines of a failed read: when the file is missing, when it is a directory
    (None: as any other error), and any other error ({reason}: the system's words)."""

    def __init__(self, missing: str, directory: str | None, other: str):
        self.missing, self.directory, self.other = missing, directory, other


OPEN = Wording(
    "{path}: cannot open {what}: no such file",
    "{path}: cannot open {what}: it is a directory",
    "{path}: cannot open {what}: {reason}",
)


def read_input_file(path: str, what: str, wording: Wording = OPEN) -> bytes:
    """The bytes of an input file; `what` names it in errors ("weights file", "image")."""
    try:
        return read_file(path)
    except FileNotFoundError:
        line, reason = wording.missing, ""
    except IsADirectoryError as e:
        line, reason = wording.directory or wording.other, e.strerror or str(e)
    except OSError as e:
        line, reason = wording.other, e.strerror or str(e)
    except ValueError:  # a NUL byte in the path
        line, reason = wording.other, "the path holds a NUL byte"
    raise DLServerError(line.format(path=path, what=what, reason=reason))


def write_file_atomic(path: str, data: bytes, what: str) -> None:
    """Write via a temporary file and a rename, so no half-written file is ever seen."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except (OSError, ValueError) as e:
        try:
            os.unlink(tmp)
        except (OSError, ValueError):
            pass
        reason = e.strerror if isinstance(e, OSError) else "the path holds a NUL byte"
        raise DLServerError(f"{path}: cannot write {what}: {reason or e}") from None
