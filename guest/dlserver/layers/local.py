"""Locally connected layer (Darknet local_layer.c): a convolution with its own filters at every
output location (YOLOv1's [local]).

filters = n, size = k, stride = s, pad = p (pad is in pixels, as given: Darknet's local layer
does not take size/2), activation (default logistic).
out_h = (h - (p ? 1 : k))/s + 1 (likewise out_w), L = out_h*out_w locations, K = k*k*c.
Weights: L blocks of n x K (location-major: W[l][f][k]), biases: one per output value (n*L).
forward:  out[f][l] = bias[f][l] + sum_k W[l][f][k] * im2col(in)[k][l], then the activation.
backward: delta *= act'(out); bias_upd += delta; W_upd[l][f][k] += delta[f][l] * col[k][l];
          prev_delta += col2im(sum_f W[l][f][k] * delta[f][l]).
update:   Darknet's SGD step (as connected and convolutional).
Weights file record: biases (n*L), then weights (L*n*K).
Random init (Darknet's own quirk kept): only the first n*K weights get
f32(sqrt(2/(k*k*c))) * rand_uniform(-1, 1); the others stay 0.
Darknet's im2col pads p pixels, so its output has (h + 2p - k)/s + 1 rows: we refuse a cfg
where that differs from out_h (Darknet would read past its workspace).
"""

import math

from .. import kernels
from ..buffers import reserve_scratch, zeros
from ..errors import DLServerError
from ..rng import f32
from .base import WeightedLayer, parse_activation, window

MAX_WEIGHTS = 1 << 28  # floats (1 GiB): YOLOv1's local layer has 115.6 M


class LocalLayer(WeightedLayer):
    kind = "local"

    def __init__(self, options, batch, h, w, c, inputs):
        super().__init__(batch, h, w, c, inputs)
        where = f"{options.path}:{options.line}"
        self.n = options.find_int("filters", 1)
        self.size = options.find_int("size", 1)
        self.stride = options.find_int("stride", 1)
        self.pad = options.find_int("pad", 0)
        self.activation = parse_activation(options)
        if not (h and w and c):
            raise DLServerError(f"{where}: layer before local layer must output an image")
        if self.n < 1 or self.size < 1 or self.stride < 1 or self.pad < 0:
            raise DLServerError(f"{where}: local layer needs filters, size and stride >= 1 and pad >= 0")
        span = 1 if self.pad else self.size
        if h < span or w < span:
            raise DLServerError(f"{where}: local size={self.size} is larger than the {w} x {h} input")
        self.out_h = (h - span) // self.stride + 1
        self.out_w = (w - span) // self.stride + 1
        if (h + 2 * self.pad - self.size) // self.stride + 1 != self.out_h or (
            w + 2 * self.pad - self.size
        ) // self.stride + 1 != self.out_w:
            raise DLServerError(
                f"{where}: local size={self.size} pad={self.pad}: Darknet's im2col would give another output"
                " size (use pad=0, or pad=1 with size=3)"
            )
        self.out_c = self.n
        self.locations = self.out_h * self.out_w
        self.ksize = self.size * self.size * c
        self.outputs = self.locations * self.n
        self.inputs = h * w * c
        nweights = self.ksize * self.n * self.locations
        if nweights > MAX_WEIGHTS or self.ksize * self.locations > MAX_WEIGHTS:
            raise DLServerError(f"{where}: local layer has {nweights} weights, more than {MAX_WEIGHTS}")
        self.weights = zeros(nweights)
        self.biases = zeros(self.outputs)
        self.workspace_size = self.ksize * self.locations
        reserve_scratch(self.workspace_size)
        self.allocate()

    def init_weights(self, rng) -> None:
        """The first n*K weights: f32(sqrt(2/(k*k*c))) * rand_uniform(-1, 1), in index order."""
        scale = f32(math.sqrt(2.0 / (self.size * self.size * self.c)))
        rng.uniform_fill(memoryview(self.weights)[: self.ksize * self.n], -1.0, 1.0, scale)

    def skip_init_weights(self, rng) -> None:
        rng.skip(self.ksize * self.n)

    def parameter_arrays(self):
        return [self.biases, self.weights]

    def forward(self, net, input_buf, train):
        kernels.local_forward(
            input_buf,
            *window(self),
            self.n,
            self.weights,
            self.biases,
            self.output,
            self.workspace,
        )
        kernels.activate(self.output, self.batch * self.outputs, self.activation)

    def backward(self, net, input_buf, prev_delta):
        kernels.gradient(self.output, self.batch * self.outputs, self.activation, self.delta)
        kernels.local_backward(
            input_buf,
            *window(self),
            self.n,
            self.weights,
            self.delta,
            self.bias_updates,
            self.weight_updates,
            prev_delta,
            self.workspace,
        )

    def multiply_adds(self) -> int:
        """n filters of k*k*c at each of the locations (each its own)."""
        return self.outputs * self.ksize

    def describe(self):
        return (
            f"Local Layer: {self.h} x {self.w} x {self.c} image, {self.n} filters -> "
            f"{self.out_h} x {self.out_w} x {self.n} image"
        )
