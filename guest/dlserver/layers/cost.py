"""Cost layer (Darknet cost_layer.c, the CPU forward_cost_layer of the 2018-09 version), only
active with a truth t (training), over the n = batch*inputs values x of its input:

type = sse (default) | masked | smooth | L1 | seg | wgan;  scale = 1
  sse, seg, wgan: err = (t - x)^2, delta = t - x          (the CPU build has no seg/wgan code:
                                                           they are sse there, so here too)
  masked:  x = -1234 where t = -1234 (in the previous layer's output, as Darknet), then sse
  smooth:  |t - x| < 1: as sse; else err = 2|t - x| - 1, delta = (t - x < 0) ? 1 : -1
           (Darknet's sign, kept: it points away from the truth there)
  L1:      err = |t - x|, delta = (t - x > 0) ? 1 : -1
cost = sum of err (a sequential float sum); the layer's output is err (Darknet's l.output),
left as it was when there is no truth (inference).
backward: prev_delta += scale * delta.
ratio, noobj, thresh (and the common smooth=) only change Darknet's GPU forward: read, not used.
"""

from .. import kernels
from ..errors import DLServerError
from ..kernels import CostType
from ..rng import f32
from .base import Layer

COST_TYPES = {
    "seg": CostType.L2,
    "sse": CostType.L2,
    "masked": CostType.MASKED,
    "smooth": CostType.SMOOTH,
    "L1": CostType.L1,
    "wgan": CostType.L2,
}


class CostLayer(Layer):
    kind = "cost"
    is_cost = True
    has_cost = True

    def __init__(self, options, batch, h, w, c, inputs):
        super().__init__(batch, h, w, c, inputs)
        self.cost_type = options.find_str("type", "sse")
        if self.cost_type not in COST_TYPES:
            raise DLServerError(
                f"{options.path}:{options.line}: cost type '{self.cost_type}' is unknown"
                f" (use one of {', '.join(COST_TYPES)})"
            )
        self.code = COST_TYPES[self.cost_type]
        self.scale = f32(options.find_float("scale", 1, quiet=True))
        if inputs < 1:
            raise DLServerError(f"{options.path}:{options.line}: cost layer has no inputs")
        self.ratio = options.find_float("ratio", 0, quiet=True)
        self.noobject_scale = options.find_float("noobj", 1, quiet=True)
        self.thresh = options.find_float("thresh", 0, quiet=True)
        self.outputs = inputs
        self.out_h, self.out_w, self.out_c = h, w, c
        self.cost = 0.0
        self.allocate()

    def forward(self, net, input_buf, train):
        self.cost = 0.0
        if train and net.truth is not None:
            n = self.batch * self.inputs
            self.cost = kernels.cost_forward(self.code, input_buf, net.truth, self.delta, self.output, n)

    def backward(self, net, input_buf, prev_delta):
        if prev_delta is not None:
            kernels.axpy(self.batch * self.inputs, self.scale, self.delta, prev_delta)

    def describe(self):
        return f"cost                                           {self.inputs:4d}"
