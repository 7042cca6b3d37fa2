"""Boxes and labels drawn on a detection image, and saving it (Darknet image.c,
docs/darknet-contract.md §7.4).

get_color(c, x, max):  ratio = f32(x/max)*5, i = floor, j = ceil, ratio -= i,
                       (1-ratio)*colors[i][c] + ratio*colors[j][c]   (all float32)
draw_box_width:        `width` nested 1-pixel rectangles, each inset by one more pixel
get_label(text, size): glyphs of font size min(size/10, 7) tiled left to right, each next
                       one dx = -s - 1 + (s+1)/2 pixels after the previous width (s = font
                       size); overlapping pixels multiply; then a white border of
                       (int)(h*.25) pixels all round
draw_label:            at row r - label.h when that is >= 0 (above the box), else at r;
                       pixel = rgb[k] * label
save_image:            (unsigned char)(255*v), interleaved, stb_image_write JPEG quality 80
"""

import math

from .. import kernels
from ..buffers import filled
from ..files import write_file_atomic
from ..rng import f32
from .font import glyph
from .jpeg import encode_jpeg
from .ops import Image

COLORS = ((1, 0, 1), (0, 0, 1), (0, 1, 1), (0, 1, 0), (1, 1, 0), (1, 0, 0))
MAX_FONT_SIZE = 7


def get_color(c: int, x: int, max_value: int) -> float:
    ratio = f32(f32(x / max_value) * 5)
    i = math.floor(ratio)
    j = math.ceil(ratio)
    ratio = f32(ratio - i)
    return f32(f32(f32(1 - ratio) * COLORS[i][c]) + f32(ratio * COLORS[j][c]))


def draw_box_width(
    im: Image, x1: int, y1: int, x2: int, y2: int, width: int, r: float, g: float, b: float
) -> None:
    kernels.draw_box_width(im.data, im.w, im.h, x1, y1, x2, y2, width, r, g, b)


def _tile(label: Image | None, piece: Image, dx: int) -> Image:
    """tile_images: `piece` placed dx pixels after `label`'s right edge on a white canvas,
    overlapping pixels multiplied."""
    if label is None or label.w == 0:
        return Image(piece.w, piece.h, 1, piece.data[:])
    w = label.w + piece.w + dx
    h = max(label.h, piece.h)
    canvas = filled(w * h, 1.0)
    kernels.image_paste(label.data, label.w, label.h, 1, canvas, w, h, 0, 0, False)
    kernels.image_paste(piece.data, piece.w, piece.h, 1, canvas, w, h, label.w + dx, 0, True)
    return Image(w, h, 1, canvas)


def _border(label: Image, border: int) -> Image:
    """border_image: `border` white pixels added on every side."""
    w, h = label.w + 2 * border, label.h + 2 * border
    canvas = filled(w * h, 1.0)
    kernels.image_paste(label.data, label.w, label.h, 1, canvas, w, h, border, border, False)
    return Image(w, h, 1, canvas)


def get_label(text: str, size: int) -> Image:
    """The label image of `text` (one plane, 1 = white) for Darknet's size (int)(im.h*.03)."""
    size = min(size // 10, MAX_FONT_SIZE)
    label = None
    for char in text:
        w, h, pixels = glyph(size, char)
        label = _tile(label, Image(w, h, 1, pixels), -size - 1 + (size + 1) // 2)
    if label is None:
        label = Image(0, 0, 1, filled(0, 1.0))
    return _border(label, int(label.h * 0.25))


def draw_label(im: Image, row: int, col: int, label: Image, rgb) -> None:
    kernels.draw_label(im.data, im.w, im.h, label.data, label.w, label.h, row, col, rgb[0], rgb[1], rgb[2])


def image_bytes(im: Image) -> bytes:
    """Interleaved 8-bit pixels of a float image, (unsigned char)(255*v) (Darknet save_image)."""
    out = bytearray(im.w * im.h * im.c)
    kernels.chw_to_pixels(im.data, im.w, im.h, im.c, out)
    return bytes(out)


def save_image(im: Image, name: str, quality: int = 80) -> str:
    """Write `name`.jpg (stb_image_write's JPEG at `quality`); returns the file name."""
    path = f"{name}.jpg"
    write_file_atomic(path, encode_jpeg(im.w, im.h, image_bytes(im), quality), "image")
    return path
