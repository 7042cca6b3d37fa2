"""Fully connected layer (Darknet connected_layer.c).

forward:  out[b][o] = sum_k in[b][k] * W[o][k] + bias[o], then the activation
          (gemm NT: M = batch, N = outputs, K = inputs).
"""

import math

from .. import kernels
from ..buffers import zeros
from ..errors import DLServerError
from ..rng import f32
from .base import WeightedLayer, parse_activation


class ConnectedLayer(WeightedLayer):
    kind = "connected"

    def __init__(self, options, batch, h, w, c, inputs):
        super().__init__(batch, h, w, c, inputs)
        self.outputs = options.find_int("output", 1)
        self.activation = parse_activation(options)
        self.batch_normalize = options.find_int("batch_normalize", 0, quiet=True)
        where = f"{options.path}:{options.line}"
        if self.batch_normalize:
            raise DLServerError(f"{where}: connected batch_normalize=1 is not supported")
        if self.outputs < 1:
            raise DLServerError(f"{where}: connected output={self.outputs}: must be at least 1")
        if inputs < 1:
            raise DLServerError(f"{where}: connected layer has no inputs")
        self.h = self.w = 1
        self.c = inputs
        self.out_h = self.out_w = 1
        self.out_c = self.outputs
        self.weights = zeros(self.outputs * inputs)
        self.biases = zeros(self.outputs)
        self.allocate()

    def init_weights(self, rng) -> None:
        """W = f32(sqrt(2/inputs)) * rand_uniform(-1, 1), in index order."""
        scale = f32(math.sqrt(2.0 / self.inputs))
        rng.uniform_fill(self.weights, -1.0, 1.0, scale)

    def skip_init_weights(self, rng) -> None:
        rng.skip(len(self.weights))

    def parameter_arrays(self):
        return [self.biases, self.weights]

    def transpose_weights(self) -> None:
        values = self.weights.tolist()
        rows, cols = self.inputs, self.outputs
        self.weights[:] = type(self.weights)(
            "f", [values[r * cols + c] for c in range(cols) for r in range(rows)]
        )

    def forward(self, net, input_buf, train):
        out = self.output
        kernels.fill(len(out), 0.0, out)
        kernels.gemm(
            0,
            1,
            self.batch,
            self.outputs,
            self.inputs,
            1.0,
            input_buf,
            self.inputs,
            self.weights,
            self.inputs,
            1.0,
            out,
            self.outputs,
        )
        kernels.add_bias(out, self.biases, self.batch, self.outputs, 1)
        kernels.activate(out, len(out), self.activation)

    # backward: delta *= act'(output); bias_upd[o] += sum_b delta[b][o];
    #   W_upd[o][k] += sum_b delta[b][o] * in[b][k]      (Darknet: gemm TN)
    #   prev_delta[b][k] += sum_o delta[b][o] * W[o][k]  (Darknet: gemm NN)
    # in one call, term by term in gemm's order, skipping the zero deltas (dropout, relu).
    def backward(self, net, input_buf, prev_delta):
        kernels.connected_backward(
            input_buf,
            self.batch,
            self.inputs,
            self.output,
            self.delta,
            self.outputs,
            self.activation,
            self.weights,
            self.bias_updates,
            self.weight_updates,
            prev_delta,
        )

    def describe(self):
        return f"connected                            {self.inputs:4d}  ->  {self.outputs:4d}"
