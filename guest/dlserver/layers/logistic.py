"""Logistic layer (Darknet logistic_layer.c): a logistic output with a cross-entropy cost.

forward:  out = 1/(1 + exp(-in)) (the logistic activation); with a truth t (training):
          err = -t log(out) - (1-t) log(1-out), delta = t - out, cost = sum of err
          (kernels.logistic_x_ent)
backward: prev_delta += delta
It is the network's output layer (not a [cost] layer) and it has a cost. Nothing to update.
"""

from .. import kernels
from ..buffers import zeros
from ..errors import DLServerError
from ..kernels import Activation
from .base import Layer


class LogisticLayer(Layer):
    kind = "logistic"
    has_cost = True

    def __init__(self, options, batch, h, w, c, inputs):
        super().__init__(batch, h, w, c, inputs)
        if inputs < 1:
            raise DLServerError(f"{options.path}:{options.line}: logistic layer has no inputs")
        self.outputs = inputs
        self.out_h, self.out_w, self.out_c = h, w, c
        self.cost = 0.0
        self.allocate()

    def allocate(self):
        super().allocate()
        self.loss = zeros(self.batch * self.outputs)

    def forward(self, net, input_buf, train):
        n = self.batch * self.outputs
        memoryview(self.output)[:n] = memoryview(input_buf)[:n]
        kernels.activate(self.output, n, Activation.LOGISTIC)
        self.cost = 0.0
        if train and net.truth is not None:
            self.cost = kernels.logistic_x_ent(self.output, net.truth, self.delta, self.loss, n)

    def backward(self, net, input_buf, prev_delta):
        if prev_delta is not None:
            kernels.axpy(self.batch * self.inputs, 1.0, self.delta, prev_delta)

    def describe(self):
        return f"logistic x entropy                             {self.inputs:4d}"
