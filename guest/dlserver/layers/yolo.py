"""YOLO layer (Darknet yolo_layer.c): YOLOv3's detection head, inference and training.

Input = output shape: n masked anchors x (4 + 1 + classes) planes of h x w; entry e of
anchor slot a at cell (row j, col i) is at a*(classes+5)*h*w + e*h*w + j*w + i, with
e = 0 x, 1 y, 2 w, 3 h, 4 objectness, 5.. class scores.
forward: copy, then logistic on x, y and on objectness + classes (w, h stay raw).
Box decode (detector): bx = (i + x)/w, by = (j + y)/h, bw = exp(tw)*anchor_w/net_w,
bh = exp(th)*anchor_h/net_h, anchor = biases[2*mask[a]], biases[2*mask[a]+1].
Building the layer calls srand(0) in Darknet (docs/darknet-contract.md §10.2): Network applies it.

Training: forward with a truth (per image 90 boxes of 5 floats: x, y, w, h, class; x = 0 ends the
list) computes Darknet's deltas and cost (kernels.yolo_delta, guest/kernels/yolo.c, which states
them) and prints its stdout line `Region <layer index> Avg IOU: ...`; backward adds the delta
into the previous layer's (prev_delta += delta).

Differences from Darknet: a truth with a non-finite x, y, w or h, w or h <= 0, a cell outside
the grid or a class outside 0..classes-1 is skipped (Darknet writes outside its buffers or fills
the deltas with NaN/inf); truths are read only inside the truth buffer (Darknet's max= above 90
reads past the last image's).
"""

import math
import sys
from array import array

from .. import kernels, limits
from ..buffers import from_values, view
from ..errors import DLServerError
from ..kernels import Activation
from ..limits import check
from ..rng import f32
from .base import Layer

TRUTH_BOXES = 90  # boxes per image in the truth (Darknet's l.truths = 90*(4 + 1))


class YoloLayer(Layer):
    kind = "yolo"
    has_cost = True
    needs_network = True  # prints its index in training (Darknet's net.index)

    def __init__(self, options, batch, h, w, c, inputs, net=None, index=0):
        super().__init__(batch, h, w, c, inputs)
        self.index = index
        self.truths = TRUTH_BOXES * (4 + 1)
        where = self.where = f"{options.path}:{options.line}"
        self.classes = options.find_int("classes", 20)
        self.total = options.find_int("num", 1)
        if self.classes < 0 or self.total < 1:
            raise DLServerError(f"{where}: yolo needs classes >= 0 and num >= 1")
        check(where, "yolo num", self.total, limits.MAX_ANCHORS, "MAX_ANCHORS")
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
        self.max_boxes = options.find_int("max", TRUTH_BOXES, quiet=True)
        options.find_float("jitter", 0.2)  # data augmentation (detector train): read, not applied
        self.ignore_thresh = f32(options.find_float("ignore_thresh", 0.5))
        self.truth_thresh = f32(options.find_float("truth_thresh", 1))
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
        self.cost = 0.0
        self.allocate()

    def entry_index(self, b: int, location: int, entry: int) -> int:
        """Darknet entry_index: where entry `entry` of (anchor slot, cell) `location` lies."""
        hw = self.w * self.h
        n, loc = divmod(location, hw)
        return b * self.outputs + n * hw * (4 + self.classes + 1) + entry * hw + loc

    def forward(self, net, input_buf, train):
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
        self.cost = 0.0
        if train and net.truth is not None:
            self._training_deltas(net)  # zeroes the delta first
        elif self.delta is not None:
            kernels.fill(len(self.delta), 0.0, self.delta)  # Darknet's memset, train or not

    def init_weights(self, rng) -> None:
        """make_yolo_layer calls srand(0) (docs/darknet-contract.md §10.2)."""
        rng.srand(0)

    def _training_deltas(self, net) -> None:
        """Darknet's forward_yolo_layer in train mode (kernels.yolo_delta), its stdout line."""
        assert self.output is not None and self.delta is not None
        stats = array("f", bytes(4 * 9))
        kernels.yolo_delta(
            self.output,
            self.delta,
            self.batch,
            self.w,
            self.h,
            self.n,
            self.classes,
            array("i", self.mask),
            self.total,
            self.biases,
            net.w,
            net.h,
            net.truth,
            self.max_boxes,
            self.ignore_thresh,
            self.truth_thresh,
            stats,
        )
        self.cost = stats[0]
        avg_iou, recall, recall75, avg_cat, avg_obj, avg_anyobj = stats[1:7]
        count, class_count = int(stats[7]), int(stats[8])
        cells = self.w * self.h * self.n * self.batch
        sys.stdout.write(
            f"Region {self.index} Avg IOU: {c_float(avg_iou, count)}, Class: {c_float(avg_cat, class_count)},"
            f" Obj: {c_float(avg_obj, count)}, No Obj: {c_float(avg_anyobj, cells)},"
            f" .5R: {c_float(recall, count)}, .75R: {c_float(recall75, count)},  count: {count}\n"
        )

    def backward(self, net, input_buf, prev_delta):
        """backward_yolo_layer: prev_delta += delta (nothing before the first layer)."""
        if prev_delta is not None and self.delta is not None:
            n = self.batch * self.inputs
            kernels.axpy(n, 1.0, self.delta, prev_delta)

    def describe(self):
        return "yolo"


def c_float(value: float, by: int) -> str:
    """printf("%f") of the float32 quotient value/by, as glibc prints it on x86: 0/0 is the
    default NaN, whose sign bit is set ("-nan"); x/0 is an infinity."""
    if by == 0:
        if value == 0 or math.isnan(value):
            return "-nan"
        return "inf" if value > 0 else "-inf"
    quotient = f32(value / by)
    if math.isnan(quotient):
        return "-nan" if math.copysign(1.0, quotient) < 0 else "nan"
    return "%f" % quotient
