"""Long short-term memory (Darknet lstm_layer.c): eight linear connected sublayers.

output = n (cfg `output`), batch_normalize (0). Sublayers built (and randomly initialised) as
uf, ui, ug, uo (inputs -> n, on x_t), wf, wi, wg, wo (n -> n, on h), saved and loaded as
wi, wf, wo, wg, ui, uf, uo, ug. Hidden h and cell c carry across calls and batches. Per step t:

    forward:  f = logistic(wf(h) + uf(x_t));  i = logistic(wi(h) + ui(x_t))
              g = tanh(wg(h) + ug(x_t));      o = logistic(wo(h) + uo(x_t))
              c = f*c + i*g;  h = o*tanh(c);  y_t = h;  cell_t = c
    backward (Darknet's backward_lstm_layer), t = T-1 .. 0, dy = delta_t, dc from step t+1
              (0 at the last step), c_prev/h_prev = cell/y of t-1 (t = 0: the c/h the batch
              started from):
              dc' = dy*o*tanh'(tanh c) + dc
              do = dy*tanh(c)*o(1-o)       -> wo.delta (into delta_{t-1}), uo.delta
              dg = dc'*i*(1-g^2)           -> wg, ug;   di = dc'*g*i(1-i) -> wi, ui
              df = dc'*c_prev*f(1-f)       -> wf, uf;   dc = dc'*f
              w*.backward(h_prev, into delta_{t-1});  u*.backward(x_t, into the previous
              layer's delta rows of t)
    update:   wf, wi, wg, wo, uf, ui, ug, uo.

Differs from Darknet: its CPU build does not train an LSTM (make_lstm_layer sets no backward
and no delta, so train_network crashes). backward here is its backward_lstm_layer, with the
step-0 inputs it misses (Darknet would use cell_0 and y_0 for c_prev and h_prev there, and
carry dc over from the previous batch).
"""

from .. import kernels
from ..buffers import view, zeros
from ..kernels import Activation
from .recurrent import RecurrentLayer, copy

LOGISTIC = Activation.LOGISTIC
TANH = Activation.TANH


