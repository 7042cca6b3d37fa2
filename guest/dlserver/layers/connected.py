"""Fully connected layer (Darknet connected_layer.c).

forward:  out[b][o] = sum_k in[b][k] * W[o][k] + bias[o], then the activation
          (gemm NT: M = batch, N = outputs, K = inputs). With batch_normalize=1 the bias step
          is batch normalisation over the batch (layers/batchnorm.py, out_h = out_w = 1).
weights record: biases, weights, then (batch_normalize) scales, rolling_mean, rolling_variance.

Layers built inside other layers (the recurrent layers' sublayers) use ConnectedLayer.make
with explicit values instead of cfg options.
"""

import math

from .. import kernels
from ..buffers import zeros
from ..errors import DLServerError
from ..rng import f32
from .base import Activation, WeightedLayer, parse_activation
from .batchnorm import (
    add_batchnorm,
    allocate_batchnorm,
    backward_batchnorm,
    forward_batchnorm,
    prepare_batchnorm_training,
    update_scales,
)


class ConnectedLayer(WeightedLayer):
    kind = "connected"

    def __init__(self, options, batch, h, w, c, inputs):
        super().__init__(batch, h, w, c, inputs)
        outputs = options.find_int("output", 1)
        activation = parse_activation(options)
        batch_normalize = options.find_int("batch_normalize", 0, quiet=True)
        self._setup(outputs, activation, batch_normalize, f"{options.path}:{options.line}")

    @classmethod
    def make(
        cls,
        batch: int,
        inputs: int,
        outputs: int,
        activation: int = Activation.LINEAR,
        batch_normalize: int = 0,
        where: str = "connected",
    ) -> "ConnectedLayer":
        """A connected layer from explicit values (Darknet's make_connected_layer), for layers
        built inside other layers: activation is a kernels.Activation code, `where` starts
        error messages (e.g. "cfg:line"). Learning-rate scale 1, no stopbackward; weights zero
        until init_weights(rng) or a weights file fills them."""
        layer = cls.__new__(cls)
        WeightedLayer.__init__(layer, batch, 1, 1, inputs, inputs)
        layer._setup(outputs, activation, batch_normalize, where)
        layer.learning_rate_scale = 1.0
        layer.stopbackward = 0
        return layer

    def _setup(self, outputs: int, activation: int, batch_normalize: int, where: str) -> None:
        self.outputs = outputs
        self.activation = activation
        self.batch_normalize = batch_normalize
        if self.outputs < 1:
            raise DLServerError(f"{where}: connected output={self.outputs}: must be at least 1")
        if self.inputs < 1:
            raise DLServerError(f"{where}: connected layer has no inputs")
        inputs = self.inputs
        self.h = self.w = 1
        self.c = inputs
        self.out_h = self.out_w = 1
        self.out_c = self.outputs
        self.weights = zeros(self.outputs * inputs)
        self.biases = zeros(self.outputs)
        if self.batch_normalize:
            add_batchnorm(self, self.outputs)
        self.allocate()

    def allocate(self) -> None:
        super().allocate()
        if self.batch_normalize:
            allocate_batchnorm(self)

    def init_weights(self, rng) -> None:
        """W = f32(sqrt(2/inputs)) * rand_uniform(-1, 1), in index order."""
        scale = f32(math.sqrt(2.0 / self.inputs))
        rng.uniform_fill(self.weights, -1.0, 1.0, scale)

    def skip_init_weights(self, rng) -> None:
        rng.skip(len(self.weights))

    def parameter_arrays(self):
        if self.batch_normalize:
            return [self.biases, self.weights, self.scales, self.rolling_mean, self.rolling_variance]
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
        if self.batch_normalize:
            forward_batchnorm(self, train)
        else:
            kernels.add_bias(out, self.biases, self.batch, self.outputs, 1)
        kernels.activate(out, len(out), self.activation)

    def prepare_training(self) -> None:
        super().prepare_training()
        if self.batch_normalize:
            prepare_batchnorm_training(self)

    # backward: delta *= act'(output); bias_upd[o] += sum_b delta[b][o];
    #   W_upd[o][k] += sum_b delta[b][o] * in[b][k]      (Darknet: gemm TN)
    #   prev_delta[b][k] += sum_o delta[b][o] * W[o][k]  (Darknet: gemm NN)
    # in one call, term by term in gemm's order, skipping the zero deltas (dropout, relu).
    # Batch-normalised: the gradient and batchnorm backward (which does the biases) first.
    def backward(self, net, input_buf, prev_delta):
        activation, bias_updates = self.activation, self.bias_updates
        if self.batch_normalize:
            kernels.gradient(self.output, len(self.output), self.activation, self.delta)
            backward_batchnorm(self)
            activation, bias_updates = Activation.LINEAR, None
        kernels.connected_backward(
            input_buf,
            self.batch,
            self.inputs,
            self.output,
            self.delta,
            self.outputs,
            activation,
            self.weights,
            bias_updates,
            self.weight_updates,
            prev_delta,
        )

    def update(self, net, rate: float) -> None:
        """WeightedLayer's SGD step, and the scales of batch normalisation with the biases' step."""
        super().update(net, rate)
        if self.batch_normalize:
            lr = f32(rate * self.learning_rate_scale)
            update_scales(self, f32(lr / (net.batch * net.subdivisions)), net.momentum)

    def multiply_adds(self) -> int:
        return self.inputs * self.outputs

    def describe(self):
        return f"connected                            {self.inputs:4d}  ->  {self.outputs:4d}"
