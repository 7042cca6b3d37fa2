"""Gated recurrent unit (Darknet gru_layer.c): six linear connected sublayers.

output = n (cfg `output`), tanh (0: the candidate uses logistic, 1: tanh), batch_normalize (0).
Sublayers built (and randomly initialised) as uz, wz, ur, wr, uh, wh (u*: inputs -> n on x_t,
w*: n -> n on the state), saved and loaded as wz, wr, wh, uz, ur, uh. Per time step t:

    forward:  z = logistic(uz(x_t) + wz(s));  r = logistic(ur(x_t) + wr(s))
              h = f(uh(x_t) + wh(r*s))          f = tanh if `tanh` else logistic
              y_t = z*s + (1-z)*h;  s = y_t    (the state carries across batches, as Darknet's)
    backward (Darknet's only GRU backward, backward_gru_layer_gpu; Darknet's CPU
              backward_gru_layer is empty), t = T-1 .. 0, s_prev = y_{t-1} (t = 0: the state
              the batch started from), dy = delta_t:
              delta_{t-1} += dy*z;  uh.delta += dy*(1-z);  uz.delta += dy*(s_prev - h)
              uh.delta *= f'(h);  wh.delta = uh.delta;  wh.backward(r*s_prev, into ds_r = 0)
              delta_{t-1} += ds_r*r;  ur.delta += ds_r*s_prev;  ur.delta *= r(1-r);
              wr.delta = ur.delta;  uz.delta *= z(1-z);  wz.delta = uz.delta
              wr, wz .backward(s_prev, into delta_{t-1});  uh, ur, uz .backward(x_t, into the
              previous layer's delta rows of t).
    update:   ur, uz, uh, wr, wz, wh.

Differs from Debian's Darknet (CPU build): there backward does nothing, so only weight decay
moves a GRU's weights and no delta reaches the layers below it.
"""

from .. import kernels
from ..buffers import view, zeros
from ..kernels import Activation
from .recurrent import RecurrentLayer, copy

TANH = Activation.TANH


class GruLayer(RecurrentLayer):
    kind = "gru"

    def __init__(self, options, batch, h, w, c, inputs, net=None, index=0):
        super().__init__(options, batch, h, w, c, inputs, net=net, index=index)
        self.outputs = outputs = self.gate_outputs(options, inputs, gates=3, row_buffers=14)
        self.uz, self.wz, self.ur, self.wr, self.uh, self.wh = self.linear_sublayers(
            options, inputs, outputs, "uwuwuw"
        )
        self.file_order = [self.wz, self.wr, self.wh, self.uz, self.ur, self.uh]
        self.tanh = 0
        self.allocate()

    def parse_late_options(self, options):
        self.tanh = options.find_int("tanh", 0, quiet=True)

    def allocate(self) -> None:
        n = self.outputs * self.batch
        self.output = zeros(n * self.steps)
        if self.delta is not None:
            self.delta = zeros(n * self.steps)
        self.state = zeros(n)
        self.prev_state = zeros(n)
        self.forgot_state = zeros(n)
        self.forgot_delta = zeros(n)
        self.r = zeros(n)
        self.z = zeros(n)
        self.h_cpu = zeros(n)

    def update_order(self) -> list:
        return [self.ur, self.uz, self.uh, self.wr, self.wz, self.wh]

    def _candidate(self, n: int) -> None:
        """h = f(uh.output + wh.output)."""
        copy(n, self.uh.output, self.h_cpu)
        kernels.axpy(n, 1.0, self.wh.output, self.h_cpu)
        if self.tanh:
            kernels.activate(self.h_cpu, n, TANH)
        else:
            kernels.activate(self.h_cpu, n, Activation.LOGISTIC)

    def _gates(self, n: int) -> None:
        """z = logistic(uz + wz), r = logistic(ur + wr) from the sublayers' outputs."""
        copy(n, self.uz.output, self.z)
        kernels.axpy(n, 1.0, self.wz.output, self.z)
        copy(n, self.ur.output, self.r)
        kernels.axpy(n, 1.0, self.wr.output, self.r)
        kernels.activate(self.z, n, Activation.LOGISTIC)
        kernels.activate(self.r, n, Activation.LOGISTIC)

    def forward(self, net, input_buf, train):
        self.check_input(input_buf)
        n = self.outputs * self.batch
        self.clear_sub_deltas()
        if train:
            kernels.fill(len(self.delta), 0.0, self.delta)
            copy(n, self.state, self.prev_state)
        for t in range(self.steps):
            for sub in self.subs:
                self.at_step(sub, t)
            self.wz.forward(net, self.state, train)
            self.wr.forward(net, self.state, train)
            x = self.input_at(input_buf, t)
            self.uz.forward(net, x, train)
            self.ur.forward(net, x, train)
            self.uh.forward(net, x, train)
            self._gates(n)
            copy(n, self.state, self.forgot_state)
            kernels.rnn_mul(n, self.r, self.forgot_state)
            self.wh.forward(net, self.forgot_state, train)
            self._candidate(n)
            out = view(self.output, t * n, n)
            kernels.rnn_weighted_sum(n, self.state, self.h_cpu, self.z, out)
            copy(n, out, self.state)

    def backward(self, net, input_buf, prev_delta):
        n = self.outputs * self.batch
        state = zeros(n)  # the state step t started from (Darknet reuses l.state)
        for t in range(self.steps - 1, -1, -1):
            for sub in self.subs:
                self.at_step(sub, t)
            copy(n, view(self.output, (t - 1) * n, n) if t else self.prev_state, state)
            earlier = view(self.delta, (t - 1) * n, n) if t else None
            self._gates(n)
            self._candidate(n)
            delta = view(self.delta, t * n, n)
            uh, uz = self.uh.delta, self.uz.delta
            kernels.rnn_weighted_delta(n, state, self.h_cpu, self.z, earlier, uh, uz, delta)
            if self.tanh:
                kernels.gradient(self.h_cpu, n, TANH, self.uh.delta)
            else:
                kernels.gradient(self.h_cpu, n, Activation.LOGISTIC, self.uh.delta)
            copy(n, self.uh.delta, self.wh.delta)
            copy(n, state, self.forgot_state)
            kernels.rnn_mul(n, self.r, self.forgot_state)
            kernels.fill(n, 0.0, self.forgot_delta)
            self.wh.backward(net, self.forgot_state, self.forgot_delta)
            if earlier is not None:
                kernels.rnn_mult_add(n, self.forgot_delta, self.r, earlier)
            kernels.rnn_mult_add(n, self.forgot_delta, state, self.ur.delta)
            kernels.gradient(self.r, n, Activation.LOGISTIC, self.ur.delta)
            copy(n, self.ur.delta, self.wr.delta)
            kernels.gradient(self.z, n, Activation.LOGISTIC, self.uz.delta)
            copy(n, self.uz.delta, self.wz.delta)
            self.wr.backward(net, state, earlier)
            self.wz.backward(net, state, earlier)
            x = self.input_at(input_buf, t)
            below = self.input_at(prev_delta, t) if prev_delta is not None else None
            self.uh.backward(net, x, below)
            self.ur.backward(net, x, below)
            self.uz.backward(net, x, below)

    def describe(self):
        return f"GRU Layer: {self.inputs} inputs, {self.outputs} outputs" + self.describe_subs()
