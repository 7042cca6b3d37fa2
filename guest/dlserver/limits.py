"""Limits on the sizes an input may ask for, checked before anything is allocated or computed.

Defaults are generous for real models (YOLOv3 at 608 with its weights, 8-megapixel photos);
each can be raised by the environment variable `DL_SERVER_<NAME>` (under the host:
`--env DL_SERVER_MAX_PIXELS=...`). A value over its limit is a DLServerError naming the file,
the value and the limit.
"""

import os
from typing import NamedTuple

from .errors import DLServerError


def _setting(name: str, default: int) -> int:
    text = os.environ.get(f"DL_SERVER_{name}")
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise DLServerError(f"DL_SERVER_{name}={text[:40]}: not an integer") from None
    if value < 1:
        raise DLServerError(f"DL_SERVER_{name}={value}: must be at least 1")
    return value


# image width * height (16.7 megapixels: 4096 x 4096; the decoded float image is 12 bytes a pixel)
MAX_PIXELS = _setting("MAX_PIXELS", 1 << 24)
# JPEG scans (each may decode every block again; libjpeg's progressive files have about 10)
MAX_JPEG_SCANS = _setting("MAX_JPEG_SCANS", 256)
# float32 network buffers without a weights file; with one, 4 bytes more per byte of it
MAX_BUFFER_BYTES = _setting("MAX_BUFFER_BYTES", 768 << 20)
# layers of a cfg and sources of one [route]
MAX_LAYERS = _setting("MAX_LAYERS", 4096)
MAX_ROUTE_SOURCES = _setting("MAX_ROUTE_SOURCES", 1024)
# anchors of a [yolo] layer (num=)
MAX_ANCHORS = _setting("MAX_ANCHORS", 1 << 16)
# elements of one ONNX tensor (in a file or computed) and multiply-adds of one ONNX node
MAX_TENSOR_ELEMENTS = _setting("MAX_TENSOR_ELEMENTS", 1 << 26)
MAX_NODE_WORK = _setting("MAX_NODE_WORK", 1 << 34)
# detect: boxes with a class over the threshold before non-maximum suppression, and
# (box, class) labels after it (each printed and drawn)
MAX_BOXES = _setting("MAX_BOXES", 1024)
# multiply-adds a run asks of a network (work.py): LeNet trained for 10000 batches of 100 asks
# 1.75e12, YOLOv3 at 608 detecting one image 7e10
MAX_WORK = _setting("MAX_WORK", 1 << 43)
# bytes of one input file (YOLOv3's weights are 248 MB; reading holds it twice for a moment)
MAX_FILE_BYTES = _setting("MAX_FILE_BYTES", 512 << 20)
# pixels the images of one run may decode in all (the PNG and JPEG decoders; a list of the same
# 16-megapixel bomb 200 times is a few KB): 32 photos of 16 megapixels, 1700 of 640 x 480
MAX_DECODED_PIXELS = _setting("MAX_DECODED_PIXELS", 1 << 29)
# bytes of one text file: cfg, data file, list, args.cfg (a list of a million paths is ~50 MB)
MAX_TEXT_BYTES = _setting("MAX_TEXT_BYTES", 64 << 20)
DEFAULTS = {
    "MAX_PIXELS": 1 << 24,
    "MAX_JPEG_SCANS": 256,
    "MAX_BUFFER_BYTES": 768 << 20,
    "MAX_LAYERS": 4096,
    "MAX_ROUTE_SOURCES": 1024,
    "MAX_ANCHORS": 1 << 16,
    "MAX_TENSOR_ELEMENTS": 1 << 26,
    "MAX_NODE_WORK": 1 << 34,
    "MAX_BOXES": 1024,
    "MAX_WORK": 1 << 43,
    "MAX_FILE_BYTES": 512 << 20,
    "MAX_TEXT_BYTES": 64 << 20,
    "MAX_DECODED_PIXELS": 1 << 29,
}
decoded_pixels = 0  # this run's, against MAX_DECODED_PIXELS
# False once training has decoded its images once: its batches decode them again, as many
# times as max_batches asks (bounded by the work estimate, work.py), not counted
charging_pixels = True


def refresh() -> None:
    """Read the DL_SERVER_* settings of this run. The component's modules are imported when
    componentize-py builds it (their import-time environment is the build's), so each run
    reads its own environment here; modules use them as `limits.MAX_...`."""
    for name, default in DEFAULTS.items():
        globals()[name] = _setting(name, default)
    globals()["decoded_pixels"] = 0
    globals()["charging_pixels"] = True


class Limit(NamedTuple):
    """A limit's value in this run and the environment variable that raises it (error lines name it)."""

    value: int
    variable: str


def file_bytes() -> Limit:
    """MAX_FILE_BYTES: the size of one input file (this run's value: read when called)."""
    return Limit(MAX_FILE_BYTES, "DL_SERVER_MAX_FILE_BYTES")


def text_bytes() -> Limit:
    """MAX_TEXT_BYTES: the size of one text file (this run's value: read when called)."""
    return Limit(MAX_TEXT_BYTES, "DL_SERVER_MAX_TEXT_BYTES")


class DecodeBudgetError(DLServerError):
    """This run's images together are over MAX_DECODED_PIXELS."""


def charge_pixels(width: int, height: int) -> None:
    """Count an image about to be decoded against this run's MAX_DECODED_PIXELS."""
    global decoded_pixels
    if not charging_pixels:
        return
    decoded_pixels += width * height
    if decoded_pixels > MAX_DECODED_PIXELS:
        raise DecodeBudgetError(
            f"the images of this run decode to {decoded_pixels} pixels with this one ({width} x {height}),"
            f" over the limit {MAX_DECODED_PIXELS} (DL_SERVER_MAX_DECODED_PIXELS raises it)"
        )


INT_MIN, INT_MAX = -(2**31), 2**31 - 1


def c_int(text: str) -> int | None:
    """The value of a decimal integer (sign and digits only) if it fits a C int, else None;
    the length is checked first, so thousands of digits cost nothing."""
    digits = text.lstrip("+-").lstrip("0")
    if len(digits) > 10:
        return None
    value = int(text)
    return value if INT_MIN <= value <= INT_MAX else None


def check(where: str, what: str, value: int, limit: int, name: str) -> None:
    """Refuse `value` over `limit`, naming both and the setting that raises it."""
    if value > limit:
        raise DLServerError(f"{where}: {what} {value} is over the limit {limit} (DL_SERVER_{name} raises it)")


def trunc_int(x: float) -> int:
    """C's `(int)x` as wasm's saturating truncation (i32.trunc_sat_f64_s) does it: toward zero,
    clamped to int32, NaN to 0 (Darknet: undefined), so values gone to infinity still print."""
    if x != x:
        return 0
    if x >= 2**31:
        return INT_MAX
    if x <= -(2**31):
        return INT_MIN
    return int(x)
