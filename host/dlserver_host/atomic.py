"""Replace a file atomically: write a temporary file beside it, then rename it over.

A reader of the destination sees the old file or the new one, never a partial one,
and a failed or interrupted write leaves the destination as it was and no temporary
file behind.  The temporary file is ``.<name>.<pid>.<random>.dl-server-tmp`` in the
destination's directory (the rename must not cross file systems; the writer's PID lets a
later write-back remove what a writer killed by SIGKILL left: tempdirs.py).  The new file
gets the mode of the regular file it replaces, else ``0o666`` less the umask (what
``open(path, "w")`` would give), or ``0o600`` with ``private=True``.  There is no
fsync: this protects readers from partial files, not the data from a power cut.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

TEMP_SUFFIX = ".dl-server-tmp"


def _new_mode(dest: Path, private: bool) -> int:
    if private:
        return 0o600
    try:
        old = os.lstat(dest)
    except FileNotFoundError:
        pass
    else:
        if stat.S_ISREG(old.st_mode):
            return stat.S_IMODE(old.st_mode)
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def _temp_beside(dest: Path, private: bool) -> Iterator[tuple[BinaryIO, Path]]:
    """A new temporary file in ``dest``'s directory (created when missing), given the mode
    ``dest`` will have; removed when the body fails."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    mode = _new_mode(dest, private)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.{os.getpid()}.", suffix=TEMP_SUFFIX, dir=dest.parent)
    try:
        os.close(fd)
        with open(tmp, "wb") as f:
            yield f, Path(tmp)
            os.fchmod(f.fileno(), mode)
    except BaseException:
        _remove(Path(tmp))
        raise


def _remove(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


@contextmanager
def atomic_file(dest: str | os.PathLike, *, private: bool = False) -> Iterator[BinaryIO]:
    """Yield a binary file to write ``dest``'s new contents to; it replaces ``dest`` on success.

    The yielded file's ``name`` is the temporary path (for a check of what was written
    before the rename).  On an exception the temporary file is removed and ``dest`` is
    left alone.  The destination's directory is created when missing.
    """
    dest = Path(dest)
    with _temp_beside(dest, private) as (f, tmp):
        yield f
    try:
        os.replace(tmp, dest)
    except BaseException:
        _remove(tmp)
        raise


def copy_beside(src: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Copy ``src`` to a temporary file beside ``dest`` (mode as :func:`atomic_file` gives)
    and return its path, for the caller to rename over ``dest`` or remove; on any failure
    nothing is left behind."""
    with _temp_beside(Path(dest), False) as (out, tmp), open(src, "rb") as f:
        shutil.copyfileobj(f, out, 1 << 20)
    return tmp


def write_atomically(
    dest: str | os.PathLike, data: bytes | bytearray | str, *, private: bool = False
) -> None:
    """Replace ``dest`` by ``data`` (``str`` is written as UTF-8) through :func:`atomic_file`."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    with atomic_file(dest, private=private) as f:
        f.write(data)
