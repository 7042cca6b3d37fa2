"""The compile cache: compiled components on disk, shared by both engines (docs/host-io.md).

An entry is ``<sha256 of the .wasm>-<engine and version>-<settings>.cwasm`` in
``$XDG_CACHE_HOME/dl-server`` (or ``~/.cache/dl-server``); the CACHE_ENTRIES_KEPT most recently
used entries are kept. Every file here is written atomically and readable by us only, and used
only if we own it. Next to the entries: the digests of the .wasm files, remembered per file
identity (``digests/``), and the CLI's version (``wasmtime-cli-version``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .atomic import write_atomically

CACHE_ENTRIES_KEPT = 4  # compiled components are ~35 MB; older ones are removed


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/dl-server`` or ``~/.cache/dl-server``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dl-server"


def wasm_digest(wasm_path: Path, cache_dir: Path | None) -> str:
    """sha256 of the wasm file, remembered per file identity to save hashing 18 MB each start.

    The memo (``cache_dir/digests/<sha256 of the real path>``) holds size, mtime, ctime
    and inode next to the digest; any change to the file changes its ctime.
    """
    st = os.stat(wasm_path)
    identity = f"{st.st_size} {st.st_mtime_ns} {st.st_ctime_ns} {st.st_ino}"
    memo = None
    if cache_dir is not None:
        real = os.path.realpath(wasm_path).encode("utf-8", "surrogateescape")
        memo = cache_dir / "digests" / hashlib.sha256(real).hexdigest()
        try:
            remembered_identity, _, digest = memo.read_text().rpartition(" ")
            if remembered_identity == identity and is_own_file(memo):
                return digest
        except (OSError, ValueError):
            pass
    with open(wasm_path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    if memo is not None:
        write_private(memo, f"{identity} {digest}".encode())
    return digest


def is_own_file(path: Path) -> bool:
    """Whether ``path`` exists and belongs to us (a file of the cache is used only then)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return st.st_uid == os.getuid()


def mark_used(path: Path) -> None:
    """Mark a cache entry as recently used (pruning keeps the most recent ones)."""
    try:
        os.utime(path)
    except OSError:
        pass


def write_private(path: Path, data: bytes | bytearray) -> bool:
    """Write ``data`` to ``path`` atomically, readable by us only; False if that failed."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomically(path, data, private=True)
    except OSError:
        return False
    return True


def store(path: Path, data: bytes | bytearray) -> None:
    """Store a compiled component and prune old entries; a cache that cannot be written is skipped."""
    if write_private(path, data):
        prune(path.parent)


def prune(cache_dir: Path) -> None:
    """Keep the CACHE_ENTRIES_KEPT most recently used compiled components (both engines')."""
    try:
        entries = sorted(cache_dir.glob("*.cwasm"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in entries[CACHE_ENTRIES_KEPT:]:
            old.unlink()
    except OSError:
        pass
