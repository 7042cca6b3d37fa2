"""What every layer has: geometry, its output buffer, and its cfg options."""

from array import array

from .. import kernels
from ..buffers import scratch, zeros
from ..errors import DLServerError
from ..kernels import Activation
from ..rng import f32

# Darknet's get_activation names (activations.c), all implemented (guest/kernels/activation.h).
ACTIVATIONS = {
    "logistic": Activation.LOGISTIC,
    "loggy": Activation.LOGGY,
    "relu": Activation.RELU,
    "elu": Activation.ELU,
    "selu": Activation.SELU,
    "relie": Activation.RELIE,
    "plse": Activation.PLSE,
    "hardtan": Activation.HARDTAN,
    "lhtan": Activation.LHTAN,
    "linear": Activation.LINEAR,
    "ramp": Activation.RAMP,
    "leaky": Activation.LEAKY,
    "tanh": Activation.TANH,
    "stair": Activation.STAIR,
}


def parse_activation(options, default: str = "logistic") -> int:
    """The kernel code of a section's `activation`; an unknown name is an error (Darknet
    prints "Couldn't find activation function" and goes on with relu: docs/darknet-contract.md §11)."""
    name = options.find_str("activation", default)
    if name in ACTIVATIONS:
        return ACTIVATIONS[name]
    raise DLServerError(
        f"{options.path}:{options.line}: activation '{name}' is unknown (use one of {', '.join(ACTIVATIONS)})"
    )


class Layer:
    """Geometry (input h, w, c -> output out_h, out_w, out_c) and a batch of outputs."""

    kind = "layer"
    has_cost = False  # has a cost to report (network cost = mean of these)
    is_cost = False  # a cost layer: not the network's output layer
    needs_network = False  # built with the network so far (route reads earlier layers)
    cost: float  # of the last forward pass, in layers with has_cost
    # set by network._parse_common_options after the layer is built
    learning_rate_scale: float
    stopbackward: int
    cfg_line = 0  # line of the layer's section in its cfg (set by network._parse_common_options)

    workspace_size = 0  # floats of shared scratch the layer uses inside one forward or backward call

    @property
    def workspace(self):
        """workspace_size floats of the shared scratch buffer (buffers.scratch), or None."""
        return scratch(self.workspace_size) if self.workspace_size else None

    def __init__(self, batch: int, h: int, w: int, c: int, inputs: int):
        self.batch = batch
        self.h, self.w, self.c = h, w, c
        self.inputs = inputs
        self.out_h = self.out_w = self.out_c = 0
        self.outputs = 0
        self.output: array | None = None
        self.delta: array | None = None
        self.dontsave = self.dontload = 0

    def allocate(self) -> None:
        """(Re)allocate per-batch buffers for the current batch size."""
        self.output = zeros(self.batch * self.outputs)
        if self.delta is not None:
            self.delta = zeros(self.batch * self.outputs)

    def set_batch(self, batch: int) -> None:
        self.batch = batch
        self.allocate()

    def forward(self, net, input_buf, train: bool) -> None:
        raise NotImplementedError

    def prepare_training(self) -> None:
        """Allocate what backward and update need (delta; gradients for layers with weights)."""
        self.delta = zeros(self.batch * self.outputs)

    def backward(self, net, input_buf, prev_delta) -> None:
        """Propagate self.delta into prev_delta (None for the first layer)."""
        raise NotImplementedError

    def update(self, net, rate: float) -> None:
        """Apply accumulated gradients; layers without weights have nothing to do."""

    def parameter_arrays(self) -> list:
        """The arrays of the layer's record in a weights file, in file order: what load and
        save read and write, and what aggregation combines."""
        return []

    def init_weights(self, rng) -> None:
        """Darknet's random initialisation when the layer is built (draws from rng)."""

    def skip_init_weights(self, rng) -> None:
        """Advance rng as init_weights would have (the weights come from a file)."""

    def transpose_weights(self) -> None:
        """Undo the transposition of a weights file with major or minor > 1000."""

    def link(self, prev) -> None:
        """Take buffers from the previous layer (None for the first): in-place layers do."""

    def clear_delta(self) -> None:
        """Zero delta before a forward pass of training."""
        if self.delta is not None:
            kernels.fill(len(self.delta), 0.0, self.delta)

    def describe(self) -> str:
        """The rest of Darknet's layer-table line after the `%5d ` index."""
        raise NotImplementedError

    def parse_late_options(self, options) -> None:
        """Options Darknet's parser reads after the layer's line is printed (their default
        messages come after it)."""

    def multiply_adds(self) -> int:
        """Multiply-adds (or comparisons) of one forward pass of one input row, for the run's
        work estimate (work.py); a layer doing a few operations per value counts its values."""
        return self.inputs + self.outputs


class WeightedLayer(Layer):
    """A layer with biases and weights trained by SGD (connected, convolutional)."""

    biases: array
    weights: array
    bias_updates: array
    weight_updates: array

    def prepare_training(self) -> None:
        """delta, and the gradients of biases and weights (momentum-carried across batches)."""
        self.delta = zeros(self.batch * self.outputs)
        self.weight_updates = zeros(len(self.weights))
        self.bias_updates = zeros(len(self.biases))

    def update(self, net, rate: float) -> None:
        """Darknet's SGD step (update_connected_layer, update_convolutional_layer) in one pass
        (kernels.sgd_update), B = batch * subdivisions and lr = f32(rate * layer scale):
        bias += f32(lr/B)*bias_upd; bias_upd *= m; W_upd += f32(-decay*B)*W; W += f32(lr/B)*W_upd;
        W_upd *= m."""
        lr = f32(rate * self.learning_rate_scale)
        batch = net.batch * net.subdivisions
        kernels.sgd_update(
            self.biases,
            self.bias_updates,
            self.weights,
            self.weight_updates,
            f32(lr / batch),
            net.momentum,
            f32(-f32(net.decay) * batch),
        )


def window(layer) -> tuple:
    """(batch, c, h, w, size, stride, pad) of a windowed layer (local, maxpool), in the order the
    kernels take them."""
    return (layer.batch, layer.c, layer.h, layer.w, layer.size, layer.stride, layer.pad)


def earlier_layer(item: str, index: int, context: str, not_index: str) -> int:
    """The index of the layer that `item` names for layer `index` (negative: counted back from it),
    which must be an earlier layer; errors start with `context` ("cfg:line: key=value")."""
    try:
        source = int(item)
    except ValueError:
        raise DLServerError(f"{context}: {not_index}") from None
    if source < 0:
        source += index
    if not 0 <= source < index:
        raise DLServerError(f"{context}: layer {source} is not an earlier layer (this is layer {index})")
    return source
