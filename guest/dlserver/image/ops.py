"""Image operations of Darknet's image.c on planar float32 CHW images."""

from array import array
from dataclasses import dataclass

from .. import kernels
from ..buffers import filled, zeros
from ..rng import f32


@dataclass
class Image:
    """w x h pixels of c planes, data[(ch*h + y)*w + x], values in [0, 1]."""

    w: int
    h: int
    c: int
    data: array


def resize_image(im: Image, w: int, h: int) -> Image:
    """Darknet's separable bilinear resize (docs/darknet-contract.md §7.2); same size returns the
    image itself.
    The loops run in `kernels.resize_image` (tests/reference/image.py: the same in Python)."""
    if im.w == w and im.h == h:
        return im
    resized = zeros(w * h * im.c)
    kernels.resize_image(im.data, im.w, im.h, im.c, resized, w, h, zeros(w * im.h * im.c))
    return Image(w, h, im.c, resized)


def letterbox_size(im_w: int, im_h: int, w: int, h: int) -> tuple[int, int]:
    """The size letterbox_image (and correct_yolo_boxes) scale an im_w x im_h image to."""
    if f32(w / im_w) < f32(h / im_h):
        return w, (im_h * w) // im_w
    return (im_w * h) // im_h, h


def letterbox_image(im: Image, w: int, h: int) -> Image:
    """Resize keeping the aspect ratio and paste centred on a 0.5-grey w x h canvas."""
    new_w, new_h = letterbox_size(im.w, im.h, w, h)
    if new_w == w and new_h == h:
        return resize_image(im, w, h)
    resized = resize_image(im, new_w, new_h)
    canvas = filled(w * h * im.c, 0.5)
    kernels.image_paste(
        resized.data, new_w, new_h, im.c, canvas, w, h, (w - new_w) // 2, (h - new_h) // 2, False
    )
    return Image(w, h, im.c, canvas)


def center_crop_image(im: Image, w: int, h: int) -> Image:
    """Crop the centred m x m square (m = min(w, h) of the image), then resize to w x h."""
    m = min(im.w, im.h)
    dx, dy = (im.w - m) // 2, (im.h - m) // 2
    if m == im.w and m == im.h:
        return resize_image(im, w, h)
    cropped = zeros(m * m * im.c)
    for k in range(im.c):
        for y in range(m):
            src = (k * im.h + y + dy) * im.w + dx
            dst = (k * m + y) * m
            cropped[dst : dst + m] = im.data[src : src + m]
    return resize_image(Image(m, m, im.c, cropped), w, h)


def pixels_to_image(width: int, height: int, comps: int, pixels) -> Image:
    """Interleaved 8-bit pixels -> a 3-plane image of byte/255 (stb req_comp = 3)."""
    data = zeros(3 * width * height)
    kernels.pixels_to_chw(pixels, width, height, comps, data)
    return Image(width, height, 3, data)
