"""Image operations of Darknet's image.c on planar float32 CHW images."""
from dataclasses import dataclass
from array import array

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
    """Darknet's separable bilinear resize (spec §7.2); same size returns the image itself.
    The loops run in `_dlk.resize_image`; `resize_image_py` is the same math in Python."""
    if im.w == w and im.h == h:
        return im
    resized = zeros(w * h * im.c)
    kernels.resize_image(im.data, im.w, im.h, im.c, resized, w, h, zeros(w * im.h * im.c))
    return Image(w, h, im.c, resized)


def resize_image_py(im: Image, w: int, h: int) -> Image:
    """resize_image in pure Python (float32 step by step): the reference for the C kernel."""
    if im.w == w and im.h == h:
        return im
    part = zeros(w * im.h * im.c)
    w_scale = f32((im.w - 1) / (w - 1)) if w > 1 else 0.0
    h_scale = f32((im.h - 1) / (h - 1)) if h > 1 else 0.0
    src = im.data
    for k in range(im.c):
        for r in range(im.h):
            row = (k * im.h + r) * im.w
            out = (k * im.h + r) * w
            for col in range(w):
                if col == w - 1 or im.w == 1:
                    val = src[row + im.w - 1]
                else:
                    sx = f32(col * w_scale)
                    ix = int(sx)
                    dx = f32(sx - ix)
                    val = f32(f32(f32(1 - dx) * src[row + ix]) + f32(dx * src[row + ix + 1]))
                part[out + col] = val
    resized = zeros(w * h * im.c)
    for k in range(im.c):
        for r in range(h):
            sy = f32(r * h_scale)
            iy = int(sy)
            dy = f32(sy - iy)
            base = (k * im.h + iy) * w
            out = (k * h + r) * w
            for col in range(w):
                resized[out + col] = f32(f32(1 - dy) * part[base + col])
            if r == h - 1 or im.h == 1:
                continue
            nxt = base + w
            for col in range(w):
                resized[out + col] = f32(resized[out + col] + f32(dy * part[nxt + col]))
    return Image(w, h, im.c, resized)


def letterbox_size(im_w: int, im_h: int, w: int, h: int) -> tuple[int, int]:
    """The size letterbox_image (and correct_yolo_boxes) scale an im_w x im_h image to."""
    if f32(w / im_w) < f32(h / im_h):
        return w, (im_h * w) // im_w
    return (im_w * h) // im_h, h


def letterbox_image(im: Image, w: int, h: int, resize=None) -> Image:
    """Resize keeping the aspect ratio and paste centred on a 0.5-grey w x h canvas.
    `resize` replaces resize_image (tests pass resize_image_py)."""
    new_w, new_h = letterbox_size(im.w, im.h, w, h)
    resize = resize or resize_image
    if new_w == w and new_h == h:
        return resize(im, w, h)
    resized = resize(im, new_w, new_h)
    canvas = filled(w * h * im.c, 0.5)
    kernels.image_paste(resized.data, new_w, new_h, im.c, canvas, w, h, (w - new_w) // 2, (h - new_h) // 2, False)
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
            cropped[dst:dst + m] = im.data[src:src + m]
    return resize_image(Image(m, m, im.c, cropped), w, h)


def pixels_to_image(width: int, height: int, comps: int, pixels) -> Image:
    """Interleaved 8-bit pixels -> a 3-plane image of byte/255 (stb req_comp = 3)."""
    data = zeros(3 * width * height)
    kernels.pixels_to_chw(pixels, width, height, comps, data)
    return Image(width, height, 3, data)
