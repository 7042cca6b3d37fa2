"""Dropout layer (Darknet dropout_layer.c): in place; at inference it does nothing.

training: r_i = rand_uniform(0, 1) (kept); x_i = 0 if r_i < p else x_i * f32(1/(1-p));
backward: delta_i = 0 if r_i < p else delta_i * f32(1/(1-p)).
"""

from .. import kernels
from ..buffers import zeros
from ..errors import DLServerError
from ..rng import f32
from .base import Layer


class DropoutLayer(Layer):
    kind = "dropout"

    def __init__(self, options, batch, h, w, c, inputs):
        super().__init__(batch, h, w, c, inputs)
        self.probability = options.find_float("probability", 0.5)
        if not 0.0 <= self.probability < 1.0:
            raise DLServerError(
                f"{options.path}:{options.line}: dropout probability={self.probability:g}: must be in [0, 1)"
            )
        self.scale = f32(1.0 / (1.0 - self.probability))
        self.outputs = inputs
        self.out_h, self.out_w, self.out_c = h, w, c
        self.rand = None

    def allocate(self):
        self.output = None  # in place: the previous layer's output and delta
        if self.rand is not None:
            self.rand = zeros(self.batch * self.inputs)

    def prepare_training(self) -> None:
        self.rand = zeros(self.batch * self.inputs)

    def link(self, prev) -> None:
        """In place: delta is the previous layer's (the output is set by forward)."""
        self.delta = prev.delta if prev is not None else None

    def clear_delta(self) -> None:
        """The previous layer's delta, which that layer clears."""

    def forward(self, net, input_buf, train):
        self.output = input_buf
        if train:
            net.rng.state = kernels.dropout_forward(
                input_buf, self.batch * self.inputs, self.probability, self.scale, self.rand, net.rng.state
            )

    def backward(self, net, input_buf, prev_delta):
        if prev_delta is not None:
            kernels.dropout_backward(
                prev_delta, self.batch * self.inputs, self.probability, self.scale, self.rand
            )

    def describe(self):
        return (
            f"dropout       p = {self.probability:.2f}               {self.inputs:4d}  ->  {self.outputs:4d}"
        )
