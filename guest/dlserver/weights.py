"""Darknet `.weights` files (docs/darknet-contract.md §3): a 20-byte header, then each layer's float32 arrays.

Header: int32 major, minor, revision; then `seen` as 8 bytes when major*10+minor >= 2 and
both are < 1000, else as 4 bytes. dl-server keeps the low 32 bits as `seen` (wasm32's
size_t) and carries the upper 4 bytes through to a later save, so load + save is
byte-identical. Unlike Darknet, a file of the wrong length is an error, not a silent
partial load.
"""

import struct
import sys

from .errors import DLServerError
from .files import read_input_file, write_file_atomic

_HEADER = struct.Struct("<iii")


def _count_floats(net, skip_attr: str) -> int:
    return sum(
        len(a) for layer in net.layers if not getattr(layer, skip_attr) for a in layer.parameter_arrays()
    )


def load_weights(net, path: str) -> None:
    """Fill the network's parameters from a weights file, checking its length exactly."""
    data = read_input_file(path, "weights file")
    if len(data) < 16:
        raise DLServerError(f"{path}: not a weights file: {len(data)} bytes, shorter than the 16-byte header")
    major, minor, revision = _HEADER.unpack_from(data, 0)
    if major < 0 or minor < 0 or revision < 0:
        raise DLServerError(f"{path}: not a weights file: bad version {major}.{minor}.{revision}")
    if major * 10 + minor >= 2 and major < 1000 and minor < 1000:
        if len(data) < 20:
            raise DLServerError(
                f"{path}: not a weights file: {len(data)} bytes, shorter than the 20-byte header of version"
                f" {major}.{minor}.{revision}"
            )
        seen, seen_high = struct.unpack_from("<II", data, 12)
        offset = 20
    else:
        seen, seen_high = struct.unpack_from("<I", data, 12)[0], 0
        offset = 16
    transpose = major > 1000 or minor > 1000
    need = 4 * _count_floats(net, "dontload")
    have = len(data) - offset
    if have != need:
        problem = "truncated" if have < need else "too long"
        raise DLServerError(
            f"{path}: {problem}: {have} bytes of parameters after the header, but"
            f" {net.cfg_path} needs {need} ({need // 4} floats)"
        )
    for layer in net.layers:
        if layer.dontload:
            continue
        for array in layer.parameter_arrays():
            n = 4 * len(array)
            memoryview(array).cast("B")[:] = data[offset : offset + n]
            offset += n
        if transpose:
            layer.transpose_weights()
    net.seen = seen
    net.seen_high = seen_high
    sys.stderr.write(f"Loading weights from {path}...Done!\n")


def weights_bytes(net) -> bytes:
    """The weights file of a network: header (0, 2, 0, 8-byte seen) and each layer's arrays."""
    parts = [_HEADER.pack(0, 2, 0), struct.pack("<II", net.seen & 0xFFFFFFFF, net.seen_high)]
    for layer in net.layers:
        if not layer.dontsave:
            parts.extend(a.tobytes() for a in layer.parameter_arrays())
    return b"".join(parts)


def save_weights(net, path: str) -> None:
    """Save the network's parameters in Darknet's format."""
    sys.stderr.write(f"Saving weights to {path}\n")
    write_file_atomic(path, weights_bytes(net), "weights file")
