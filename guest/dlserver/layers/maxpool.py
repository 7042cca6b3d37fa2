"""Max-pooling layer (Darknet maxpool_layer.c).

out = (in + padding - size)/stride + 1 with padding = size - 1 by default; windows start
at -(padding/2); positions outside the image count as -inf; argmax kept for backward.
"""

from .. import kernels
from ..buffers import int_zeros
from ..errors import DLServerError
from .base import Layer, window


class MaxpoolLayer(Layer):
    kind = "maxpool"

    def __init__(self, options, batch, h, w, c, inputs):
        super().__init__(batch, h, w, c, inputs)
        self.stride = options.find_int("stride", 1)
        self.size = options.find_int("size", self.stride)
        self.pad = options.find_int("padding", self.size - 1, quiet=True)
        where = f"{options.path}:{options.line}"
        if self.size < 1 or self.stride < 1 or self.pad < 0:
            raise DLServerError(f"{where}: maxpool needs size, stride >= 1 and padding >= 0")
        if h < 1 or w < 1 or c < 1:
            raise DLServerError(f"{where}: layer before maxpool layer must output an image")
        # C's int division (towards 0), as make_maxpool_layer: a window larger than the padded
        # input by less than a stride still gives one output
        self.out_w = int((w + self.pad - self.size) / self.stride) + 1
        self.out_h = int((h + self.pad - self.size) / self.stride) + 1
        if self.out_h < 1 or self.out_w < 1:
            raise DLServerError(
                f"{where}: maxpool window {self.size}x{self.size} does not fit a {w}x{h} input"
            )
        self.out_c = c
        self.outputs = self.out_h * self.out_w * c
        self.allocate()

    def allocate(self):
        super().allocate()
        self.indexes = int_zeros(self.batch * self.outputs)

    def forward(self, net, input_buf, train):
        if self.size == 2 and self.stride == 2 and self.pad == 1 and self.h % 2 == 0 and self.w % 2 == 0:
            # every window inside the image (LeNet's): the same results without bounds checks
            kernels.maxpool_forward_2x2(
                input_buf, self.batch * self.c, self.h, self.w, self.output, self.indexes if train else None
            )
            return
        kernels.maxpool_forward(
            input_buf,
            *window(self),
            self.output,
            self.indexes,
        )

    def backward(self, net, input_buf, prev_delta):
        """prev_delta[argmax] += delta."""
        if prev_delta is not None:
            kernels.maxpool_backward(
                self.delta, self.indexes, len(self.delta), prev_delta, self.batch * self.inputs
            )

    def multiply_adds(self) -> int:
        """size*size comparisons per output."""
        return self.outputs * self.size * self.size

    def describe(self):
        return (
            f"max          {self.size} x {self.size} / {self.stride}  "
            f"{self.w:4d} x{self.h:4d} x{self.c:4d}   ->  {self.out_w:4d} x{self.out_h:4d} x{self.out_c:4d}"
        )
