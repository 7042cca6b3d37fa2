"""Reorg layer (Darknet reorg_layer.c, blas.c reorg_cpu and flatten): moves values, computes nothing.

stride = s (default 1), reverse = 0, flatten = 0, extra = 0:
  default:  output w/s x h/s x c*s^2; out[in_index] = x[o(in_index)] (reorg_cpu with forward=0 over
            the input's w, h, c; o as in guest/kernels/region.c). YOLOv2's "passthrough" layer.
  reverse:  output w*s x h*s x c/s^2; out[o(in_index)] = x[in_index] (reorg_cpu, forward=1).
  flatten:  the same output size as the plain/reverse case; planes <-> interleaved channels
            (blas.c flatten; forward 1, or 0 with reverse).
  extra=k:  out = the input followed by k values that stay 0 (outputs = inputs + k; out_w,
            out_h, out_c are 0: the next layer sees no image). Used by go.cfg.
backward: the inverse move into prev_delta (Darknet assigns, except with extra, where it copies).
Errors (Darknet would read or write outside its buffers): stride < 1; without extra, s must
divide w and h (not reverse) and s^2 must divide c.
"""

from .. import kernels
from ..errors import DLServerError
from .base import Layer


class ReorgLayer(Layer):
    kind = "reorg"

    def __init__(self, options, batch, h, w, c, inputs):
        super().__init__(batch, h, w, c, inputs)
        where = f"{options.path}:{options.line}"
        self.stride = s = options.find_int("stride", 1)
        self.reverse = options.find_int("reverse", 0, quiet=True)
        self.flatten = options.find_int("flatten", 0, quiet=True)
        self.extra = options.find_int("extra", 0, quiet=True)
        if not (h and w and c):
            raise DLServerError(f"{where}: layer before reorg layer must output an image")
        if s < 1:
            raise DLServerError(f"{where}: reorg stride={s} must be at least 1")
        if self.extra < 0:
            raise DLServerError(f"{where}: reorg extra={self.extra} must not be negative")
        if self.extra and (self.reverse or self.flatten):
            # Darknet's forward copies, its backward would reorder: they disagree
            raise DLServerError(f"{where}: reorg extra= cannot be combined with reverse= or flatten=")
        self.inputs = h * w * c
        if self.extra:
            self.out_w = self.out_h = self.out_c = 0
            self.outputs = self.inputs + self.extra
        else:
            if c % (s * s):
                raise DLServerError(
                    f"{where}: reorg stride={s}: stride^2 = {s * s} does not divide the {c} channels"
                )
            if self.reverse:
                self.out_w, self.out_h, self.out_c = w * s, h * s, c // (s * s)
            else:
                if w % s or h % s:
                    raise DLServerError(
                        f"{where}: reorg stride={s} does not divide the input's width and height ({w} x {h})"
                    )
                self.out_w, self.out_h, self.out_c = w // s, h // s, c * s * s
            self.outputs = self.out_w * self.out_h * self.out_c
        self.allocate()

    def forward(self, net, input_buf, train):
        if self.flatten:
            kernels.flatten(input_buf, self.w * self.h, self.c, self.batch, not self.reverse, self.output)
        elif self.extra:
            out = memoryview(self.output)
            for b in range(self.batch):
                start = b * self.outputs
                out[start : start + self.inputs] = memoryview(input_buf)[
                    b * self.inputs : (b + 1) * self.inputs
                ]
        else:
            kernels.reorg(
                input_buf, self.w, self.h, self.c, self.batch, self.stride, bool(self.reverse), self.output
            )

    def backward(self, net, input_buf, prev_delta):
        if prev_delta is None:
            return
        if self.flatten:
            kernels.flatten(self.delta, self.w * self.h, self.c, self.batch, bool(self.reverse), prev_delta)
        elif self.reverse:
            kernels.reorg(self.delta, self.w, self.h, self.c, self.batch, self.stride, False, prev_delta)
        elif self.extra:
            out = memoryview(prev_delta)
            for b in range(self.batch):
                start = b * self.outputs
                out[b * self.inputs : (b + 1) * self.inputs] = memoryview(self.delta)[
                    start : start + self.inputs
                ]
        else:
            kernels.reorg(self.delta, self.w, self.h, self.c, self.batch, self.stride, True, prev_delta)

    def describe(self):
        if self.extra:
            return f"reorg              {self.inputs:4d}   ->  {self.outputs:4d}"
        return (
            f"reorg              /{self.stride:2d}  {self.w:4d} x{self.h:4d} x{self.c:4d}   ->  "
            f"{self.out_w:4d} x{self.out_h:4d} x{self.out_c:4d}"
        )
