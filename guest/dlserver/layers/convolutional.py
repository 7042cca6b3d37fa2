"""Convolutional layer (Darknet convolutional_layer.c).

forward:  out[b] = W (n x c*k*k) . im2col(in[b]) (c*k*k x out_h*out_w), then bias (or batch
          normalisation, layers/batchnorm.py: batch statistics in training) and the activation.
groups:   g > 1 splits channels and filters into g groups (c and n divisible by g): group j's
          n/g filters (W rows j*n/g.., each (c/g)*k*k weights) see only input channels
          j*c/g..(j+1)*c/g; one gemm per image and group, as Darknet. The weights file holds
          n*(c/g)*k*k weights.

Stride-1 layers with few input channels and a kernel of at most 8x8 (LeNet's) run
forward and backward in one `_dlk` call each (conv.c): the same floats as the
im2col + gemm loops, without im2col and without the Python loop over the batch.
"""

import math
from array import array

from .. import kernels
from ..buffers import reserve_scratch, scratch, view, zeros
from ..errors import DLServerError
from ..rng import f32
from .base import WeightedLayer, parse_activation
from .batchnorm import (
    add_batchnorm,
    allocate_batchnorm,
    backward_batchnorm,
    forward_batchnorm,
    prepare_batchnorm_training,
    update_scales,
)

DIRECT_MAX_CHANNELS = 8  # yolov3-tiny layer 2 (c=16) is faster as im2col + gemm
# Fast mode, Winograd: F(4x4, 3x3) on outputs at least this wide, F(2x2, 3x3) below (13x13 and 26x26
# in YOLOv3-tiny: F(4x4)'s padded tiles and 4x larger transformed weights cost more than it saves;
# measured in the component, docs/darknet-contract.md §10.5). Layers with fewer than 4 input channels
# (YOLOv3-tiny's layer 0) too: the input transform pads the channels to 4 with zeros.
WINOGRAD_F4_MIN_WIDTH = 40
WINOGRAD_MAX_CHANNELS = 8192  # DLK_WINOGRAD_MAX_C (kernels.h)
# ... transforming the weights as they are used (nothing kept) on outputs of at most this many pixels
WINOGRAD_FUSED_MAX_OUTPUTS = 104 * 104
TRAIN_KERNEL_MAX_SIZE = 8  # conv_forward / conv_backward: size <= 8, pad < size, stride 1


