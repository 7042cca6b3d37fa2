"""Batch normalisation (Darknet batchnorm_layer.c): the [batchnorm] layer, and the batch
normalisation of convolutional and connected layers with batch_normalize=1 (the functions
below, which any layer with the attributes they name can call: the recurrent layers' connected
sublayers do it through ConnectedLayer).

Per channel f of n (out_c), over the M = batch * out_h*out_w values x[b][f][p] of a batch:
  training:  mean[f] = sum x / M,  var[f] = sum (x - mean)^2 / (M - 1)        (float sums)
             rolling_mean = .99*rolling_mean + .01*mean;  same for rolling_variance
             x_norm = (x - mean) / (sqrt(var) + .000001f);  y = scales[f]*x_norm + biases[f]
  inference: y = scales[f]*(x - rolling_mean)/(sqrt(rolling_variance) + .000001f) + biases[f]
  backward (dy the delta, eps = .00001f; Darknet's formulas, which use var + eps here):
             bias_upd += sum dy;  scale_upd += sum dy*x_norm;  d = dy*scales[f]
             mean_delta = sum d * -1/sqrt(var + eps)
             var_delta  = sum d*(x - mean) * -.5*(var + eps)^(-3/2)
             dx = d/sqrt(var + eps) + var_delta*2*(x - mean)/M + mean_delta/M
  update:    scales += lr/B * scale_upd;  scale_upd *= momentum (with the biases and weights
             of the owning layer: update_convolutional_layer, update_connected_layer).
The float order of each step is Darknet's (kernels batchnorm_forward_train, batchnorm_backward,
batchnorm_infer: guest/kernels/batchnorm.c, blas.c).

The [batchnorm] layer normalises its input (out = in, then the above in place), keeps w x h x c,
and its weights record is scales, rolling_mean, rolling_variance (its biases, always 0, are not
saved). As Darknet, it has no update: its scales and biases stay 1 and 0, only the rolling
statistics learn. backward sets prev_delta to its delta (a copy, as Darknet). (Darknet's
make_batchnorm_layer does not allocate x and x_norm, so Darknet itself crashes in its forward;
the oracle harness allocates them.)
"""

from .. import kernels
from ..buffers import filled, zeros
from ..errors import DLServerError
from .base import Layer


def add_batchnorm(layer, n: int) -> None:
    """Give `layer` (which normalises n channels of its output) scales 1 and rolling statistics 0."""
    layer.scales = filled(n, 1.0)
    layer.rolling_mean = zeros(n)
    layer.rolling_variance = zeros(n)


def prepare_batchnorm_training(layer) -> None:
    """The buffers batch-normalised training needs: batch statistics, their deltas, scale
    gradients, and x (before) and x_norm (after normalising) of a whole batch."""
    n = len(layer.scales)
    layer.scale_updates = zeros(n)
    layer.mean, layer.variance = zeros(n), zeros(n)
    layer.mean_delta, layer.variance_delta = zeros(n), zeros(n)
    allocate_batchnorm(layer)


def allocate_batchnorm(layer) -> None:
    """(Re)allocate x and x_norm for the layer's batch, once training is prepared."""
    if getattr(layer, "scale_updates", None) is not None:
        layer.x = zeros(layer.batch * layer.outputs)
        layer.x_norm = zeros(layer.batch * layer.outputs)


def forward_batchnorm(layer, train: bool) -> None:
    """Normalise, scale and bias layer.output in place (batch statistics when training)."""
    n = len(layer.scales)
    spatial = layer.outputs // n
    if train:
        if getattr(layer, "scale_updates", None) is None:
            prepare_batchnorm_training(layer)
        kernels.batchnorm_forward_train(
            layer.output,
            layer.x,
            layer.x_norm,
            layer.mean,
            layer.variance,
            layer.rolling_mean,
            layer.rolling_variance,
            layer.scales,
            layer.biases,
            layer.batch,
            n,
            spatial,
        )
    else:
        kernels.batchnorm_infer(
            layer.output,
            layer.rolling_mean,
            layer.rolling_variance,
            layer.scales,
            layer.biases,
            layer.batch,
            n,
            spatial,
        )


def backward_batchnorm(layer) -> None:
    """layer.delta (of the normalised output, activation gradient applied) becomes the delta of
    the output before normalising; bias_updates and scale_updates accumulate."""
    n = len(layer.scales)
    kernels.batchnorm_backward(
        layer.x,
        layer.x_norm,
        layer.delta,
        layer.mean,
        layer.variance,
        layer.scales,
        layer.scale_updates,
        layer.bias_updates,
        layer.mean_delta,
        layer.variance_delta,
        layer.batch,
        n,
        layer.outputs // n,
    )


def update_scales(layer, step: float, momentum: float) -> None:
    """scales += step*scale_updates; scale_updates *= momentum (step = f32(lr/B))."""
    n = len(layer.scales)
    kernels.axpy(n, step, layer.scale_updates, layer.scales)
    kernels.scal(n, momentum, layer.scale_updates)


class BatchnormLayer(Layer):
    """[batchnorm]: batch normalisation of the previous layer's output (w x h x c)."""

    kind = "batchnorm"

    def __init__(self, options, batch, h, w, c, inputs):
        super().__init__(batch, h, w, c, inputs)
        where = f"{options.path}:{options.line}"
        if h < 1 or w < 1 or c < 1:
            raise DLServerError(f"{where}: layer before batchnorm layer must output an image")
        self.out_h, self.out_w, self.out_c = h, w, c
        self.outputs = self.inputs = h * w * c
        self.biases = zeros(c)
        add_batchnorm(self, c)
        self.allocate()

    def allocate(self) -> None:
        super().allocate()
        allocate_batchnorm(self)

    def parameter_arrays(self):
        return [self.scales, self.rolling_mean, self.rolling_variance]

    def prepare_training(self) -> None:
        super().prepare_training()
        self.bias_updates = zeros(self.c)
        prepare_batchnorm_training(self)

    def forward(self, net, input_buf, train):
        memoryview(self.output)[:] = memoryview(input_buf)[: len(self.output)]
        forward_batchnorm(self, train)

    def backward(self, net, input_buf, prev_delta):
        backward_batchnorm(self)
        if prev_delta is not None:
            memoryview(prev_delta)[: len(self.delta)] = memoryview(self.delta)

    def describe(self):
        return f"Batch Normalization Layer: {self.w} x {self.h} x {self.c} image"
