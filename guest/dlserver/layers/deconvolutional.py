"""Deconvolutional (transposed convolution) layer (Darknet deconvolutional_layer.c), sections
[deconvolutional] and [deconv].

filters = n (1), size = k (1), stride = s (1), padding = p (0; pad=1 makes it k/2),
activation (logistic), batch_normalize (0)
out_h = (h - 1)*s + k - 2p, out_w likewise, out_c = n.
Weights: c x (n*k*k), W[ch][(f*k + ky)*k + kx]; a weights-file record is Darknet's
convolutional one: biases (n), [scales, rolling_mean, rolling_variance (n each)], weights.
Random init: W = f32(.02) * rand_normal(), then W *= f32(out_w*out_h) / (w*h); biases 0.

forward (per image b): cols = W^T . in[b]  ((n*k*k) x (h*w): gemm TN over the c channels),
          out[b] = col2im(cols) (the columns scattered onto the out_h x out_w image, summed),
          then bias (or, with batch_normalize, Darknet's inference batch norm with the rolling
          statistics) and the activation.
backward: delta *= act'(out); bias_upd[f] += sum of delta[b][f];
          cols = im2col(delta[b]) (over the output image: h*w columns);
          W_upd += in[b] . cols^T (gemm NT);  prev_delta[b] += W . cols (gemm NN).
update:   Darknet's SGD step (WeightedLayer.update: biases, then weights with decay).
Training with batch_normalize=1 is refused (Darknet's training batch norm is not built here yet).
"""

from .. import kernels
from ..buffers import filled, reserve_scratch, view, zeros
from ..errors import DLServerError
from ..rng import f32
from .base import WeightedLayer, parse_activation

INT_MAX = 2**31 - 1


