"""Crop layer (Darknet crop_layer.c): a crop_width x crop_height window of the input image,
mapped to [-1, 1] (vgg-16, strided).

out[b][c][i][j] = in[b][c][i + dh][col] * 2 - 1 (noadjust=1: * 1 + 0),
col = j + dw, or w - dw - j - 1 when flipped.
Each forward pass draws, with Darknet's rand() (musl's, our rng): flip = flip && rand() % 2,
dh = rand() % (h - crop_height + 1), dw = rand() % (w - crop_width + 1), in that order; at
inference the draws are made (when the network has a random state) but the window is the
centre one, (h - crop_height)/2, (w - crop_width)/2, unflipped.
angle, saturation, exposure, shift: read; Darknet's CPU crop does not apply them either.
backward: none (Darknet's crop layer has no delta: the layers before it get no gradient).
"""

from .. import kernels
from ..errors import DLServerError
from .base import Layer


class CropLayer(Layer):
    kind = "crop"

    def __init__(self, options, batch, h, w, c, inputs):
        super().__init__(batch, h, w, c, inputs)
        where = f"{options.path}:{options.line}"
        crop_height = options.find_int("crop_height", 1)
        crop_width = options.find_int("crop_width", 1)
        self.flip = options.find_int("flip", 0)
        self.angle = options.find_float("angle", 0)
        self.saturation = options.find_float("saturation", 1)
        self.exposure = options.find_float("exposure", 1)
        if not (h and w and c):
            raise DLServerError(f"{where}: layer before crop layer must output an image")
        self.noadjust = options.find_int("noadjust", 0, quiet=True)
        if crop_height < 1 or crop_width < 1 or crop_height > h or crop_width > w:
            raise DLServerError(
                f"{where}: crop {crop_width} x {crop_height} (crop_width x crop_height) does not fit in the"
                f" {w} x {h} input"
            )
        self.out_w, self.out_h, self.out_c = crop_width, crop_height, c
        self.inputs = w * h * c
        self.outputs = crop_width * crop_height * c
        self.allocate()

    def parse_late_options(self, options):
        """Darknet's parse_crop reads shift after make_crop_layer printed its line."""
        self.shift = options.find_float("shift", 0)

    def prepare_training(self) -> None:
        """No delta (Darknet's crop layer has none)."""

    def forward(self, net, input_buf, train):
        rng = getattr(net, "rng", None)
        flip, dh, dw = 0, 0, 0
        if rng is not None:
            flip = 1 if self.flip and rng.rand() % 2 else 0
            dh = rng.rand() % (self.h - self.out_h + 1)
            dw = rng.rand() % (self.w - self.out_w + 1)
        if not train:
            flip = 0
            dh = (self.h - self.out_h) // 2
            dw = (self.w - self.out_w) // 2
        scale, trans = (1.0, 0.0) if self.noadjust else (2.0, -1.0)
        kernels.crop(
            input_buf,
            self.batch,
            self.c,
            self.h,
            self.w,
            self.out_h,
            self.out_w,
            dh,
            dw,
            bool(flip),
            scale,
            trans,
            self.output,
        )

    def backward(self, net, input_buf, prev_delta):
        """Nothing: Darknet's backward_crop_layer is empty."""

    def describe(self):
        return f"Crop Layer: {self.h} x {self.w} -> {self.out_h} x {self.out_w} x {self.c} image"