class ConvolutionalLayer(WeightedLayer):
    kind = "convolutional"

    def __init__(self, options, batch, h, w, c, inputs):
        super().__init__(batch, h, w, c, inputs)
        self.n = options.find_int("filters", 1)
        self.size = options.find_int("size", 1)
        self.stride = options.find_int("stride", 1)
        pad = options.find_int("pad", 0, quiet=True)
        self.pad = options.find_int("padding", 0, quiet=True)
        if pad:
            self.pad = self.size // 2
        self.groups = options.find_int("groups", 1, quiet=True)
        self.activation = parse_activation(options)
        self.batch_normalize = options.find_int("batch_normalize", 0, quiet=True)
        for flag in ("binary", "xnor", "flipped", "dot"):
            if options.find_int(flag, 0, quiet=True):
                raise DLServerError(
                    f"{options.path}:{options.line}: convolutional '{flag}=1' is not supported"
                )
        where = self.where = f"{options.path}:{options.line}"
        if self.groups < 1:
            raise DLServerError(f"{where}: convolutional groups={self.groups}: must be at least 1")
        if self.n < 1 or self.size < 1 or self.stride < 1 or self.pad < 0:
            raise DLServerError(f"{where}: convolutional needs filters, size, stride >= 1 and padding >= 0")
        if h < 1 or w < 1 or c < 1:
            raise DLServerError(f"{where}: layer before convolutional layer must output an image")
        if c % self.groups or self.n % self.groups:
            raise DLServerError(
                f"{where}: convolutional groups={self.groups} does not divide"
                f" the {c} input channels and {self.n} filters"
            )
        self.out_h = (h + 2 * self.pad - self.size) // self.stride + 1
        self.out_w = (w + 2 * self.pad - self.size) // self.stride + 1
        if self.out_h < 1 or self.out_w < 1:
            raise DLServerError(
                f"{where}: convolutional kernel {self.size}x{self.size} does not fit a {w}x{h} input"
            )
        self.out_c = self.n
        self.outputs = self.out_h * self.out_w * self.out_c
        self.kernel_inputs = c // self.groups * self.size * self.size  # per group
        self.nweights = self.n * self.kernel_inputs
        self.weights = zeros(self.nweights)
        self.biases = zeros(self.n)
        if self.batch_normalize:
            add_batchnorm(self, self.n)
        # Few input channels, stride 1: direct convolution (no im2col matrix); else im2col + gemm.
        self.direct = (
            self.stride == 1 and self.size > 1 and self.c <= DIRECT_MAX_CHANNELS and self.groups == 1
        )
        # ... and of those, kernels up to 8x8 with pad < size: conv_forward / conv_backward.
        self.fused = (
            self.direct
            and self.size <= TRAIN_KERNEL_MAX_SIZE
            and self.pad < self.size
            and not self.batch_normalize
        )
        # Fast mode (inference): 3x3 stride-1 layers by Winograd.
        self.winograd = (
            self.size == 3
            and self.stride == 1
            and self.groups == 1
            and self.pad <= 2
            and self.c <= WINOGRAD_MAX_CHANNELS
            and not self.fused
        )
        self.winograd_tile = 4 if self.out_w >= WINOGRAD_F4_MIN_WIDTH else 2
        self.winograd_fused = self.out_w * self.out_h <= WINOGRAD_FUSED_MAX_OUTPUTS
        self.winograd_weights: array | None = None
        if self.direct and not self.fused:
            self.workspace_size = kernels.conv2d_direct_workspace(c, h, w, self.size, self.pad)
        elif not self.direct and self.size != 1:
            self.workspace_size = self.kernel_inputs * self.out_h * self.out_w
        reserve_scratch(self.workspace_size)
        self.allocate()

    def allocate(self) -> None:
        super().allocate()
        if self.batch_normalize:
            allocate_batchnorm(self)

    def init_weights(self, rng) -> None:
        """w = f32(sqrt(2/(size*size*c/groups))) * rand_normal(), in index order."""
        scale = f32(math.sqrt(2.0 / (self.size * self.size * self.c // self.groups)))
        rng.normal_fill(self.weights, scale)

    def skip_init_weights(self, rng) -> None:
        rng.skip_normals(self.nweights)

    def parameter_arrays(self):
        """The arrays of a .weights record, in file order."""
        if self.batch_normalize:
            return [self.biases, self.scales, self.rolling_mean, self.rolling_variance, self.weights]
        return [self.biases, self.weights]

    def forward(self, net, input_buf, train):
        spatial = self.out_h * self.out_w
        out = self.output
        if self.fused:  # conv + bias + activation in one call
            kernels.conv_forward(
                input_buf,
                self.batch,
                self.c,
                self.h,
                self.w,
                self.weights,
                self.n,
                self.size,
                self.pad,
                self.biases,
                self.activation,
                out,
            )
            return
        if train:
            self.winograd_weights = None  # the weights change: transform them again when needed
        if self.winograd and not train and kernels.fast_mode():
            self._forward_winograd(input_buf, out)
        elif self.direct:
            kernels.conv2d_direct(
                input_buf,
                self.batch,
                self.c,
                self.h,
                self.w,
                self.weights,
                self.n,
                self.size,
                self.pad,
                out,
                self.workspace,
            )
        else:
            self._forward_gemm(input_buf, out, spatial)
        if self.batch_normalize:
            forward_batchnorm(self, train)
        else:
            kernels.add_bias(out, self.biases, self.batch, self.n, spatial)
        kernels.activate(out, len(out), self.activation)

    def _forward_winograd(self, input_buf, out):
        """Fast mode, inference: out = the convolution by Winograd F(m x m, 3 x 3) (winograd_fast.c);
        fused (small outputs): the kernel transforms the weights as it uses them; else the
        transformed weights are made at the first such forward and kept (weights do not change
        outside training, which takes the other paths)."""
        m, fused = self.winograd_tile, self.winograd_fused
        weights = self.weights  # fused: transformed by the kernel as it goes
        if not fused:
            if self.winograd_weights is None:
                rows = (self.n + 7) // 8 * 8  # packed in panels of 8 filters (winograd_fast.c)
                self.winograd_weights = zeros((m + 2) ** 2 * rows * self.c)
                kernels.winograd_weights(self.weights, self.n, self.c, m, self.winograd_weights)
            weights = self.winograd_weights
        kernels.conv_winograd(
            input_buf, self.batch, self.c, self.h, self.w, weights, self.n, self.pad, m, fused, out
        )

    def _forward_gemm(self, input_buf, out, spatial):
        """out[b] = W . im2col(in[b]), one gemm per image (and group)."""
        kernels.fill(len(out), 0.0, out)
        g = self.groups
        m, c, K = self.n // g, self.c // g, self.kernel_inputs
        group_inputs = c * self.h * self.w
        for b in range(self.batch):
            for j in range(g):
                image = view(input_buf, (b * g + j) * group_inputs, group_inputs)
                if self.size == 1:
                    col = image
                else:
                    kernels.im2col(image, c, self.h, self.w, self.size, self.stride, self.pad, self.workspace)
                    col = self.workspace
                weights = self.weights if g == 1 else view(self.weights, j * m * K, m * K)
                kernels.gemm(
                    0,
                    0,
                    m,
                    spatial,
                    K,
                    1.0,
                    weights,
                    K,
                    col,
                    spatial,
                    1.0,
                    view(out, (b * g + j) * m * spatial, m * spatial),
                    spatial,
                )

    def prepare_training(self) -> None:
        """Buffers for backward and update: delta, gradients (momentum-carried), im2col columns,
        and the batch-normalisation buffers."""
        super().prepare_training()
        self.columns_size = 0 if self.fused else self.kernel_inputs * self.out_h * self.out_w
        reserve_scratch(self.columns_size)
        if self.batch_normalize:
            prepare_batchnorm_training(self)

    def update(self, net, rate: float) -> None:
        """WeightedLayer's SGD step, and the scales of batch normalisation with the biases' step."""
        super().update(net, rate)
        if self.batch_normalize:
            lr = f32(rate * self.learning_rate_scale)
            update_scales(self, f32(lr / (net.batch * net.subdivisions)), net.momentum)

    # backward (delta is Darknet's negative gradient, target - output):
    #   delta *= act'(output);  bias_upd[f] += sum_p delta[b][f][p]  (or batchnorm backward)
    #   W_upd += delta[b] . cols(in[b])^T          (n x K, gemm NT over out_h*out_w)
    #   prev_delta[b] += col2im(W^T . delta[b])    (gemm TN, then scatter)
    # conv_backward does all of this for the whole batch (nonzero deltas only, same floats).
    def backward(self, net, input_buf, prev_delta):
        if self.fused:
            kernels.conv_backward(
                input_buf,
                self.batch,
                self.c,
                self.h,
                self.w,
                self.output,
                self.delta,
                self.n,
                self.size,
                self.pad,
                self.activation,
                self.weights,
                self.bias_updates,
                self.weight_updates,
                prev_delta,
            )
            return
        spatial = self.out_h * self.out_w
        K = self.kernel_inputs
        kernels.gradient(self.output, len(self.output), self.activation, self.delta)
        if self.batch_normalize:
            backward_batchnorm(self)
        else:
            kernels.backward_bias(self.bias_updates, self.delta, self.batch, self.n, spatial)
        g = self.groups
        m, c = self.n // g, self.c // g
        group_inputs = c * self.h * self.w
        columns = scratch(self.columns_size)
        for b in range(self.batch):
            for j in range(g):
                image = view(input_buf, (b * g + j) * group_inputs, group_inputs)
                delta = view(self.delta, (b * g + j) * m * spatial, m * spatial)
                if self.size == 1:
                    col = image
                else:
                    kernels.im2col(image, c, self.h, self.w, self.size, self.stride, self.pad, columns)
                    col = columns
                weights, weight_updates = self.weights, self.weight_updates
                if g != 1:
                    weights = view(self.weights, j * m * K, m * K)
                    weight_updates = view(self.weight_updates, j * m * K, m * K)
                kernels.gemm(0, 1, m, K, spatial, 1.0, delta, spatial, col, spatial, 1.0, weight_updates, K)
                if prev_delta is not None:
                    image_delta = view(prev_delta, (b * g + j) * group_inputs, group_inputs)
                    target = image_delta if self.size == 1 else columns
                    kernels.gemm(1, 0, K, spatial, m, 1.0, weights, K, delta, spatial, 0.0, target, spatial)
                    if self.size != 1:
                        kernels.col2im(
                            columns, c, self.h, self.w, self.size, self.stride, self.pad, image_delta
                        )

    def multiply_adds(self) -> int:
        """n filters of c/groups*size*size at each of out_h*out_w positions."""
        return self.out_h * self.out_w * self.n * self.kernel_inputs

    def describe(self):
        bflops = 2.0 * self.n * self.size * self.size * self.c / self.groups * self.out_h * self.out_w / 1e9
        return (
            f"conv  {self.n:5d} {self.size:2d} x{self.size:2d} /{self.stride:2d}  "
            f"{self.w:4d} x{self.h:4d} x{self.c:4d}   ->  "
            f"{self.out_w:4d} x{self.out_h:4d} x{self.out_c:4d}  {bflops:5.3f} BFLOPs"
        )
