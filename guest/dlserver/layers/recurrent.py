"""What Darknet's recurrent layers share ([rnn], [gru], [lstm], [crnn]: rnn_layer.c, gru_layer.c,
lstm_layer.c, crnn_layer.c): time steps, and sublayers that run one step at a time.

Time steps: [net] time_steps=T multiplies the net batch (network.py), so a batch of N = B*T rows
is T steps of B rows, step-major (rows t*B .. t*B+B-1 are step t). A recurrent layer has
batch B = N / T (Darknet's l.batch = batch / steps). Its sublayers are ordinary connected (or,
for crnn, convolutional) layers built for B*T rows, so their output and delta buffers hold every
step, and then set to batch B: Darknet's increment_layer moves their output, delta (and
batch-norm x, x_norm) pointers one step on; here `at_step` points those attributes at views of
one step. The connected sublayers' learning_rate_scale is 1 (Darknet reads `learning_rate` into
the recurrent layer itself, which update never uses); the convolutional ones' (crnn) is 0, as
make_convolutional_layer leaves it, so Darknet's crnn never changes its weights in training.

Weights file: each sublayer's record (connected: biases, weights; convolutional: biases,
weights), in the order of parse.c's save_weights_upto / load_weights_upto, which differs from
the order the sublayers are built (and randomly initialised) in for gru and lstm.
"""

from ..buffers import view, zeros
from ..config import Options
from ..errors import DLServerError
from .base import ACTIVATIONS, Layer
from .connected import ConnectedLayer
from .convolutional import ConvolutionalLayer

# Buffers of batch x outputs rows per step that increment_layer moves (x, x_norm: batch norm).
STEP_BUFFERS = ("output", "delta", "x", "x_norm")
# Floats one recurrent layer may allocate (1 GiB), checked before any allocation.
MAX_FLOATS = 1 << 28


def sub_options(options: Options, section: str, **values) -> Options:
    """The options Darknet passes to make_connected_layer / make_convolutional_layer, as a
    section of the recurrent layer's cfg position (so errors name its file and line)."""
    sub = Options(options.path, section, options.line)
    for key, value in values.items():
        sub.add(key, str(value), options.line)
    return sub


