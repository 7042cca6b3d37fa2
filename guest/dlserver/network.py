"""A network built from a Darknet cfg (parse_network_cfg): options, layers, forward pass."""

import sys
from typing import Any

from . import limits
from .buffers import BufferLimitError, release_scratch
from .config import Options, read_cfg
from .errors import DLServerError
from .layers.activation import ActivationLayer
from .layers.avgpool import AvgpoolLayer
from .layers.base import Layer
from .layers.batchnorm import BatchnormLayer
from .layers.connected import ConnectedLayer
from .layers.convolutional import ConvolutionalLayer
from .layers.cost import CostLayer
from .layers.crnn import CrnnLayer
from .layers.crop import CropLayer
from .layers.deconvolutional import DeconvolutionalLayer
from .layers.detection import DetectionLayer
from .layers.dropout import DropoutLayer
from .layers.gru import GruLayer
from .layers.l2norm import L2normLayer
from .layers.local import LocalLayer
from .layers.logistic import LogisticLayer
from .layers.lstm import LstmLayer
from .layers.maxpool import MaxpoolLayer
from .layers.normalization import NormalizationLayer
from .layers.region import RegionLayer
from .layers.reorg import ReorgLayer
from .layers.rnn import RnnLayer
from .layers.route import RouteLayer
from .layers.shortcut import ShortcutLayer
from .layers.softmax import SoftmaxLayer
from .layers.upsample import UpsampleLayer
from .layers.yolo import YoloLayer
from .limits import check
from .rng import Random, f32
from .schedule import learning_rate

# Layer classes, built as cls(options, batch, h, w, c, inputs), plus net= and index= for those
# with needs_network: constructors Layer.__init__'s signature does not describe.
LAYER_TYPES: dict[str, type[Any]] = {
    "[conv]": ConvolutionalLayer,
    "[convolutional]": ConvolutionalLayer,
    "[max]": MaxpoolLayer,
    "[maxpool]": MaxpoolLayer,
    "[conn]": ConnectedLayer,
    "[connected]": ConnectedLayer,
    "[dropout]": DropoutLayer,
    "[soft]": SoftmaxLayer,
    "[softmax]": SoftmaxLayer,
    "[cost]": CostLayer,
    "[route]": RouteLayer,
    "[upsample]": UpsampleLayer,
    "[yolo]": YoloLayer,
    "[avg]": AvgpoolLayer,
    "[avgpool]": AvgpoolLayer,
    "[shortcut]": ShortcutLayer,
    "[deconv]": DeconvolutionalLayer,
    "[deconvolutional]": DeconvolutionalLayer,
    "[activation]": ActivationLayer,
    "[logistic]": LogisticLayer,
    "[l2norm]": L2normLayer,
    "[lrn]": NormalizationLayer,
    "[normalization]": NormalizationLayer,
    "[batchnorm]": BatchnormLayer,
    "[rnn]": RnnLayer,
    "[gru]": GruLayer,
    "[lstm]": LstmLayer,
    "[crnn]": CrnnLayer,
    "[reorg]": ReorgLayer,
    "[region]": RegionLayer,
    "[detection]": DetectionLayer,
    "[local]": LocalLayer,
    "[crop]": CropLayer,
}
# Sections Darknet knows that dl-server refuses for good, with the reason.
REFUSED_SECTIONS = {
    "[iseg]": "layer [iseg] is not supported: Darknet's instance-segmentation layer reads a truth of"
    " 90 instance masks per image (a data format dl-server does not load) in every forward pass,"
    " at inference too (where Darknet's truth is NULL), and its constructor calls srand(0)",
}
POLICIES = ("constant", "step", "exp", "poly", "steps", "sigmoid", "random")


