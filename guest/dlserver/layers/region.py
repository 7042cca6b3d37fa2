"""Region layer (Darknet region_layer.c): YOLOv2's detection head, inference.

Input = output shape: n anchors x (coords + 1 + classes) planes of h x w (channels must be
n*(coords + 1 + classes)); entry e of anchor a at cell (row j, col i) is at
(a*(coords+1+classes) + e)*h*w + j*w + i, with e = 0 x, 1 y, 2 w, 3 h, (4 .. coords-1 mask),
coords objectness, coords+1.. class scores.
forward (Darknet's CPU path): copy, logistic on x and y, on objectness (unless background),
  on the class scores unless softmax or tree; softmax=1: a softmax over the classes (+ background)
  of each (anchor, cell), read from the raw input; tree=FILE: a softmax over each group of the
  WordTree (layers/softmax.py) per (anchor, cell), temperature 1.
Box decode (detector, get_region_detections): bx = (i + x)/w, by = (j + y)/h,
  bw = exp(tw)*anchor_w/w, bh = exp(th)*anchor_h/h (anchors in cells, biases[2a], biases[2a+1]);
  objectness p = sigma(to) (1 with background), kept if > thresh; class probabilities
  p*class_k where > thresh; with a tree the class probabilities are multiplied down the
  tree and the top prediction above the hierarchy threshold (0.5) gets p. Boxes are mapped
  back through the letterbox by correct_region_boxes (= correct_yolo_boxes).
Building the layer calls srand(0) in Darknet (as [yolo]).

Training: forward with a truth (per image 30 boxes of coords + 1 floats: x, y, w, h, [mask], class;
x = 0 ends the list) computes Darknet's deltas and cost (kernels.region_delta, guest/kernels/region.c,
which states them) and prints its `Region Avg IOU: ...` line; backward does nothing, as Darknet's
CPU backward_region_layer (whose body is commented out: the CPU build sends no gradient to the
layers before; its GPU build does).

Differences from Darknet:
  - with tree=, Darknet's CPU forward runs the group softmaxes with stride n*w*h from the wrong
    base and the region's temperature, which nothing sets (0: a division by zero); we use the
    layout of its GPU path (and of get_region_detections): each group over the class entries
    of one (anchor, cell), temperature 1.
  - in training, truths outside the grid or with a class outside 0..classes-1 are skipped, where
    Darknet would write outside its buffers.
"""

import math
import sys
from array import array

from .. import kernels
from ..buffers import from_values, view
from ..config import read_list
from ..errors import DLServerError
from ..kernels import Activation
from ..rng import f32
from .base import Layer
from .softmax import read_tree


