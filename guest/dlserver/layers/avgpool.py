"""Average-pooling layer (Darknet avgpool_layer.c): the global mean of each channel.

out[b][k] = (in[b][k][0] + ... + in[b][k][h*w-1]) / (h*w)   (sequential float sum, 1 x 1 x c)
backward:  prev_delta[b][k][i] += delta[b][k] / (h*w)
Nothing to update.
"""

from .. import kernels
from ..errors import DLServerError
from .base import Layer


class AvgpoolLayer(Layer):
    kind = "avgpool"

    def __init__(self, options, batch, h, w, c, inputs):
        super().__init__(batch, h, w, c, inputs)
        if h < 1 or w < 1 or c < 1:
            raise DLServerError(
                f"{options.path}:{options.line}: layer before avgpool layer must output an image"
            )
        self.out_w = self.out_h = 1
        self.out_c = c
        self.outputs = c
        self.inputs = h * w * c
        self.allocate()

    def forward(self, net, input_buf, train):
        kernels.avgpool_forward(input_buf, self.batch * self.c, self.h * self.w, self.output)

    def backward(self, net, input_buf, prev_delta):
        if prev_delta is not None:
            kernels.avgpool_backward(self.delta, self.batch * self.c, self.h * self.w, prev_delta)

    def describe(self):
        return f"avg                     {self.w:4d} x{self.h:4d} x{self.c:4d}   ->  {self.c:4d}"
