"""Cost layer (Darknet cost_layer.c), type sse: only active with a truth (training)."""

from .. import kernels
from ..buffers import zeros
from ..errors import DLServerError
from .base import Layer

COST_TYPES = ("seg", "sse", "masked", "smooth", "L1", "wgan")


class CostLayer(Layer):
    kind = "cost"
    is_cost = True

    def __init__(self, options, batch, h, w, c, inputs):
        super().__init__(batch, h, w, c, inputs)
        self.cost_type = options.find_str("type", "sse")
        if self.cost_type != "sse":
            known = "not supported yet" if self.cost_type in COST_TYPES else "unknown"
            raise DLServerError(f"{options.path}:{options.line}: cost type '{self.cost_type}' is {known}")
        self.scale = options.find_float("scale", 1, quiet=True)
        options.find_float("ratio", 0, quiet=True)  # ratio, noobj, thresh: read, not applied
        options.find_float("noobj", 1, quiet=True)
        options.find_float("thresh", 0, quiet=True)
        self.outputs = inputs
        self.out_h, self.out_w, self.out_c = h, w, c
        self.allocate()

    has_cost = True

    def forward(self, net, input_buf, train):
        self.output = input_buf
        self.cost = 0.0
        if train and net.truth is not None:
            # delta = t - x; cost = sum (t - x)^2
            self.cost = kernels.sse_cost(input_buf, net.truth, self.delta, self.batch * self.inputs)

    def backward(self, net, input_buf, prev_delta):
        if prev_delta is not None:
            kernels.axpy(self.batch * self.inputs, self.scale, self.delta, prev_delta)

    def allocate(self):
        self.output = None
        if self.delta is not None:
            self.delta = zeros(self.batch * self.inputs)

    def describe(self):
        return f"cost                                           {self.inputs:4d}"
