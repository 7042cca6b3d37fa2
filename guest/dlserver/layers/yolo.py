"""YOLO layer (Darknet yolo_layer.c), inference only.

Input = output shape: n masked anchors x (4 + 1 + classes) planes of h x w; entry e of
anchor slot a at cell (row j, col i) is at a*(classes+5)*h*w + e*h*w + j*w + i, with
e = 0 x, 1 y, 2 w, 3 h, 4 objectness, 5.. class scores.
forward: copy, then logistic on x, y and on objectness + classes (w, h stay raw).
Box decode (detector): bx = (i + x)/w, by = (j + y)/h, bw = exp(tw)*anchor_w/net_w,
bh = exp(th)*anchor_h/net_h, anchor = biases[2*mask[a]], biases[2*mask[a]+1].
Building the layer calls srand(0) in Darknet (docs/darknet-contract.md §10.2): Network applies it.
"""

from .. import kernels
from ..buffers import from_values, view
from ..errors import DLServerError
from ..kernels import Activation
from ..limits import MAX_ANCHORS, check
from .base import Layer


class YoloLayer(Layer):
    kind = "yolo"

    def __init__(self, options, batch, h, w, c, inputs):
        super().__init__(batch, h, w, c, inputs)
        where = self.where = f"{options.path}:{options.line}"
        self.classes = options.find_int("classes", 20)
        self.total = options.find_int("num", 1)
        if self.classes < 0 or self.total < 1:
            raise DLServerError(f"{where}: yolo needs classes >= 0 and num >= 1")
        check(where, "yolo num", self.total, MAX_ANCHORS, "MAX_ANCHORS")
        mask = options.find_list("mask", int)
        self.mask = mask if mask is not None else list(range(self.total))
        for m in self.mask:
            if not 0 <= m < self.total:
                raise DLServerError(f"{where}: yolo mask value {m} is not an anchor index (num={self.total})")
        self.n = len(self.mask)
        if h < 1 or w < 1:
            raise DLServerError(f"{where}: layer before yolo layer must output an image")
        self.out_w, self.out_h = w, h
        self.out_c = self.n * (self.classes + 5)
        self.outputs = h * w * self.out_c
        if self.outputs != inputs:
            raise DLServerError(
                f"{where}: yolo layer with {self.n} anchors x ({self.classes} classes + 5) needs"
                f" {self.out_c} input channels, the layer before gives {c}"
            )
        self.inputs = inputs
        options.find_int("max", 90, quiet=True)  # training options: read, not applied
        options.find_float("jitter", 0.2)
        options.find_float("ignore_thresh", 0.5)
        options.find_float("truth_thresh", 1)
        self.random = options.find_int("random", 0, quiet=True)
        if options.find_str("map", None, quiet=True) is not None:
            raise DLServerError(f"{where}: yolo map= (class maps) is not supported")
        anchors = options.find_list("anchors", float)
        biases = [0.5] * (2 * self.total)
        if anchors is not None:
            if len(anchors) > 2 * self.total:
                raise DLServerError(
                    f"{where}: {len(anchors)} anchor values, but num={self.total} has room"
                    f" for {2 * self.total}"
                )
            biases[: len(anchors)] = anchors
        self.biases = from_values(biases)
        self.allocate()

    def entry_index(self, b: int, location: int, entry: int) -> int:
        """Darknet entry_index: where entry `entry` of (anchor slot, cell) `location` lies."""
        hw = self.w * self.h
        n, loc = divmod(location, hw)
        return b * self.outputs + n * hw * (4 + self.classes + 1) + entry * hw + loc

    def forward(self, net, input_buf, train):
        if train:
            raise DLServerError(f"{self.where}: training yolo is not supported")
        out = self.output
        memoryview(out)[:] = memoryview(input_buf)[: len(out)]
        hw = self.w * self.h
        scores = (1 + self.classes) * hw
        for b in range(self.batch):
            for a in range(self.n):
                index = self.entry_index(b, a * hw, 0)
                kernels.activate(view(out, index, 2 * hw), 2 * hw, Activation.LOGISTIC)
                index = self.entry_index(b, a * hw, 4)
                kernels.activate(view(out, index, scores), scores, Activation.LOGISTIC)

    def init_weights(self, rng) -> None:
        """make_yolo_layer calls srand(0) (docs/darknet-contract.md §10.2)."""
        rng.srand(0)

    def prepare_training(self) -> None:
        raise DLServerError(f"{self.where}: training yolo is not supported")

    def backward(self, net, input_buf, prev_delta):
        raise DLServerError(f"{self.where}: training yolo is not supported")

    def describe(self):
        return "yolo"
