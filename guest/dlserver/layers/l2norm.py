"""L2-normalisation layer (Darknet l2norm_layer.c, blas.c l2normalize_cpu).

forward:  per image and pixel i, out[f][i] = in[f][i] / sqrt(sum over channels f' of in[f'][i]^2)
          (a sequential float sum; an all-zero pixel gives NaN, as Darknet)
backward: prev_delta += delta -- Darknet's backward: the derivative of the normalisation is
          commented out in Darknet (backward_l2norm_layer), and we do what it does.
The output keeps the input's w x h x c. Nothing to update.
"""

from .. import kernels
from ..errors import DLServerError
from .base import Layer


class L2normLayer(Layer):
    kind = "l2norm"

    def __init__(self, options, batch, h, w, c, inputs):
        super().__init__(batch, h, w, c, inputs)
        if h < 1 or w < 1 or c < 1 or inputs != h * w * c:
            raise DLServerError(
                f"{options.path}:{options.line}: layer before l2norm layer must output an image (w x h x c)"
            )
        self.outputs = inputs
        self.out_h, self.out_w, self.out_c = h, w, c
        self.allocate()

    def forward(self, net, input_buf, train):
        kernels.l2norm_forward(input_buf, self.batch, self.c, self.h * self.w, self.output)

    def backward(self, net, input_buf, prev_delta):
        if prev_delta is not None:
            kernels.axpy(self.batch * self.inputs, 1.0, self.delta, prev_delta)

    def describe(self):
        return f"l2norm                                         {self.inputs:4d}"