class Network:
    """Darknet's network: [net] options and the layers, with their buffers."""

    def __init__(self, cfg_path: str):
        self.cfg_path = cfg_path
        self.layers: list[Layer] = []
        self.seen = 0
        # upper 4 bytes of the 8-byte `seen` field (wasm32 quirk, docs/darknet-contract.md §3.1)
        self.seen_high = 0
        # FedProx's term (client_rules.Proximal), added to the gradients before each update
        self.proximal: Any = None

    def parse_net_options(self, options: Options) -> None:
        """[net] options in Darknet's lookup order (so default messages come out the same)."""
        self.batch = options.find_int("batch", 1)
        self.learning_rate = options.find_float("learning_rate", 0.001)
        self.momentum = options.find_float("momentum", 0.9)
        self.decay = options.find_float("decay", 0.0001)
        subdivisions = options.find_int("subdivisions", 1)
        self.time_steps = options.find_int("time_steps", 1, quiet=True)
        options.find_int("notruth", 0, quiet=True)  # read, not applied (so not reported unused)
        where = f"{options.path}:{options.line}"
        if self.batch < 1 or subdivisions < 1 or self.time_steps < 1:
            raise DLServerError(f"{where}: batch, subdivisions and time_steps must be at least 1")
        if self.batch < subdivisions:
            raise DLServerError(f"{where}: batch={self.batch} is smaller than subdivisions={subdivisions}")
        self.batch = self.batch // subdivisions * self.time_steps
        self.subdivisions = subdivisions
        self.random = options.find_int("random", 0, quiet=True)
        self.adam = options.find_int("adam", 0, quiet=True)
        if self.adam:  # adam's options: read, not applied
            options.find_float("B1", 0.9)
            options.find_float("B2", 0.999)
            options.find_float("eps", 0.0000001)
        self.h = options.find_int("height", 0, quiet=True)
        self.w = options.find_int("width", 0, quiet=True)
        self.c = options.find_int("channels", 0, quiet=True)
        self.inputs = options.find_int("inputs", self.h * self.w * self.c, quiet=True)
        self.max_crop = options.find_int("max_crop", self.w * 2, quiet=True)
        self.min_crop = options.find_int("min_crop", self.w, quiet=True)
        self.max_ratio = options.find_float(
            "max_ratio", self.max_crop / self.w if self.w else 0.0, quiet=True
        )
        self.min_ratio = options.find_float(
            "min_ratio", self.min_crop / self.w if self.w else 0.0, quiet=True
        )
        # Darknet's augmentation options: read, not applied (the Veracruz loader augments nothing)
        options.find_int("center", 0, quiet=True)
        options.find_float("clip", 0, quiet=True)
        options.find_float("angle", 0, quiet=True)
        options.find_float("aspect", 1, quiet=True)
        options.find_float("saturation", 1, quiet=True)
        options.find_float("exposure", 1, quiet=True)
        options.find_float("hue", 0, quiet=True)
        if not self.inputs and not (self.h and self.w and self.c):
            raise DLServerError(f"{where}: no input size: give height, width and channels (or inputs)")
        if self.h < 0 or self.w < 0 or self.c < 0 or self.inputs < 0:
            raise DLServerError(f"{where}: height, width, channels and inputs must not be negative")
        self.policy = options.find_str("policy", "constant")
        if self.policy not in POLICIES:
            raise DLServerError(
                f"{where}: unknown learning-rate policy '{self.policy}' (one of {', '.join(POLICIES)})"
            )
        self.burn_in = options.find_int("burn_in", 0, quiet=True)
        self.power = options.find_float("power", 4, quiet=True)
        if self.policy == "step":
            self.step = options.find_int("step", 1)
            self.scale = options.find_float("scale", 1)
            if self.step == 0:  # Darknet divides the batch number by it
                raise DLServerError(f"{where}: policy=step with step=0: the step must not be 0")
        elif self.policy == "steps":
            self.steps = options.find_list("steps", int)
            self.scales = options.find_list("scales", float)
            if self.steps is None or self.scales is None:
                raise DLServerError(f"{where}: policy=steps needs both steps= and scales=")
            if len(self.steps) != len(self.scales):
                raise DLServerError(
                    f"{where}: steps= has {len(self.steps)} values but scales= has {len(self.scales)}"
                )
        elif self.policy == "exp":
            self.gamma = options.find_float("gamma", 1)
        elif self.policy == "sigmoid":
            self.gamma = options.find_float("gamma", 1)
            self.step = options.find_int("step", 1)
        self.max_batches = options.find_int("max_batches", 0)

    def set_batch(self, batch: int) -> None:
        """Darknet's set_batch_network, reallocating every layer's buffers."""
        self.batch = batch
        try:
            for layer in self.layers:
                layer.set_batch(batch)
        except BufferLimitError as e:
            raise DLServerError(f"{self.cfg_path}: at batch {batch}, the network {e}") from None
        self._link_in_place_layers()

    def _link_in_place_layers(self) -> None:
        """In-place layers (dropout) take the previous layer's buffers."""
        for i, layer in enumerate(self.layers):
            layer.link(self.layers[i - 1] if i else None)

    def prepare_training(self, rng) -> None:
        """Allocate deltas and gradient buffers; `rng` feeds dropout (musl rand state)."""
        self.rng = rng
        try:
            for layer in self.layers:
                layer.prepare_training()
        except BufferLimitError as e:
            raise DLServerError(f"{self.cfg_path}: training the network {e}") from None
        self._link_in_place_layers()
        self.truth = None

    @property
    def current_batch(self) -> int:
        """get_current_batch: seen / (batch * subdivisions), integer division."""
        return self.seen // (self.batch * self.subdivisions)

    def train_step(self, input_buf, truth) -> float:
        """train_network_datum: forward and backward one batch, update every `subdivisions`;
        returns the network cost (mean of the layers' costs)."""
        self.seen = (self.seen + self.batch) & 0xFFFFFFFF
        self.truth = truth
        current = input_buf
        for layer in self.layers:
            layer.clear_delta()
            layer.forward(self, current, True)
            current = layer.output
        for i in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[i]
            if layer.stopbackward:
                break
            if i == 0:
                layer.backward(self, input_buf, None)
            else:
                prev = self.layers[i - 1]
                layer.backward(self, prev.output, prev.delta)
        costs = [layer.cost for layer in self.layers if layer.has_cost]
        error = f32(sum_f32(costs) / len(costs)) if costs else 0.0
        if (self.seen // self.batch) % self.subdivisions == 0:
            rate = learning_rate(self)
            if self.proximal is not None:
                self.proximal.add_to_updates(self)
            for layer in self.layers:
                layer.update(self, rate)
        return error

    @property
    def output_layer(self):
        """The last layer that is not a cost layer (Darknet's get_network_output_layer)."""
        for layer in reversed(self.layers):
            if not layer.is_cost:
                return layer
        return self.layers[-1]

    @property
    def outputs(self) -> int:
        return self.output_layer.outputs

    def forward(self, input_buf, train: bool = False):
        """Run every layer in order; returns the output buffer of the output layer."""
        if len(input_buf) < self.batch * self.inputs:
            raise DLServerError(
                f"network input holds {len(input_buf)} values, {self.batch * self.inputs} needed"
            )
        current = input_buf
        for layer in self.layers:
            layer.forward(self, current, train)
            current = layer.output
        return self.output_layer.output

    def predict(self, input_buf):
        """Inference on a batch (network_predict)."""
        return self.forward(input_buf, train=False)


def parse_network_cfg(cfg_path: str, init_rng: Random | None = None, batch: int | None = None) -> Network:
    """Build a network from a cfg file, printing Darknet's layer table on stderr.

    With `init_rng`, weights get Darknet's random initialisation (needed only when no
    weights file will overwrite them). With `batch`, buffers are sized for batch*time_steps and
    not the cfg's training batch/subdivisions*time_steps (inference commands then set the
    batch they use, without allocating the cfg's batch first, as Darknet does)."""
    release_scratch()  # sized anew for this network, not the largest one seen in this process
    sections = read_cfg(cfg_path)
    first = sections[0]
    if first.name not in ("[net]", "[network]"):
        raise DLServerError(
            f"{cfg_path}:{first.line}: first section must be [net] or [network], not {first.name}"
        )
    net = Network(cfg_path)
    net.parse_net_options(first)
    if batch is not None:
        net.batch = batch * net.time_steps
    if len(sections) < 2:
        raise DLServerError(f"{cfg_path}: network has no layers")
    check(cfg_path, "layers", len(sections) - 1, limits.MAX_LAYERS, "MAX_LAYERS")
    err = sys.stderr
    err.write("layer     filters    size              input                output\n")
    h, w, c, inputs = net.h, net.w, net.c, net.inputs
    for index, options in enumerate(sections[1:]):
        layer_type = LAYER_TYPES.get(options.name)
        if layer_type is None:
            where = f"{cfg_path}:{options.line}"
            if options.name in REFUSED_SECTIONS:
                raise DLServerError(f"{where}: {REFUSED_SECTIONS[options.name]}")
            if options.name in ("[net]", "[network]"):
                raise DLServerError(f"{where}: {options.name} may only be the first section")
            raise DLServerError(f"{where}: unknown section {options.name}")
        err.write(f"{index:5d} ")
        try:
            if layer_type.needs_network:
                layer = layer_type(options, net.batch, h, w, c, inputs, net=net, index=index)
            else:
                layer = layer_type(options, net.batch, h, w, c, inputs)
        except BufferLimitError as e:
            err.write("\n")
            raise DLServerError(f"{cfg_path}:{options.line}: layer {index} {options.name} {e}") from None
        except DLServerError:
            err.write("\n")
            raise
        err.write(layer.describe() + "\n")
        layer.parse_late_options(options)
        _parse_common_options(layer, options)
        options.report_unused()
        if init_rng is not None:
            layer.init_weights(init_rng)
        net.layers.append(layer)
        h, w, c, inputs = layer.out_h, layer.out_w, layer.out_c, layer.outputs
    return net


def _parse_common_options(layer, options: Options) -> None:
    options.find_int("truth", 0, quiet=True)  # truth, onlyforward, smooth: read, not applied
    options.find_int("onlyforward", 0, quiet=True)
    layer.stopbackward = options.find_int("stopbackward", 0, quiet=True)
    layer.cfg_line = options.line
    layer.dontsave = options.find_int("dontsave", 0, quiet=True)
    layer.dontload = options.find_int("dontload", 0, quiet=True)
    numload = options.find_int("numload", 0, quiet=True)
    dontloadscales = options.find_int("dontloadscales", 0, quiet=True)
    if numload or dontloadscales:
        raise DLServerError(f"{options.path}:{options.line}: numload/dontloadscales are not supported")
    layer.learning_rate_scale = options.find_float("learning_rate", 1, quiet=True)
    options.find_float("smooth", 0, quiet=True)


def sum_f32(values) -> float:
    """A sequential float32 sum (Darknet's `float sum` loops)."""
    total = 0.0
    for v in values:
        total = f32(total + v)
    return total
