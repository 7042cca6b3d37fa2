"""Reading and writing the user's files: one reader, one atomic writer, one error line on failure."""

import os
import stat

from . import limits
from .errors import DLServerError

# A WASI read returns at most 64 KiB whatever was asked: only a shorter read means the end.
CHUNK = 1 << 16


class NotRegularFile(OSError):
    """A FIFO, socket or device where a file is read: opening a FIFO would wait for a writer
    for ever, and a device (/dev/zero) never ends."""


class FileTooLarge(OSError):
    """A file over its size limit (limits.file_bytes() or limits.text_bytes())."""


_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device"}


def check_regular(path: str, limit: limits.Limit) -> None:
    """Refuse, before it is opened, anything but a regular file (IsADirectoryError for a
    directory) and a file over ``limit``."""
    st = os.stat(path)
    if stat.S_ISREG(st.st_mode):
        if st.st_size > limit.value:
            raise FileTooLarge(0, _too_large(st.st_size, limit))
        return
    raise _not_regular(st.st_mode)


def _not_regular(mode: int) -> OSError:
    if stat.S_ISDIR(mode):
        return IsADirectoryError(21, "it is a directory")
    kind = _KINDS.get(stat.S_IFMT(mode), "a FIFO, socket or device")  # WASI: a FIFO's type is unknown
    return NotRegularFile(0, f"not a regular file ({kind})")


def check_appendable(path: str) -> None:
    """A file to append to: absent, or a regular file (NotRegularFile before a FIFO's open
    would wait for a reader)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(st.st_mode):
        raise _not_regular(st.st_mode)


def _too_large(size: int, limit: limits.Limit) -> str:
    return f"{size} bytes is over the limit {limit.value} ({limit.variable} raises it)"


def read_file(path: str, limit: limits.Limit | None = None) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (None: limits.file_bytes());
    OSError as the system gives it, NotRegularFile or FileTooLarge (callers word their error
    line).

    os.open + pread: each WASI call costs ~45 us under wasmtime, and a read on a fresh
    descriptor ~3x a pread (which opens no stream); 60000 files add up."""
    if limit is None:
        limit = limits.file_bytes()
    check_regular(path, limit)
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.pread(fd, CHUNK, 0)
        if len(data) == CHUNK:
            chunks = [data]
            offset = CHUNK
            while chunk := os.pread(fd, CHUNK, offset):
                chunks.append(chunk)
                offset += len(chunk)
                if offset > limit.value:  # grown since the stat
                    raise FileTooLarge(0, _too_large(offset, limit))
            data = b"".join(chunks)
        return data
    finally:
        os.close(fd)


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


def read_input_file(
    path: str, what: str, wording: Wording = OPEN, limit: limits.Limit | None = None
) -> bytes:
    """The bytes of an input file; `what` names it in errors ("weights file", "image"), `limit`
    the size it may have (None: limits.file_bytes())."""
    try:
        return read_file(path, limit)
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
        try:  # whatever holds the name (a FIFO's open would wait for a reader) goes first
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        with open(tmp, "xb") as f:
            f.write(data)
        os.replace(tmp, path)
    except (OSError, ValueError) as e:
        try:
            os.unlink(tmp)
        except (OSError, ValueError):
            pass
        reason = e.strerror if isinstance(e, OSError) else "the path holds a NUL byte"
        raise DLServerError(f"{path}: cannot write {what}: {reason or e}") from None
