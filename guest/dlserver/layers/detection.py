"""Detection layer (Darknet detection_layer.c): YOLOv1's head, after a connected layer.

Inputs = side*side*((1 + coords)*num + classes) values per image (Darknet asserts it), laid
out as side*side cells of `classes` class probabilities, then side*side*num confidences, then
side*side*num boxes of 4 (x, y within the cell; w, h relative to the image, square-rooted
with sqrt=1).
forward: a copy; softmax=1: a softmax over each cell's classes (temperature 1).
training (Darknet's forward_detection_layer in train mode; truth per cell: is_obj, classes
  one-hot, box x y w h): delta = noobject_scale*(0 - conf) for every confidence; at cells with
  an object: class deltas class_scale*(t - p), the responsible box = the one of highest IoU
  with the truth (or lowest RMSE when no IoU > 0; forced=1: by truth area; random=1 and
  seen < 64000: rand() % num), its confidence delta object_scale*(1 - conf) (or
  object_scale*(iou - conf) with rescore), its coordinate deltas coord_scale*(t - x) (sqrt(t)
  for w, h with sqrt); cost = |delta|^2; stdout `Detection Avg IOU: ...` as Darknet.
  (Ours: a cell with no box to blame, only possible with NaN outputs, gets no confidence or
  box delta; Darknet would write before the cell's boxes. forced=1 needs num >= 2.)
backward: prev_delta += delta.
Box decode (detector, get_detection_detections): x = (x + col)/side*im_w, y = (y + row)/side*im_h,
  w = w^(sqrt ? 2 : 1)*im_w, h likewise, in pixels (not corrected for the letterbox, as in
  Darknet); probabilities conf*class where > thresh.
Building the layer calls srand(0) in Darknet (as [yolo]).
"""

import math
import sys

from .. import kernels
from ..errors import DLServerError
from ..rng import f32
from .base import Layer


