"""The IDX format of the MNIST files: header checks, and the Dataset the four files make."""

from __future__ import annotations

import struct

import numpy as np

from .dataset import COLS, ROWS, Dataset
from .errors import PrepError

IDX_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
IDX_LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension


def parse_idx(data: bytes, name: str, kind: str) -> np.ndarray:
    """Parse an IDX file's bytes; kind is 'images' or 'labels'.

    Returns uint8 [n, 28, 28] for images, uint8 [n] for labels.
    """
    if kind == "images":
        magic, hdr_len = IDX_IMAGES_MAGIC, 16
    else:
        magic, hdr_len = IDX_LABELS_MAGIC, 8
    if len(data) < hdr_len:
        raise PrepError(f"{name}: truncated IDX file ({len(data)} bytes, header needs {hdr_len})")
    got_magic = struct.unpack(">I", data[:4])[0]
    if got_magic != magic:
        raise PrepError(f"{name}: bad IDX magic 0x{got_magic:08x} (expected 0x{magic:08x} for {kind})")
    if kind == "images":
        n, rows, cols = struct.unpack(">III", data[4:16])
        if (rows, cols) != (ROWS, COLS):
            raise PrepError(f"{name}: images are {rows}x{cols}, expected {ROWS}x{COLS}")
        expected = hdr_len + n * rows * cols
    else:
        (n,) = struct.unpack(">I", data[4:8])
        expected = hdr_len + n
    if len(data) < expected:
        raise PrepError(
            f"{name}: truncated IDX file ({len(data)} bytes, header says {n} items = {expected} bytes)"
        )
    if len(data) > expected:
        raise PrepError(
            f"{name}: IDX file has {len(data) - expected} trailing bytes "
            f"({len(data)} bytes, header says {n} items = {expected} bytes)"
        )
    arr = np.frombuffer(data, dtype=np.uint8, offset=hdr_len)
    if kind == "images":
        return arr.reshape(n, ROWS, COLS)
    if arr.size and int(arr.max()) > 9:
        raise PrepError(f"{name}: label value {int(arr.max())} out of range 0..9")
    return arr


def from_idx_bytes(blobs: dict, source: str, detail: dict) -> Dataset:
    arrays = {}
    for key, (name, data) in blobs.items():
        arrays[key] = parse_idx(data, name, "images" if key.endswith("images") else "labels")
    for split in ("train", "test"):
        nx, ny = len(arrays[split + "_images"]), len(arrays[split + "_labels"])
        if nx != ny:
            raise PrepError(
                f"{blobs[split + '_labels'][0]}: {ny} labels but "
                f"{blobs[split + '_images'][0]} has {nx} images"
            )
    ds = Dataset(
        arrays["train_images"],
        arrays["train_labels"],
        arrays["test_images"],
        arrays["test_labels"],
        source,
        detail,
    )
    ds.check()
    return ds
