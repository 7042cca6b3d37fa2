"""Images are 8-bit grayscale 28x28 PNG files (one IHDR, one IDAT, no filtering,
zlib level 6), written here directly with zlib, which is about 3x faster than going
through Pillow; any PNG decoder reads them (the tests read them back with
Pillow).
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

from .dataset import COLS, ROWS


def _png_chunk(tag: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + tag
        + payload
        + struct.pack(">I", zlib.crc32(tag + payload) & 0xFFFFFFFF)
    )


_PNG_HEAD = b"\x89PNG\r\n\x1a\n" + _png_chunk(
    b"IHDR",
    struct.pack(">IIBBBBB", COLS, ROWS, 8, 0, 0, 0, 0),  # 8-bit grayscale
)
_PNG_TAIL = _png_chunk(b"IEND", b"")


def encode_png_rows(scanlines: bytes) -> bytes:
    """PNG file bytes from filtered scanlines (each row: filter byte 0 + 28 pixels)."""
    return _PNG_HEAD + _png_chunk(b"IDAT", zlib.compress(scanlines, 6)) + _PNG_TAIL


def encode_png(img: np.ndarray) -> bytes:
    """PNG file bytes for one 28x28 uint8 image."""
    rows = np.zeros((ROWS, COLS + 1), dtype=np.uint8)
    rows[:, 1:] = img
    return encode_png_rows(rows.tobytes())
