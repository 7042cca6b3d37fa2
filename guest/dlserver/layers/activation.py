"""Activation layer (Darknet activation_layer.c): an activation on its own.

activation = linear (default; any of layers/base.py ACTIVATIONS)
forward:  out = act(in)                  (a copy of the input, activated in place)
backward: delta *= act'(out); prev_delta = delta   (Darknet copies: it overwrites, not adds)
The output keeps the input's w x h x c. Nothing to update.
"""

from .. import kernels
from ..errors import DLServerError
from .base import Layer, parse_activation


class ActivationLayer(Layer):
    kind = "activation"

    def __init__(self, options, batch, h, w, c, inputs):
        super().__init__(batch, h, w, c, inputs)
        self.activation = parse_activation(options, "linear")
        if inputs < 1:
            raise DLServerError(f"{options.path}:{options.line}: activation layer has no inputs")
        self.outputs = inputs
        self.out_h, self.out_w, self.out_c = h, w, c
        self.allocate()

    def forward(self, net, input_buf, train):
        n = self.batch * self.outputs
        memoryview(self.output)[:n] = memoryview(input_buf)[:n]
        kernels.activate(self.output, n, self.activation)

    def backward(self, net, input_buf, prev_delta):
        n = self.batch * self.outputs
        kernels.gradient(self.output, n, self.activation, self.delta)
        if prev_delta is not None:
            memoryview(prev_delta)[:n] = memoryview(self.delta)[:n]

    def describe(self):
        return f"Activation Layer: {self.inputs} inputs"