class DeconvolutionalLayer(WeightedLayer):
    kind = "deconvolutional"

    def __init__(self, options, batch, h, w, c, inputs):
        super().__init__(batch, h, w, c, inputs)
        self.n = options.find_int("filters", 1)
        self.size = options.find_int("size", 1)
        self.stride = options.find_int("stride", 1)
        self.activation = parse_activation(options)
        where = self.where = f"{options.path}:{options.line}"
        if h < 1 or w < 1 or c < 1:
            raise DLServerError(f"{where}: layer before deconvolutional layer must output an image")
        self.batch_normalize = options.find_int("batch_normalize", 0, quiet=True)
        pad = options.find_int("pad", 0, quiet=True)
        self.pad = options.find_int("padding", 0, quiet=True)
        if pad:
            self.pad = self.size // 2
        if self.n < 1 or self.size < 1 or self.stride < 1 or self.pad < 0:
            raise DLServerError(
                f"{where}: deconvolutional needs filters, size, stride >= 1 and padding >= 0"
                f" (filters={self.n} size={self.size} stride={self.stride} padding={self.pad})"
            )
        self.out_h = (h - 1) * self.stride + self.size - 2 * self.pad
        self.out_w = (w - 1) * self.stride + self.size - 2 * self.pad
        if self.out_h < 1 or self.out_w < 1:
            raise DLServerError(
                f"{where}: deconvolutional padding={self.pad} leaves no output"
                f" ({self.out_w}x{self.out_h} from a {w}x{h} input)"
            )
        self.out_c = self.n
        self.outputs = self.out_h * self.out_w * self.out_c
        self.kernel_outputs = self.n * self.size * self.size  # rows of the column matrix
        if max(self.outputs, self.kernel_outputs * h * w, self.kernel_outputs * c) > INT_MAX:
            raise DLServerError(f"{where}: deconvolutional layer too large (Darknet's sizes are ints)")
        self.nweights = c * self.kernel_outputs
        self.weights = zeros(self.nweights)
        self.biases = zeros(self.n)
        if self.batch_normalize:
            self.scales = filled(self.n, 1.0)
            self.rolling_mean = zeros(self.n)
            self.rolling_variance = zeros(self.n)
        self.workspace_size = self.kernel_outputs * h * w
        reserve_scratch(self.workspace_size)
        self.allocate()

    def init_weights(self, rng) -> None:
        """W = f32(.02) * rand_normal(), then scal_cpu by (float)out_w*out_h/(w*h)."""
        rng.normal_fill(self.weights, f32(0.02))
        kernels.scal(self.nweights, self._init_scale(), self.weights)

    def _init_scale(self) -> float:
        return f32(f32(float(self.out_w) * self.out_h) / f32(self.w * self.h))

    def skip_init_weights(self, rng) -> None:
        rng.skip_normals(self.nweights)

    def parameter_arrays(self):
        """The arrays of a .weights record, in file order (Darknet's convolutional record)."""
        if self.batch_normalize:
            return [self.biases, self.scales, self.rolling_mean, self.rolling_variance, self.weights]
        return [self.biases, self.weights]

    def forward(self, net, input_buf, train):
        out = self.output
        spatial_in = self.h * self.w
        kernels.fill(len(out), 0.0, out)
        for b in range(self.batch):
            image = view(input_buf, b * self.inputs, self.inputs)
            kernels.gemm(
                1, 0, self.kernel_outputs, spatial_in, self.c, 1.0, self.weights, self.kernel_outputs,
                image, spatial_in, 0.0, self.workspace, spatial_in,
            )  # fmt: skip
            kernels.col2im(
                self.workspace, self.out_c, self.out_h, self.out_w, self.size, self.stride, self.pad,
                view(out, b * self.outputs, self.outputs),
            )  # fmt: skip
        spatial = self.out_h * self.out_w
        if self.batch_normalize:
            kernels.batchnorm_infer(
                out, self.rolling_mean, self.rolling_variance, self.scales, self.biases,
                self.batch, self.n, spatial,
            )  # fmt: skip
        else:
            kernels.add_bias(out, self.biases, self.batch, self.n, spatial)
        kernels.activate(out, self.batch * self.outputs, self.activation)

    def prepare_training(self) -> None:
        if self.batch_normalize:
            raise DLServerError(
                f"{self.where}: training a deconvolutional layer with batch_normalize=1 is not supported yet"
            )
        super().prepare_training()

    def backward(self, net, input_buf, prev_delta):
        spatial_in = self.h * self.w
        K = self.kernel_outputs
        n = self.batch * self.outputs
        kernels.gradient(self.output, n, self.activation, self.delta)
        kernels.backward_bias(self.bias_updates, self.delta, self.batch, self.n, self.out_h * self.out_w)
        for b in range(self.batch):
            kernels.im2col(
                view(self.delta, b * self.outputs, self.outputs), self.out_c, self.out_h, self.out_w,
                self.size, self.stride, self.pad, self.workspace,
            )  # fmt: skip
            image = view(input_buf, b * self.inputs, self.inputs)
            kernels.gemm(
                0, 1, self.c, K, spatial_in, 1.0, image, spatial_in, self.workspace, spatial_in,
                1.0, self.weight_updates, K,
            )  # fmt: skip
            if prev_delta is not None:
                kernels.gemm(
                    0, 0, self.c, spatial_in, K, 1.0, self.weights, K, self.workspace, spatial_in,
                    1.0, view(prev_delta, b * self.inputs, self.inputs), spatial_in,
                )  # fmt: skip

    def multiply_adds(self) -> int:
        """each of the h*w*c inputs into n*size*size outputs."""
        return self.h * self.w * self.c * self.n * self.size * self.size

    def describe(self):
        return (
            f"deconv{self.n:5d} {self.size:2d} x{self.size:2d} /{self.stride:2d}  "
            f"{self.w:4d} x{self.h:4d} x{self.c:4d}   ->  "
            f"{self.out_w:4d} x{self.out_h:4d} x{self.out_c:4d}"
        )
