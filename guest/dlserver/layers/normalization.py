"""Local response normalisation (Darknet normalization_layer.c), sections [lrn] and
[normalization], across channels:

alpha = .0001, beta = .75, kappa = 1, size = 5 (odd, at least 1, size/2 <= channels)
forward:  norms[k] = kappa + alpha * sum of in[j]^2 over Darknet's window of channels j around k
          (a running sum: norms[0] covers channels 0 .. size/2 - 1, norms[k] for k >= 1 covers
          k - (size-1)/2 .. k + size/2, clipped to the image; see normalize.c)
          out = norms^-beta * in
backward: prev_delta = norms^-beta * delta: Darknet's own "approximate" backward (it drops the
          terms of d norms / d in, and it overwrites prev_delta instead of adding), as Darknet.
The output keeps the input's w x h x c. Nothing to update.
"""

from .. import kernels
from ..buffers import zeros
from ..errors import DLServerError
from ..rng import f32
from .base import Layer


class NormalizationLayer(Layer):
    kind = "normalization"

    def __init__(self, options, batch, h, w, c, inputs):
        super().__init__(batch, h, w, c, inputs)
        self.alpha = f32(options.find_float("alpha", 0.0001))
        self.beta = f32(options.find_float("beta", 0.75))
        self.kappa = f32(options.find_float("kappa", 1))
        self.size = options.find_int("size", 5)
        where = f"{options.path}:{options.line}"
        if h < 1 or w < 1 or c < 1 or inputs != h * w * c:
            raise DLServerError(f"{where}: layer before normalization layer must output an image (w x h x c)")
        if self.size < 1 or self.size % 2 == 0:
            raise DLServerError(f"{where}: normalization size={self.size}: must be odd and at least 1")
        if self.size // 2 > c:
            raise DLServerError(
                f"{where}: normalization size={self.size}: the window is wider than the {c} channels"
                f" (size/2 must be at most {c})"
            )
        self.outputs = inputs
        self.out_h, self.out_w, self.out_c = h, w, c
        self.allocate()

    def allocate(self):
        super().allocate()
        self.squared = zeros(self.batch * self.outputs)
        self.norms = zeros(self.batch * self.outputs)

    def forward(self, net, input_buf, train):
        kernels.lrn_forward(
            input_buf, self.batch, self.c, self.h * self.w, self.size, self.alpha, self.beta, self.kappa,
            self.squared, self.norms, self.output,
        )  # fmt: skip

    def backward(self, net, input_buf, prev_delta):
        if prev_delta is not None:
            kernels.lrn_backward(self.norms, self.delta, self.batch * self.outputs, self.beta, prev_delta)

    def describe(self):
        return f"Local Response Normalization Layer: {self.w} x {self.h} x {self.c} image, {self.size} size"
