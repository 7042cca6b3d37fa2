"""float32 buffers shared with `_dlk` through the buffer protocol, and the ledger that keeps
their live total under LIMIT_BYTES (the component has 4 GiB of linear memory, and Python,
the weights file and images need the rest): a cfg that asks for more gets an error before
the allocation, not an out-of-memory trap after it."""

import gc
import os
import weakref
from array import array

from . import limits
from .errors import DLServerError

LIMIT_BYTES = 3 * 2**30
_live_bytes = 0
# what this run may hold, at most LIMIT_BYTES: limits.MAX_BUFFER_BYTES, more with a weights file
_budget: int | None = None  # None: limits.MAX_BUFFER_BYTES (read when the run starts)


class BufferLimitError(DLServerError):
    """A buffer that would take the live total past LIMIT_BYTES (or a negative size)."""


def live_bytes() -> int:
    """Bytes held by the buffers of this module that are still alive."""
    return _live_bytes


def budget() -> int:
    """Bytes the buffers of this run may hold in all."""
    return min(LIMIT_BYTES, limits.MAX_BUFFER_BYTES if _budget is None else _budget)


def reset_budget() -> None:
    """Back to the budget of a run without a weights file."""
    global _budget
    _budget = None


def allow_for_weights(path: str | None, networks: int = 1) -> None:
    """Set the budget to limits.MAX_BUFFER_BYTES plus 4 bytes per byte of the weights file the run
    loads into each of `networks` networks (None: no file): a real model's activations are
    a few times its parameters (YOLOv3 at 608: 1.33 GiB for 0.24 GiB of weights), a hostile
    cfg with a tiny file gets only the base."""
    global _budget
    try:
        size = os.stat(path).st_size if path else 0
    except (OSError, ValueError):  # load_weights reports it
        size = 0
    _budget = limits.MAX_BUFFER_BYTES + 4 * size * networks


def _release(nbytes: int) -> None:
    global _live_bytes
    _live_bytes -= nbytes


def _reserve(n: int, itemsize: int) -> int:
    global _live_bytes
    if n < 0:
        raise BufferLimitError(f"a buffer of {n} values (negative size)")
    nbytes = n * itemsize
    limit = budget()
    if _live_bytes + nbytes > limit:
        gc.collect()  # buffers held only by reference cycles (an earlier network) are not live
    if _live_bytes + nbytes > limit:
        raise BufferLimitError(
            f"needs a buffer of {n} values ({nbytes / 2**30:.2f} GiB) on top of "
            f"{_live_bytes / 2**30:.2f} GiB, more than the {limit / 2**30:.3g} GiB dl-server allows"
            " (DL_SERVER_MAX_BUFFER_BYTES raises it)"
        )
    _live_bytes += nbytes
    return nbytes


def _tracked(buf: array, nbytes: int) -> array:
    weakref.finalize(buf, _release, nbytes)
    return buf


def zeros(n: int) -> array:
    """A float32 array of n zeros."""
    nbytes = _reserve(n, 4)
    return _tracked(array("f", [0.0]) * n, nbytes)


def int_zeros(n: int) -> array:
    """An int32 array of n zeros."""
    nbytes = _reserve(n, 4)
    return _tracked(array("i", [0]) * n, nbytes)


_scratch = array("f")


def reserve_scratch(n: int) -> None:
    """Grow the shared scratch buffer to at least n floats now (so a layer that needs too much
    fails while its cfg line is known, not in its first forward pass)."""
    global _scratch
    if n > len(_scratch):
        _scratch = array("f")  # the old one goes before the new one is counted
        _scratch = zeros(n)


def release_scratch() -> None:
    """Drop the scratch buffer (a new network sizes it again; layers of one built before grow
    it back when they run)."""
    global _scratch
    _scratch = array("f")


def scratch(n: int) -> memoryview:
    """n floats of the one scratch buffer every layer shares (Darknet's net->workspace: each
    layer's im2col columns live there only during its own forward or backward call)."""
    reserve_scratch(n)
    return memoryview(_scratch)[:n]


def view(buf: array, start: int, length: int) -> memoryview:
    """Items start..start+length of a float32 array, without a copy."""
    return memoryview(buf)[start : start + length]


def filled(n: int, value: float) -> array:
    """A float32 array of n copies of value."""
    nbytes = _reserve(n, 4)
    return _tracked(array("f", [value]) * n, nbytes)


def from_values(values) -> array:
    """A float32 array holding the given numbers."""
    return array("f", values)


def check_room(nbytes: int, where: str, what: str) -> None:
    """Refuse, before anything is read, a run that will hold `nbytes` more than the buffers now
    live (e.g. every model an aggregation rule combines) when that is over this run's budget."""
    limit = budget()
    if _live_bytes + nbytes > limit:
        raise DLServerError(
            f"{where}: {what} need {nbytes / 2**30:.2f} GiB on top of {_live_bytes / 2**30:.2f} GiB,"
            f" more than the {limit / 2**30:.3g} GiB dl-server allows (DL_SERVER_MAX_BUFFER_BYTES raises it)"
        )
