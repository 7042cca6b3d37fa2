"""Reading and writing the user's files, with one clear error line on failure."""
import os

from .errors import DLServerError

READ_SIZE = 1 << 20
# A WASI read returns at most 64 KiB whatever was asked: only a shorter read means the end.
WASI_MAX_READ = 1 << 16


def read_input_file(path: str, what: str) -> bytes:
    """The bytes of an input file; `what` names it in errors ("weights file", "image")."""
    # os.open + one os.read: each WASI read costs ~45 us under wasmtime, and 60000 files add up.
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            data = os.read(fd, READ_SIZE)
            if len(data) >= WASI_MAX_READ:
                chunks = [data]
                while chunk := os.read(fd, READ_SIZE):
                    chunks.append(chunk)
                data = b"".join(chunks)
        finally:
            os.close(fd)
        return data
    except FileNotFoundError:
        raise DLServerError(f"{path}: cannot open {what}: no such file") from None
    except IsADirectoryError:
        raise DLServerError(f"{path}: cannot open {what}: it is a directory") from None
    except OSError as e:
        raise DLServerError(f"{path}: cannot open {what}: {e.strerror or e}") from None


def write_file_atomic(path: str, data: bytes, what: str) -> None:
    """Write via a temporary file and a rename, so no half-written file is ever seen."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise DLServerError(f"{path}: cannot write {what}: {e.strerror or e}") from None