class RecurrentLayer(Layer):
    """Steps, sublayers and their buffers; subclasses build the sublayers and run the steps."""

    needs_network = True  # reads net.time_steps
    subs: list  # sublayers in build (and random-initialisation) order
    file_order: list  # the same sublayers in weights-file order

    def __init__(self, options, batch, h, w, c, inputs, net=None, index=0):
        steps = net.time_steps if net is not None else 1
        where = self.where = f"{options.path}:{options.line}"
        if steps < 1:
            raise DLServerError(f"{where}: {options.name} needs time_steps >= 1, not {steps}")
        if batch % steps:
            raise DLServerError(
                f"{where}: {options.name}: batch {batch} is not a whole number of time_steps={steps}"
            )
        super().__init__(batch // steps, h, w, c, inputs)
        self.steps = steps
        self.subs = []
        self.file_order = []
        self.batch_normalize = options.find_int("batch_normalize", 0, quiet=True)

    def check_size(self, floats: int, what: str) -> None:
        """Refuse a layer whose buffers would pass MAX_FLOATS, before allocating them."""
        if floats > MAX_FLOATS:
            raise DLServerError(f"{self.where}: {what} would need {floats} floats, more than {MAX_FLOATS}")

    def gate_outputs(self, options, inputs: int, gates: int, row_buffers: int) -> int:
        """The `output` n of a gated layer (gru: 3 gates, lstm: 4), refused before allocating
        when its u (inputs -> n) and w (n -> n) weights plus `row_buffers` buffers of n per row
        would pass MAX_FLOATS."""
        outputs = options.find_int("output", 1)
        if outputs < 1:
            raise DLServerError(f"{self.where}: {self.kind} output={outputs}: must be at least 1")
        if inputs < 1:
            raise DLServerError(f"{self.where}: {self.kind} layer has no inputs")
        rows = self.batch * self.steps
        floats = gates * inputs * outputs + gates * outputs * outputs + row_buffers * rows * outputs
        self.check_size(floats, f"{self.kind} layer")
        return outputs

    def linear_sublayers(self, options, inputs: int, outputs: int, pattern: str) -> list:
        """Linear connected sublayers in build order, one per letter of `pattern`: u maps the
        inputs to n, w maps n (the state) to n."""
        return [
            self.connected(options, inputs if kind == "u" else outputs, outputs, "linear") for kind in pattern
        ]

    def connected(self, options, inputs: int, outputs: int, activation: str) -> ConnectedLayer:
        """make_connected_layer(batch*steps, inputs, outputs, activation, batch_normalize), then
        ->batch = batch."""
        sub = ConnectedLayer(
            sub_options(
                options,
                "[connected]",
                output=outputs,
                activation=activation,
                batch_normalize=self.batch_normalize,
            ),
            self.batch * self.steps,
            1,
            1,
            inputs,
            inputs,
        )
        return self._adopt(sub)

    def convolutional(self, options, h, w, c, filters: int, activation: str) -> ConvolutionalLayer:
        """make_convolutional_layer(batch*steps, h, w, c, filters, 1, 3, 1, 1, activation,
        batch_normalize, 0, 0, 0), then ->batch = batch."""
        sub = ConvolutionalLayer(
            sub_options(
                options,
                "[convolutional]",
                filters=filters,
                size=3,
                stride=1,
                padding=1,
                activation=activation,
                batch_normalize=self.batch_normalize,
            ),
            self.batch * self.steps,
            h,
            w,
            c,
            h * w * c,
        )
        self._adopt(sub)
        # make_convolutional_layer leaves learning_rate_scale 0 (only parse_network_cfg sets it),
        # so Darknet's update_crnn_layer moves nothing: no step, no decay. As Darknet.
        sub.learning_rate_scale = 0.0
        return sub

    def _adopt(self, sub):
        sub.learning_rate_scale = 1.0
        sub.stopbackward = 0
        self._refresh(sub)
        self.subs.append(sub)
        return sub

    def at_step(self, sub, step: int):
        """Point the sublayer's per-step buffers at step `step` (increment_layer)."""
        n = sub.outputs * self.batch
        for name, buf in sub.full.items():
            setattr(sub, name, view(buf, step * n, n))
        return sub

    def input_at(self, buf, step: int):
        """The rows of step `step` of the layer's input (or of its delta)."""
        n = self.inputs * self.batch
        return view(buf, step * n, n)

    def check_input(self, input_buf) -> None:
        need = self.steps * self.batch * self.inputs
        if len(input_buf) < need:
            raise DLServerError(
                f"{self.where}: input holds {len(input_buf)} values, {self.steps} time steps of"
                f" {self.batch} x {self.inputs} need {need}"
            )

    # ------------------------------------------------------------- buffers, weights, update

    def set_batch(self, batch: int) -> None:
        """Darknet's set_batch_network sets l.batch = b on the recurrent layer only; here b is
        the batch per step of the layer and of its sublayers (their buffers: b * steps rows)."""
        self.batch = batch
        for sub in self.subs:
            self._whole(sub)
            sub.set_batch(batch * self.steps)
            self._refresh(sub)
        self.allocate()

    def _whole(self, sub) -> None:
        """Point the sublayer back at its whole buffers, for B * steps rows (before it
        reallocates or adds buffers)."""
        for name, buf in sub.full.items():
            setattr(sub, name, buf)
        sub.batch = self.batch * self.steps

    def _refresh(self, sub) -> None:
        """Take the sublayer's (new) whole buffers; then it runs B rows at a time."""
        sub.full = {name: getattr(sub, name) for name in STEP_BUFFERS if getattr(sub, name, None) is not None}
        sub.batch = self.batch

    def prepare_training(self) -> None:
        for sub in self.subs:
            self._whole(sub)
            sub.prepare_training()
            self._refresh(sub)
        self.allocate_training()

    def allocate_training(self) -> None:
        """The layer's own delta (all steps), where it has one."""
        self.delta = zeros(self.batch * self.steps * self.outputs)

    def clear_sub_deltas(self) -> None:
        for sub in self.subs:
            delta = sub.full.get("delta")
            if delta is not None:
                memoryview(delta).cast("B")[:] = bytes(4 * len(delta))

    def update(self, net, rate: float) -> None:
        for sub in self.update_order():
            sub.update(net, rate)

    def update_order(self) -> list:
        return self.subs

    def parameter_arrays(self) -> list:
        return [a for sub in self.file_order for a in sub.parameter_arrays()]

    def init_weights(self, rng) -> None:
        for sub in self.subs:
            sub.init_weights(rng)

    def skip_init_weights(self, rng) -> None:
        for sub in self.subs:
            sub.skip_init_weights(rng)

    def transpose_weights(self) -> None:
        for sub in self.subs:
            sub.transpose_weights()

    def multiply_adds(self) -> int:
        """Every sublayer runs once per row (one step of one sequence)."""
        return sum(sub.multiply_adds() for sub in self.subs)

    def describe_subs(self) -> str:
        return "".join("\n\t\t" + sub.describe() for sub in self.subs)


def copy(n: int, src, dst) -> None:
    """dst[:n] = src[:n] (Darknet copy_cpu)."""
    memoryview(dst)[:n] = memoryview(src)[:n]


def activation_name(code: int) -> str:
    """The cfg name of an activation code (what the sublayers' options say)."""
    return next(name for name, value in ACTIVATIONS.items() if value == code)
