"""Route layer (Darknet route_layer.c): the outputs of earlier layers, concatenated.

layers = i, j, ...   (negative values count back from this layer: -1 is the previous one)
out[b] = layer_i.out[b] ++ layer_j.out[b] ++ ...   (per batch row, in list order)
out_w, out_h of the first source; out_c = sum of out_c when every source has the first's
w and h, else 0 x 0 x 0 (as Darknet; a following convolutional layer then refuses it).
backward: each slice of delta is added into its source's delta.
"""

from .. import kernels, limits
from ..buffers import view
from ..errors import DLServerError
from ..limits import check
from .base import Layer, earlier_layer


class RouteLayer(Layer):
    kind = "route"
    needs_network = True  # reads earlier layers

    def __init__(self, options, batch, h, w, c, inputs, net=None, index=0):
        super().__init__(batch, h, w, c, inputs)
        where = f"{options.path}:{options.line}"
        text = options.find_str("layers", None, quiet=True)
        if text is None:
            raise DLServerError(f"{where}: route layer must specify input layers (layers=...)")
        self.input_layers = []
        items = text.split(",")
        check(where, "route sources", len(items), limits.MAX_ROUTE_SOURCES, "MAX_ROUTE_SOURCES")
        for item in items:
            context = f"{where}: layers={text}"
            self.input_layers.append(earlier_layer(item, index, context, f"'{item}' is not a layer index"))
        sources = [net.layers[i] for i in self.input_layers]
        self.input_sizes = [layer.outputs for layer in sources]
        first = sources[0]
        self.out_w, self.out_h, self.out_c = first.out_w, first.out_h, first.out_c
        for layer in sources[1:]:
            if layer.out_w == first.out_w and layer.out_h == first.out_h:
                self.out_c += layer.out_c
            else:
                self.out_w = self.out_h = self.out_c = 0
        self.outputs = sum(self.input_sizes)
        self.inputs = self.outputs
        self.allocate()

    def forward(self, net, input_buf, train):
        out = memoryview(self.output)
        offset = 0
        for source, size in zip(self.input_layers, self.input_sizes):
            src = memoryview(net.layers[source].output)
            for b in range(self.batch):
                start = b * self.outputs + offset
                out[start : start + size] = src[b * size : (b + 1) * size]
            offset += size

    def backward(self, net, input_buf, prev_delta):
        """source.delta[b] += delta[b][slice of that source]."""
        offset = 0
        for source, size in zip(self.input_layers, self.input_sizes):
            target = net.layers[source].delta
            if target is not None:
                for b in range(self.batch):
                    kernels.axpy(
                        size,
                        1.0,
                        view(self.delta, b * self.outputs + offset, size),
                        view(target, b * size, size),
                    )
            offset += size

    def describe(self):
        return "route " + "".join(f" {i}" for i in self.input_layers)
