"""Convolutional recurrent layer (Darknet crnn_layer.c): [rnn] with 3x3 convolutions.

output_filters = m (1), hidden_filters = k (1), activation f (logistic), shortcut (0),
batch_normalize (0). Sublayers (built and saved in this order), each a 3x3 convolution,
stride 1, padding 1, activation f: input (c -> k), self (k -> k), output (k -> m). The state
is k planes (hidden = h*w*k per row). forward, backward and update are [rnn]'s (rnn.py) with
these sublayers and that state size (Darknet allocates steps+1 state slots here).

As Darknet's parse_crnn, which passes (w, h) where make_crnn_layer takes (h, w): the layer and
its convolutions see the input as w rows of h columns (the same image when h = w), and the
layer's output is out_h = w, out_w = h.
"""

from ..buffers import zeros
from ..errors import DLServerError
from .base import parse_activation
from .recurrent import activation_name
from .rnn import RnnLayer


class CrnnLayer(RnnLayer):
    kind = "crnn"

    def __init__(self, options, batch, h, w, c, inputs, net=None, index=0):
        super(RnnLayer, self).__init__(options, batch, h, w, c, inputs, net=net, index=index)
        output_filters = options.find_int("output_filters", 1)
        hidden_filters = options.find_int("hidden_filters", 1)
        self.activation = parse_activation(options)
        if output_filters < 1 or hidden_filters < 1:
            raise DLServerError(
                f"{self.where}: crnn output_filters={output_filters}, hidden_filters={hidden_filters}:"
                " both must be at least 1"
            )
        if h < 1 or w < 1 or c < 1:
            raise DLServerError(f"{self.where}: layer before crnn layer must output an image")
        h, w = w, h  # make_crnn_layer(batch, w, h, ...) in parse_crnn
        rows = self.batch * self.steps
        k, m = hidden_filters, output_filters
        weights = 9 * (c * k + k * k + k * m)
        self.check_size(weights + rows * h * w * (4 * k + 2 * m + 9 * max(c, k)), "crnn layer")
        self.h, self.w, self.c = h, w, c
        self.out_h, self.out_w, self.out_c = h, w, m
        self.inputs = h * w * c
        self.hidden = h * w * k
        self.outputs = h * w * m
        act = activation_name(self.activation)
        self.input_layer = self.convolutional(options, h, w, c, k, act)
        self.self_layer = self.convolutional(options, h, w, k, k, act)
        self.output_layer = self.convolutional(options, h, w, k, m, act)
        self.file_order = self.subs
        self.shortcut = 0
        self.allocate()

    def allocate(self) -> None:
        self.output = self.output_layer.full["output"]
        self.state = zeros((self.steps + 1) * self.batch * self.hidden)
        if self.delta is not None:
            self.delta = self.output_layer.full["delta"]

    def describe(self):
        return (
            f"CRNN Layer: {self.h} x {self.w} x {self.c} image, {self.out_c} filters" + self.describe_subs()
        )