class LstmLayer(RecurrentLayer):
    kind = "lstm"

    def __init__(self, options, batch, h, w, c, inputs, net=None, index=0):
        super().__init__(options, batch, h, w, c, inputs, net=net, index=index)
        self.outputs = outputs = self.gate_outputs(options, inputs, gates=4, row_buffers=20)
        sublayers = self.linear_sublayers(options, inputs, outputs, "uuuuwwww")
        self.uf, self.ui, self.ug, self.uo, self.wf, self.wi, self.wg, self.wo = sublayers
        self.file_order = [self.wi, self.wf, self.wo, self.wg, self.ui, self.uf, self.uo, self.ug]
        self.allocate()

    def allocate(self) -> None:
        n = self.outputs * self.batch
        self.output = zeros(n * self.steps)
        self.cell = zeros(n * self.steps)
        if self.delta is not None:
            self.delta = zeros(n * self.steps)
        self.f, self.i, self.g, self.o = zeros(n), zeros(n), zeros(n), zeros(n)
        self.c_cpu, self.h_cpu, self.c0, self.h0 = zeros(n), zeros(n), zeros(n), zeros(n)
        self.temp, self.temp2, self.temp3, self.dc = zeros(n), zeros(n), zeros(n), zeros(n)

    def update_order(self) -> list:
        return [self.wf, self.wi, self.wg, self.wo, self.uf, self.ui, self.ug, self.uo]

    def _gates(self, n: int) -> None:
        for gate, w, u in (
            (self.f, self.wf, self.uf),
            (self.i, self.wi, self.ui),
            (self.g, self.wg, self.ug),
            (self.o, self.wo, self.uo),
        ):
            copy(n, w.output, gate)
            kernels.axpy(n, 1.0, u.output, gate)
        for gate in (self.f, self.i):
            kernels.activate(gate, n, LOGISTIC)
        kernels.activate(self.g, n, TANH)
        kernels.activate(self.o, n, LOGISTIC)

    def forward(self, net, input_buf, train):
        self.check_input(input_buf)
        n = self.outputs * self.batch
        self.clear_sub_deltas()
        if train:
            kernels.fill(len(self.delta), 0.0, self.delta)
            copy(n, self.h_cpu, self.h0)
            copy(n, self.c_cpu, self.c0)
        for t in range(self.steps):
            for sub in self.subs:
                self.at_step(sub, t)
            for w in (self.wf, self.wi, self.wg, self.wo):
                w.forward(net, self.h_cpu, train)
            x = self.input_at(input_buf, t)
            for u in (self.uf, self.ui, self.ug, self.uo):
                u.forward(net, x, train)
            self._gates(n)
            copy(n, self.i, self.temp)
            kernels.rnn_mul(n, self.g, self.temp)
            kernels.rnn_mul(n, self.f, self.c_cpu)
            kernels.axpy(n, 1.0, self.temp, self.c_cpu)
            copy(n, self.c_cpu, self.h_cpu)
            kernels.activate(self.h_cpu, n, TANH)
            kernels.rnn_mul(n, self.o, self.h_cpu)
            copy(n, self.c_cpu, view(self.cell, t * n, n))
            copy(n, self.h_cpu, view(self.output, t * n, n))

    def backward(self, net, input_buf, prev_delta):
        n = self.outputs * self.batch
        c, h, temp, temp2, temp3, dc = self.c_cpu, self.h_cpu, self.temp, self.temp2, self.temp3, self.dc
        c_end, h_end = zeros(n), zeros(n)  # Darknet's backward leaves c, h at step 0's values
        copy(n, c, c_end)
        copy(n, h, h_end)
        kernels.fill(n, 0.0, dc)
        prev_cell, prev_state = zeros(n), zeros(n)
        for t in range(self.steps - 1, -1, -1):
            for sub in self.subs:
                self.at_step(sub, t)
            copy(n, view(self.cell, (t - 1) * n, n) if t else self.c0, prev_cell)
            copy(n, view(self.cell, t * n, n), c)
            copy(n, view(self.output, (t - 1) * n, n) if t else self.h0, prev_state)
            copy(n, view(self.output, t * n, n), h)
            dh = view(self.delta, (t - 1) * n, n) if t else None
            self._gates(n)
            copy(n, view(self.delta, t * n, n), temp3)
            copy(n, c, temp)
            kernels.activate(temp, n, TANH)
            copy(n, temp3, temp2)
            kernels.rnn_mul(n, self.o, temp2)
            kernels.gradient(temp, n, TANH, temp2)
            kernels.axpy(n, 1.0, dc, temp2)

            copy(n, c, temp)
            kernels.activate(temp, n, TANH)
            kernels.rnn_mul(n, temp3, temp)
            kernels.gradient(self.o, n, LOGISTIC, temp)
            self._backward_pair(net, self.wo, self.uo, temp, prev_state, dh, input_buf, prev_delta, t)

            copy(n, temp2, temp)
            kernels.rnn_mul(n, self.i, temp)
            kernels.gradient(self.g, n, TANH, temp)
            self._backward_pair(net, self.wg, self.ug, temp, prev_state, dh, input_buf, prev_delta, t)

            copy(n, temp2, temp)
            kernels.rnn_mul(n, self.g, temp)
            kernels.gradient(self.i, n, LOGISTIC, temp)
            self._backward_pair(net, self.wi, self.ui, temp, prev_state, dh, input_buf, prev_delta, t)

            copy(n, temp2, temp)
            kernels.rnn_mul(n, prev_cell, temp)
            kernels.gradient(self.f, n, LOGISTIC, temp)
            self._backward_pair(net, self.wf, self.uf, temp, prev_state, dh, input_buf, prev_delta, t)

            copy(n, temp2, temp)
            kernels.rnn_mul(n, self.f, temp)
            copy(n, temp, dc)
        copy(n, c_end, c)  # the carried state is the forward's, not backward's scratch
        copy(n, h_end, h)

    def _backward_pair(self, net, w, u, delta, prev_state, dh, input_buf, prev_delta, t):
        n = self.outputs * self.batch
        copy(n, delta, w.delta)
        w.backward(net, prev_state, dh)
        copy(n, delta, u.delta)
        below = self.input_at(prev_delta, t) if prev_delta is not None else None
        u.backward(net, self.input_at(input_buf, t), below)

    def describe(self):
        return f"LSTM Layer: {self.inputs} inputs, {self.outputs} outputs" + self.describe_subs()
