"""Dropout layer (Darknet dropout_layer.c): in place; at inference it does nothing.

Training (to come): r = rand_uniform(0, 1) per value; x = 0 if r < p else x * f32(1/(1-p)).
"""
from ..errors import DLServerError
from ..rng import f32
from .base import Layer


class DropoutLayer(Layer):
    kind = "dropout"

    def __init__(self, options, batch, h, w, c, inputs):
        super().__init__(batch, h, w, c, inputs)
        self.probability = options.find_float("probability", .5)
        if not 0.0 <= self.probability < 1.0:
            raise DLServerError(f"{options.path}:{options.line}: dropout probability={self.probability:g}:"
                                " must be in [0, 1)")
        self.scale = f32(1.0 / (1.0 - self.probability))
        self.outputs = inputs
        self.out_h, self.out_w, self.out_c = h, w, c

    def allocate(self):
        self.output = None  # in place: the previous layer's output

    def forward(self, net, input_buf, train):
        self.output = input_buf
        if train:
            raise DLServerError("dropout training is not implemented yet")

    def describe(self):
        return f"dropout       p = {self.probability:.2f}               {self.inputs:4d}  ->  {self.outputs:4d}"
