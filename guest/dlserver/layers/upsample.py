"""Upsample layer (Darknet upsample_layer.c), stride s, scale (default 1).

s > 0:  out[c][y][x] = scale * in[c][y/s][x/s]          (nearest neighbour, s times larger)
        backward: in_delta[c][y/s][x/s] += scale * delta[c][y][x]
s < 0:  "downsample" by |s|: out[c][y/|s|][x/|s|] = sum of scale * in over each |s| x |s| block
        backward: in_delta[c][y][x] = scale * delta[c][y/|s|][x/|s|]
"""

from .. import kernels
from ..errors import DLServerError
from ..rng import f32
from .base import Layer


class UpsampleLayer(Layer):
    kind = "upsample"

    def __init__(self, options, batch, h, w, c, inputs):
        super().__init__(batch, h, w, c, inputs)
        where = f"{options.path}:{options.line}"
        stride = options.find_int("stride", 2)
        self.scale = f32(options.find_float("scale", 1, quiet=True))
        if h < 1 or w < 1 or c < 1:
            raise DLServerError(f"{where}: layer before upsample layer must output an image")
        if stride == 0:
            raise DLServerError(f"{where}: upsample stride=0: must not be 0")
        self.reverse = stride < 0
        self.stride = abs(stride)
        if self.reverse:
            if h % self.stride or w % self.stride:
                raise DLServerError(
                    f"{where}: downsample stride={stride}: the input {w}x{h} is not a multiple"
                    f" of {self.stride}"
                )
            self.out_w, self.out_h = w // self.stride, h // self.stride
        else:
            self.out_w, self.out_h = w * self.stride, h * self.stride
        self.out_c = c
        self.outputs = self.out_w * self.out_h * c
        self.inputs = w * h * c
        self.allocate()

    # Both directions are one kernel between the small image (h x w, or out_h x out_w when
    # reverse) and the big one: to_big writes big = scale * small repeated stride x stride;
    # else small += scale * the sum of each stride x stride block of big.
    def _upsample(self, small, big, to_big: bool) -> None:
        h, w = (self.out_h, self.out_w) if self.reverse else (self.h, self.w)
        kernels.upsample(small, self.batch, self.c, h, w, self.stride, self.scale, big, to_big)

    def forward(self, net, input_buf, train):
        if self.reverse:
            kernels.fill(len(self.output), 0.0, self.output)
            self._upsample(self.output, input_buf, False)
        else:
            self._upsample(input_buf, self.output, True)

    def backward(self, net, input_buf, prev_delta):
        if prev_delta is None:
            return
        if self.reverse:
            self._upsample(self.delta, prev_delta, True)
        else:
            self._upsample(prev_delta, self.delta, False)

    def describe(self):
        name = "downsample" if self.reverse else "upsample  "
        return (
            f"{name}         {self.stride:2d}x  {self.w:4d} x{self.h:4d} x{self.c:4d}   ->  "
            f"{self.out_w:4d} x{self.out_h:4d} x{self.out_c:4d}"
        )
