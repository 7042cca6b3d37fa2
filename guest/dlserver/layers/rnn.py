"""Recurrent layer (Darknet rnn_layer.c): three connected sublayers and a hidden state.

output = n (cfg `output`), activation f (default logistic), shortcut (0), batch_normalize (0).
Sublayers (built and saved in this order): input (inputs -> n), self (n -> n), output (n -> n),
each connected with activation f. Per time step t (B rows of x_t, see recurrent.py):

    forward:  a_t = input(x_t);  b_t = self(s);  s' = (shortcut ? s : 0) + a_t + b_t;
              y_t = output(s')                                   y_t: the layer's output rows
    state:    in training s starts at 0 each batch and every s' has its own slot
              (state: steps+1 slots); in inference one slot carries across calls.
    backward (Darknet's order, t = T-1 .. 0):
              slot t+1 = a_t + b_t (the state rebuilt without the shortcut term);
              output.backward(input slot t+1, into self.delta_t);
              self.backward(input slot t, into self.delta_{t-1}, nothing at t = 0);
              input.delta_t = self.delta_t (after self's activation gradient);
              shortcut: self.delta_{t-1} += self.delta_t;
              input.backward(input x_t, into the previous layer's delta rows of t).
    update:   each sublayer's SGD step (input, self, output).

Differs from Darknet: Darknet's CPU build allocates one state slot but writes steps+1 slots in
training (a heap overflow for time_steps > 1); here the state has steps+1 slots.
"""

from .. import kernels
from ..buffers import view, zeros
from ..errors import DLServerError
from .base import parse_activation
from .recurrent import RecurrentLayer, activation_name, copy


class RnnLayer(RecurrentLayer):
    kind = "rnn"

    def __init__(self, options, batch, h, w, c, inputs, net=None, index=0):
        super().__init__(options, batch, h, w, c, inputs, net=net, index=index)
        outputs = options.find_int("output", 1)
        self.activation = parse_activation(options)
        if outputs < 1:
            raise DLServerError(f"{self.where}: rnn output={outputs}: must be at least 1")
        if inputs < 1:
            raise DLServerError(f"{self.where}: rnn layer has no inputs")
        rows = self.batch * self.steps
        self.check_size(inputs * outputs + 2 * outputs * outputs + 9 * rows * outputs, "rnn layer")
        self.outputs = self.hidden = outputs
        act = activation_name(self.activation)
        self.input_layer = self.connected(options, inputs, outputs, act)
        self.self_layer = self.connected(options, outputs, outputs, act)
        self.output_layer = self.connected(options, outputs, outputs, act)
        self.file_order = self.subs
        self.shortcut = 0
        self.allocate()

    def parse_late_options(self, options):
        self.shortcut = options.find_int("shortcut", 0, quiet=True)

    def allocate(self) -> None:
        self.output = self.output_layer.full["output"]
        self.state = zeros((self.steps + 1) * self.batch * self.hidden)
        if self.delta is not None:
            self.delta = self.output_layer.full["delta"]

    def allocate_training(self) -> None:
        self.delta = self.output_layer.full["delta"]

    def forward(self, net, input_buf, train):
        self.check_input(input_buf)
        n = self.hidden * self.batch
        self.clear_sub_deltas()
        if train:
            kernels.fill(n, 0.0, self.state)
        slot = 0
        for t in range(self.steps):
            inp = self.at_step(self.input_layer, t)
            inp.forward(net, self.input_at(input_buf, t), train)
            slf = self.at_step(self.self_layer, t)
            slf.forward(net, view(self.state, slot, n), train)
            old = slot
            if train:
                slot += n
            state = view(self.state, slot, n)
            if self.shortcut:
                copy(n, view(self.state, old, n), state)
            else:
                kernels.fill(n, 0.0, state)
            kernels.axpy(n, 1.0, inp.output, state)
            kernels.axpy(n, 1.0, slf.output, state)
            self.at_step(self.output_layer, t).forward(net, state, train)

    def backward(self, net, input_buf, prev_delta):
        n = self.hidden * self.batch
        self_delta = self.self_layer.full["delta"]
        for t in range(self.steps - 1, -1, -1):
            inp = self.at_step(self.input_layer, t)
            slf = self.at_step(self.self_layer, t)
            out = self.at_step(self.output_layer, t)
            state = view(self.state, (t + 1) * n, n)
            copy(n, inp.output, state)
            kernels.axpy(n, 1.0, slf.output, state)
            out.backward(net, state, slf.delta)
            earlier = view(self_delta, (t - 1) * n, n) if t > 0 else None
            slf.backward(net, view(self.state, t * n, n), earlier)
            copy(n, slf.delta, inp.delta)
            if earlier is not None and self.shortcut:
                kernels.axpy(n, 1.0, slf.delta, earlier)
            below = self.input_at(prev_delta, t) if prev_delta is not None else None
            inp.backward(net, self.input_at(input_buf, t), below)

    def describe(self):
        return f"RNN Layer: {self.inputs} inputs, {self.outputs} outputs" + self.describe_subs()
