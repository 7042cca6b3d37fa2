"""Softmax layer (Darknet softmax_layer.c), groups = 1:
y_i = f32(exp(x_i/T - max/T)) / sum_j f32(exp(x_j/T - max/T)), per batch row."""

from .. import kernels
from ..errors import DLServerError
from .base import Layer


class SoftmaxLayer(Layer):
    kind = "softmax"

    def __init__(self, options, batch, h, w, c, inputs):
        super().__init__(batch, h, w, c, inputs)
        self.groups = options.find_int("groups", 1, quiet=True)
        self.temperature = options.find_float("temperature", 1, quiet=True)
        self.spatial = options.find_int("spatial", 0, quiet=True)
        self.noloss = options.find_int("noloss", 0, quiet=True)
        where = f"{options.path}:{options.line}"
        if options.find_str("tree", None) is not None:
            raise DLServerError(f"{where}: softmax tree= is not supported")
        if self.groups != 1 or self.spatial:
            raise DLServerError(f"{where}: softmax supports only groups=1 and spatial=0")
        if self.temperature == 0:
            raise DLServerError(f"{where}: softmax temperature must not be 0")
        if inputs < 1:
            raise DLServerError(f"{where}: softmax layer has no inputs")
        self.outputs = inputs
        self.out_h, self.out_w, self.out_c = h, w, c
        self.allocate()

    has_cost = True

    def forward(self, net, input_buf, train):
        kernels.softmax(input_buf, self.batch, self.inputs, self.temperature, self.output)
        self.cost = 0.0
        if train and net.truth is not None and not self.noloss:
            # delta = t - y; cost = sum over t != 0 of -log(y)
            self.cost = kernels.softmax_cost(self.output, net.truth, self.delta, self.batch * self.inputs)

    def backward(self, net, input_buf, prev_delta):
        if prev_delta is not None:
            kernels.axpy(self.batch * self.inputs, 1.0, self.delta, prev_delta)

    def describe(self):
        return f"softmax                                        {self.inputs:4d}"