class RegionLayer(Layer):
    kind = "region"
    has_cost = True

    def __init__(self, options, batch, h, w, c, inputs):
        super().__init__(batch, h, w, c, inputs)
        where = self.where = f"{options.path}:{options.line}"
        self.coords = options.find_int("coords", 4)
        self.classes = options.find_int("classes", 20)
        self.n = options.find_int("num", 1)
        if self.coords < 4 or self.classes < 1 or self.n < 1:
            raise DLServerError(f"{where}: region needs coords >= 4, classes >= 1 and num >= 1")
        if h < 1 or w < 1:
            raise DLServerError(f"{where}: layer before region layer must output an image")
        self.out_w, self.out_h = w, h
        self.out_c = self.n * (self.classes + self.coords + 1)
        if self.out_c != c or h * w * self.out_c != inputs:
            raise DLServerError(
                f"{where}: region layer with num={self.n} x"
                f" (coords={self.coords} + 1 + classes={self.classes}) needs {self.out_c} input channels,"
                f" the layer before gives {c}"
            )
        self.c = self.out_c
        self.outputs = self.inputs = inputs
        self.biases = from_values([0.5] * (2 * self.n))
        self.tree = None
        self.map: list[int] | None = None
        self.allocate()

    def parse_late_options(self, options):
        """Darknet's parse_region reads these after make_region_layer printed `detection`."""
        where = self.where
        options.find_int("log", 0, quiet=True)
        self.sqrt = options.find_int("sqrt", 0, quiet=True)
        self.softmax = options.find_int("softmax", 0)
        self.background = options.find_int("background", 0, quiet=True)
        options.find_int("max", 30, quiet=True)
        self.jitter = options.find_float("jitter", 0.2)
        self.rescore = options.find_int("rescore", 0, quiet=True)
        self.thresh = f32(options.find_float("thresh", 0.5))
        options.find_int("classfix", 0, quiet=True)
        options.find_int("absolute", 0, quiet=True)
        self.random = options.find_int("random", 0, quiet=True)
        self.coord_scale = options.find_float("coord_scale", 1)
        self.object_scale = options.find_float("object_scale", 1)
        self.noobject_scale = options.find_float("noobject_scale", 1)
        self.mask_scale = options.find_float("mask_scale", 1)
        self.class_scale = options.find_float("class_scale", 1)
        self.bias_match = options.find_int("bias_match", 0, quiet=True)
        tree_file = options.find_str("tree", None)
        if tree_file is not None:
            self.tree = read_tree(tree_file, where)
            if self.tree.n != self.classes:
                raise DLServerError(
                    f"{where}: tree={tree_file} has {self.tree.n} classes,"
                    f" the region layer classes={self.classes}"
                )
        map_file = options.find_str("map", None)
        if map_file is not None:
            self.map = read_map(map_file, where, self.classes)
        anchors = options.find_list("anchors", float)
        if anchors is not None:
            if len(anchors) > 2 * self.n:
                raise DLServerError(
                    f"{where}: {len(anchors)} anchor values, but num={self.n} has room for {2 * self.n}"
                )
            for i, value in enumerate(anchors):
                self.biases[i] = value

    def entry_index(self, b: int, location: int, entry: int) -> int:
        """Darknet entry_index: where entry `entry` of (anchor, cell) `location` lies."""
        hw = self.w * self.h
        n, loc = divmod(location, hw)
        return b * self.outputs + n * hw * (self.coords + self.classes + 1) + entry * hw + loc

    def forward(self, net, input_buf, train):
        out = self.output
        memoryview(out)[:] = memoryview(input_buf)[: len(out)]
        hw = self.w * self.h
        for b in range(self.batch):
            for a in range(self.n):
                index = self.entry_index(b, a * hw, 0)
                kernels.activate(view(out, index, 2 * hw), 2 * hw, Activation.LOGISTIC)
                if not self.background:
                    index = self.entry_index(b, a * hw, self.coords)
                    kernels.activate(view(out, index, hw), hw, Activation.LOGISTIC)
                if not self.softmax and self.tree is None:
                    index = self.entry_index(b, a * hw, self.coords + 1)
                    n = self.classes * hw
                    kernels.activate(view(out, index, n), n, Activation.LOGISTIC)
        if self.tree is not None:
            first = self.entry_index(0, 0, self.coords + 1)
            for size, offset in zip(self.tree.group_size, self.tree.group_offset):
                if size:
                    self._softmax_cells(input_buf, first + offset * hw, size)
        elif self.softmax:
            start = self.entry_index(0, 0, self.coords + (0 if self.background else 1))
            self._softmax_cells(input_buf, start, self.classes + self.background)
        self.cost = 0.0
        if train and net.truth is not None:
            self._training_deltas(net)

    def _softmax_cells(self, input_buf, start: int, size: int) -> None:
        """Softmax over `size` class entries, hw apart, from `start` in every cell of every
        anchor of every image: output from the input (Darknet's softmax_cpu call)."""
        hw = self.w * self.h
        assert self.output is not None
        kernels.softmax_strided(
            memoryview(input_buf)[start:],
            size,
            self.batch * self.n,
            self.inputs // self.n,
            hw,
            1,
            hw,
            1.0,
            memoryview(self.output)[start:],
        )

    def init_weights(self, rng) -> None:
        """make_region_layer calls srand(0)."""
        rng.srand(0)

    def skip_init_weights(self, rng) -> None:
        rng.srand(0)

    def _training_deltas(self, net) -> None:
        """Darknet's forward_region_layer in train mode (kernels.region_delta), its stdout line."""
        empty = array("i")
        t = self.tree
        assert self.output is not None and self.delta is not None
        stats = array("f", bytes(32))
        scales = array(
            "f", [self.noobject_scale, self.object_scale, self.coord_scale, self.class_scale, self.mask_scale]
        )
        kernels.region_delta(
            self.output,
            self.delta,
            self.batch,
            self.w,
            self.h,
            self.n,
            self.classes,
            self.coords,
            self.biases,
            net.truth,
            self.thresh,
            scales,
            bool(self.rescore),
            bool(self.background),
            bool(self.bias_match),
            bool(self.softmax),
            net.seen,
            array("i", self.map) if self.map else empty,
            t.parent if t else empty,
            t.group if t else empty,
            t.group_size if t else empty,
            t.group_offset if t else empty,
            stats,
        )
        self.cost = stats[0]
        count, class_count = int(stats[6]), int(stats[7])
        cells = self.w * self.h * self.n * self.batch

        def ratio(value: float, by: int) -> float:
            if by:
                return f32(value / by)
            return math.nan if value == 0 or math.isnan(value) else math.copysign(math.inf, value)

        sys.stdout.write(
            "Region Avg IOU: %f, Class: %f, Obj: %f, No Obj: %f, Avg Recall: %f,  count: %d\n"
            % (
                ratio(stats[1], count),
                ratio(stats[3], class_count),
                ratio(stats[4], count),
                ratio(stats[5], cells),
                ratio(stats[2], count),
                count,
            )
        )

    def backward(self, net, input_buf, prev_delta):
        """Nothing, as Darknet's CPU backward_region_layer (its body is commented out)."""

    def tree_arrays(self) -> tuple:
        """The WordTree as region_boxes takes it (empty arrays: no tree)."""
        if self.tree is None:
            empty = array("i")
            return empty, empty, empty, empty
        t = self.tree
        return t.parent, t.group_size, t.group_offset, t.child

    def describe(self):
        return "detection"


def read_map(path: str, where: str, classes: int) -> list[int]:
    """Darknet read_map: one class index per line (the training label -> tree class)."""
    try:
        lines = read_list(path, "map file")
    except DLServerError as e:
        raise DLServerError(f"{where}: map={path}: {e}") from None
    values = []
    for number, line in enumerate(lines, 1):
        try:
            value = int(line.strip())
        except ValueError:
            raise DLServerError(
                f"{path}:{number}: map file: '{line}' is not a class index (map= at {where})"
            ) from None
        if not 0 <= value < classes:
            raise DLServerError(
                f"{path}:{number}: map file: class {value} is outside the {classes} classes (map= at {where})"
            )
        values.append(value)
    return values
