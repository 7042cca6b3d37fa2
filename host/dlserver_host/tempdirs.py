"""Temporary directories that name their owner, so one run can remove what a killed run left.

A run's staging and stdio directories are ``<prefix><pid>-<random>`` in the temporary
directory, and the run holds an exclusive ``flock`` on the ``.owner`` file inside for as long
as it lives.  SIGKILL runs no cleanup, but the kernel drops the lock with the process: the
next run removes every such directory of this user whose lock it can take (owner gone).
The lock, not the PID, decides (a PID may be reused, or belong to another PID namespace
sharing the directory); the PID in the name says whose a directory is.  A directory without
``.owner`` (its owner was killed between making it and locking it) is removed when its PID
is not a live process.

Write-back's temporary files beside their destinations (atomic.py: ``.<name>.<pid>.<random>
.dl-server-tmp``) carry their writer's PID too: write-back removes, in each directory it writes
to, those of this user whose PID is not a live process (no lock: they are closed before the
renames; a PID reused since, or of another PID namespace writing the same directory, keeps
its files).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .atomic import TEMP_SUFFIX

OWNER_FILE = ".owner"
# the prefixes this module makes directories with (sources.py: staging; runtime.py: stdio)
PREFIXES = ("dl-server-", "dl-server-stdio-")
_NAME = re.compile(r"dl-server-(?:stdio-)?(\d+)-[a-z0-9_]{8}")
_TEMP_FILE = re.compile(r"\..+\.(\d+)\.[a-z0-9_]{8}" + re.escape(TEMP_SUFFIX))


class OwnedDir:
    """A new directory ``<prefix><pid>-<random>`` under ``parent`` (default: the temporary
    directory), locked until ``release`` (which removes it)."""

    def __init__(self, prefix: str, parent: str | os.PathLike | None = None):
        self.path = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=parent))
        self._fd: int | None = None
        try:
            # locked under another name, then renamed: ``.owner`` never exists unlocked while
            # its run lives, so another run's remove_abandoned cannot take it for abandoned
            unlocked = self.path / (OWNER_FILE + ".new")
            self._fd = os.open(unlocked, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(unlocked, self.path / OWNER_FILE)
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Remove the directory, then drop the lock."""
        shutil.rmtree(self.path, ignore_errors=True)
        fd, self._fd = self._fd, None  # once, also when two threads release
        if fd is not None:
            os.close(fd)


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def _owner_gone(path: Path, pid: int) -> bool:
    """Whether the run that made ``path`` is gone: its lock is free (or, without a lock
    file, its PID names no process)."""
    try:
        fd = os.open(path / OWNER_FILE, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return _pid_gone(pid)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # held: the owner runs
    finally:
        os.close(fd)
    return True


def _ours(directory: Path, pattern: re.Pattern, is_dir: bool) -> Iterator[tuple[Path, int]]:
    """This user's directories (or regular files) in ``directory`` whose names match
    ``pattern``, with the PID the name holds; nothing when it cannot be read."""
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        try:
            kind_ok = entry.is_dir(follow_symlinks=False) if is_dir else entry.is_file(follow_symlinks=False)
            if match and kind_ok and entry.stat(follow_symlinks=False).st_uid == os.getuid():
                yield Path(entry.path), int(match.group(1))
        except OSError:
            continue


def remove_abandoned(parent: str | os.PathLike | None = None) -> list[Path]:
    """Remove this user's directories of PREFIXES under ``parent`` (default: the temporary
    directory) whose owner is gone; returns them.  Errors are ignored: this is tidying."""
    parent = Path(parent if parent is not None else tempfile.gettempdir())
    removed = [path for path, pid in _ours(parent, _NAME, True) if _owner_gone(path, pid)]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def remove_abandoned_files(directory: Path) -> list[Path]:
    """Remove this user's write-back temporary files in ``directory`` whose writer's PID is
    not a live process; returns them.  Errors are ignored: this is tidying."""
    removed = [path for path, pid in _ours(directory, _TEMP_FILE, False) if _pid_gone(pid)]
    for path in removed:
        with contextlib.suppress(OSError):
            path.unlink()
    return removed
