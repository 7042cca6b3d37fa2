"""Shortcut layer (Darknet shortcut_layer.c, blas.c shortcut_cpu): a residual connection.

from = i           (negative: counts back from this layer, -3 is three layers before it)
activation = linear (default), alpha = 1, beta = 1 (read after the layer-table line, as Darknet)
out:      a copy of the previous layer's output (w x h x c, the layer's output shape), then
          out = alpha*out + beta*from.out over the common part (kernels.shortcut): when the
          sizes differ, `from` is read every stride = from.w/w cells or written every
          sample = w/from.w cells, over min(c, from.c) channels; then the activation.
backward: delta *= act'(out); prev_delta += alpha*delta;
          from.delta = 1*from.delta + beta*delta (the same strided mapping, reversed).
Nothing to update.
"""

from .. import kernels
from ..errors import DLServerError
from ..rng import f32
from .base import Layer, earlier_layer, parse_activation


class ShortcutLayer(Layer):
    kind = "shortcut"
    needs_network = True  # reads an earlier layer

    def __init__(self, options, batch, h, w, c, inputs, net=None, index=0):
        super().__init__(batch, h, w, c, inputs)
        where = f"{options.path}:{options.line}"
        text = options.find_str("from", None, quiet=True)
        if text is None:
            raise DLServerError(f"{where}: shortcut layer must specify its source layer (from=...)")
        source = earlier_layer(text, index, f"{where}: from={text}", "not a layer index")
        if h < 1 or w < 1 or c < 1:
            raise DLServerError(f"{where}: layer before shortcut layer must output an image")
        src = net.layers[source]
        if src.out_w < 1 or src.out_h < 1 or src.out_c < 1:
            raise DLServerError(f"{where}: from={text}: layer {source} does not output an image")
        # shortcut_cpu asserts these: one factor for both directions
        if src.out_w // w != src.out_h // h or w // src.out_w != h // src.out_h:
            raise DLServerError(
                f"{where}: from={text}: layer {source}'s {src.out_w}x{src.out_h} and the input {w}x{h}"
                " do not scale by the same factor in width and height"
            )
        self.index = source
        # Darknet's make_shortcut_layer: l.w, h, c are the source's; out_* the previous layer's
        self.w, self.h, self.c = src.out_w, src.out_h, src.out_c
        self.out_w, self.out_h, self.out_c = w, h, c
        self.outputs = w * h * c
        self.inputs = self.outputs
        self.activation = 0
        self.alpha = self.beta = 1.0
        self.allocate()

    def parse_late_options(self, options):
        """Darknet's parse_shortcut reads these after make_shortcut_layer printed its line."""
        self.activation = parse_activation(options, "linear")
        self.alpha = f32(options.find_float("alpha", 1, quiet=True))
        self.beta = f32(options.find_float("beta", 1, quiet=True))

    def forward(self, net, input_buf, train):
        n = self.batch * self.outputs
        memoryview(self.output)[:n] = memoryview(input_buf)[:n]
        src = net.layers[self.index]
        kernels.shortcut(
            self.batch, self.w, self.h, self.c, src.output,
            self.out_w, self.out_h, self.out_c, self.alpha, self.beta, self.output,
        )  # fmt: skip
        kernels.activate(self.output, n, self.activation)

    def backward(self, net, input_buf, prev_delta):
        n = self.batch * self.outputs
        kernels.gradient(self.output, n, self.activation, self.delta)
        if prev_delta is not None:
            kernels.axpy(n, self.alpha, self.delta, prev_delta)
        target = net.layers[self.index].delta
        if target is not None:
            kernels.shortcut(
                self.batch, self.out_w, self.out_h, self.out_c, self.delta,
                self.w, self.h, self.c, 1.0, self.beta, target,
            )  # fmt: skip

    def describe(self):
        return (
            f"res  {self.index:3d}                {self.w:4d} x{self.h:4d} x{self.c:4d}   ->  "
            f"{self.out_w:4d} x{self.out_h:4d} x{self.out_c:4d}"
        )