class DetectionLayer(Layer):
    kind = "detection"
    has_cost = True

    def __init__(self, options, batch, h, w, c, inputs):
        super().__init__(batch, h, w, c, inputs)
        where = self.where = f"{options.path}:{options.line}"
        self.coords = options.find_int("coords", 1)
        self.classes = options.find_int("classes", 1)
        self.rescore = options.find_int("rescore", 0)
        self.n = options.find_int("num", 1)
        self.side = options.find_int("side", 7)
        if self.coords != 4 or self.classes < 1 or self.n < 1 or self.side < 1:
            raise DLServerError(f"{where}: detection needs coords=4, classes >= 1, num >= 1 and side >= 1")
        need = self.side * self.side * ((1 + self.coords) * self.n + self.classes)
        if need != inputs:
            raise DLServerError(
                f"{where}: detection layer with side={self.side}, num={self.n}, coords={self.coords} and"
                f" classes={self.classes} needs {need} inputs"
                f" ({self.side}*{self.side}*((1+{self.coords})*{self.n} + {self.classes})),"
                f" the layer before gives {inputs}"
            )
        self.w = self.h = self.side
        self.outputs = self.inputs = inputs
        self.out_w = self.out_h = self.out_c = 0
        self.truths = self.side * self.side * (1 + self.coords + self.classes)
        self.cost = 0.0
        self.allocate()

    def parse_late_options(self, options):
        """Darknet's parse_detection reads these after make_detection_layer printed its line."""
        self.softmax = options.find_int("softmax", 0)
        self.sqrt = options.find_int("sqrt", 0)
        options.find_int("max", 90, quiet=True)
        self.coord_scale = f32(options.find_float("coord_scale", 1))
        self.forced = options.find_int("forced", 0)
        if self.forced and self.n < 2:
            raise DLServerError(f"{self.where}: detection forced=1 picks box 0 or 1: it needs num >= 2")
        self.object_scale = f32(options.find_float("object_scale", 1))
        self.noobject_scale = f32(options.find_float("noobject_scale", 1))
        self.class_scale = f32(options.find_float("class_scale", 1))
        self.jitter = options.find_float("jitter", 0.2)
        self.random = options.find_int("random", 0, quiet=True)
        options.find_int("reorg", 0, quiet=True)

    def forward(self, net, input_buf, train):
        n = self.batch * self.inputs
        memoryview(self.output)[:n] = memoryview(input_buf)[:n]
        if self.softmax:
            locations = self.side * self.side
            # each cell's classes: batch rows of `inputs`, `locations` groups of `classes`
            kernels.softmax_strided(
                self.output,
                self.classes,
                self.batch,
                self.inputs,
                locations,
                self.classes,
                1,
                1.0,
                self.output,
            )
        self.cost = 0.0
        if train and net.truth is not None:
            self._training_deltas(net)

    def _training_deltas(self, net) -> None:
        """Darknet's forward_detection_layer in train mode (float32 steps as its C); per cell."""
        out, truth, delta = self.output, net.truth, self.delta
        assert out is not None and delta is not None
        kernels.fill(len(delta), 0.0, delta)
        side, n, classes = self.side, self.n, self.classes
        locations = side * side
        avg_iou = avg_cat = avg_allcat = avg_obj = avg_anyobj = 0.0
        count = 0
        for b in range(self.batch):
            index = b * self.inputs
            for i in range(locations):
                t = (b * locations + i) * (1 + self.coords + classes)
                for j in range(n):
                    p = index + locations * classes + i * n + j
                    delta[p] = f32(self.noobject_scale * f32(0 - out[p]))
                    avg_anyobj = f32(avg_anyobj + out[p])
                if not truth[t]:
                    continue
                ci = index + i * classes
                for j in range(classes):
                    delta[ci + j] = f32(self.class_scale * f32(truth[t + 1 + j] - out[ci + j]))
                    if truth[t + 1 + j]:
                        avg_cat = f32(avg_cat + out[ci + j])
                    avg_allcat = f32(avg_allcat + out[ci + j])
                tb = t + 1 + classes
                tbox = (f32(truth[tb] / side), f32(truth[tb + 1] / side), truth[tb + 2], truth[tb + 3])
                best_index, best_iou, best_rmse = -1, 0.0, 20.0
                for j in range(n):
                    bi = index + locations * (classes + n) + (i * n + j) * self.coords
                    box = self._out_box(bi)
                    iou = _box_iou(box, tbox)
                    rmse = f32(math.sqrt(sum(f32(box[k] - tbox[k]) ** 2 for k in range(4))))
                    if best_iou > 0 or iou > 0:
                        if iou > best_iou:
                            best_iou, best_index = iou, j
                    elif rmse < best_rmse:
                        best_rmse, best_index = rmse, j
                if self.forced:
                    best_index = 1 if f32(tbox[2] * tbox[3]) < 0.1 else 0
                if self.random and net.seen < 64000:
                    best_index = net.rng.rand() % n
                if best_index < 0:  # no box to blame (NaN outputs): Darknet writes before the cell's boxes
                    continue
                bi = index + locations * (classes + n) + (i * n + best_index) * self.coords
                iou = _box_iou(self._out_box(bi), tbox)
                p = index + locations * classes + i * n + best_index
                avg_obj = f32(avg_obj + out[p])
                delta[p] = f32(self.object_scale * (1.0 - out[p]))  # 1. is a double
                if self.rescore:
                    delta[p] = f32(self.object_scale * f32(iou - out[p]))
                for k in range(4):
                    if self.sqrt and k >= 2:  # sqrt() is a double
                        delta[bi + k] = f32(self.coord_scale * (math.sqrt(truth[tb + k]) - out[bi + k]))
                    else:
                        delta[bi + k] = f32(self.coord_scale * f32(truth[tb + k] - out[bi + k]))
                avg_iou = f32(avg_iou + iou)
                count += 1
        total = 0.0
        for d in delta:
            total = f32(total + f32(d * d))
        self.cost = f32(f32(math.sqrt(total)) ** 2)
        sys.stdout.write(
            "Detection Avg IOU: %f, Pos Cat: %f, All Cat: %f, Pos Obj: %f, Any Obj: %f, count: %d\n"
            % (
                _ratio(avg_iou, count),
                _ratio(avg_cat, count),
                _ratio(avg_allcat, count * classes),
                _ratio(avg_obj, count),
                _ratio(avg_anyobj, self.batch * locations * n),
                count,
            )
        )

    def _out_box(self, bi: int) -> tuple:
        out, side = self.output, self.side
        assert out is not None
        w, h = out[bi + 2], out[bi + 3]
        if self.sqrt:
            w, h = f32(w * w), f32(h * h)
        return (f32(out[bi] / side), f32(out[bi + 1] / side), w, h)

    def backward(self, net, input_buf, prev_delta):
        if prev_delta is not None:
            kernels.axpy(self.batch * self.inputs, 1.0, self.delta, prev_delta)

    def init_weights(self, rng) -> None:
        """make_detection_layer calls srand(0)."""
        rng.srand(0)

    def skip_init_weights(self, rng) -> None:
        rng.srand(0)

    def describe(self):
        return "Detection Layer"


def _ratio(value: float, by: int) -> float:
    """Darknet's float / int for its printed averages (nan or inf when by is 0, as C)."""
    if by:
        return f32(value / by)
    return math.nan if value == 0 or math.isnan(value) else math.copysign(math.inf, value)


def _overlap(x1: float, w1: float, x2: float, w2: float) -> float:
    l1, l2 = f32(x1 - f32(w1 / 2)), f32(x2 - f32(w2 / 2))
    r1, r2 = f32(x1 + f32(w1 / 2)), f32(x2 + f32(w2 / 2))
    return f32(min(r1, r2) - max(l1, l2))


def _box_iou(a: tuple, b: tuple) -> float:
    """Darknet box_iou in float32 steps."""
    w = _overlap(a[0], a[2], b[0], b[2])
    h = _overlap(a[1], a[3], b[1], b[3])
    inter = 0.0 if w < 0 or h < 0 else f32(w * h)
    union = f32(f32(f32(a[2] * a[3]) + f32(b[2] * b[3])) - inter)
    if not union:
        return math.nan if not inter else math.copysign(math.inf, inter)
    return f32(inter / union)
