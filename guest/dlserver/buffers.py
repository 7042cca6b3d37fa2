"""float32 buffers shared with `_dlk` through the buffer protocol."""

from array import array


def zeros(n: int) -> array:
    """A float32 array of n zeros."""
    return array("f", bytes(4 * n))


def int_zeros(n: int) -> array:
    """An int32 array of n zeros."""
    return array("i", bytes(4 * n))


def view(buf: array, start: int, length: int) -> memoryview:
    """Items start..start+length of a float32 array, without a copy."""
    return memoryview(buf)[start : start + length]


def filled(n: int, value: float) -> array:
    """A float32 array of n copies of value."""
    return array("f", [value]) * n


def from_values(values) -> array:
    """A float32 array holding the given numbers."""
    return array("f", values)
