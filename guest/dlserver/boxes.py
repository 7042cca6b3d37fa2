"""YOLO boxes (Darknet yolo_layer.c, region_layer.c, detection_layer.c and box.c): the candidates
of a network's yolo, region and detection layers, mapped back to the image, and non-maximum
suppression in the order of musl's qsort."""

from array import array

from . import kernels, limits
from .buffers import zeros
from .errors import DLServerError
from .image.ops import letterbox_size
from .layers.detection import DetectionLayer
from .layers.region import RegionLayer
from .layers.yolo import YoloLayer
from .rng import f32


class Detection:
    """One candidate box: centre x, y and size w, h as fractions of the image."""

    __slots__ = ("x", "y", "w", "h", "objectness", "prob")

    def __init__(self, x, y, w, h, objectness, prob):
        self.x, self.y, self.w, self.h = x, y, w, h
        self.objectness = objectness
        self.prob = prob


def get_yolo_detections(layer, im_w: int, im_h: int, netw: int, neth: int, thresh: float) -> list:
    """Candidates of one YOLO layer in Darknet's order: cells i = 0..w*h-1, then anchor
    slots (the loops run in `kernels.yolo_candidates`; tests/reference/detect.py: the same in Python)."""
    most = layer.w * layer.h * layer.n
    anchors = array("f", [v for m in layer.mask for v in (layer.biases[2 * m], layer.biases[2 * m + 1])])
    boxes, objectness, probs = zeros(4 * most), zeros(most), zeros(most * layer.classes)
    count = kernels.yolo_candidates(
        layer.output,
        layer.w,
        layer.h,
        layer.n,
        layer.classes,
        anchors,
        netw,
        neth,
        thresh,
        boxes,
        objectness,
        probs,
    )
    dets = _detections(boxes, objectness, probs, count, layer.classes)
    correct_yolo_boxes(dets, im_w, im_h, netw, neth)
    return dets


def correct_yolo_boxes(dets: list, im_w: int, im_h: int, netw: int, neth: int) -> None:
    """Map boxes from the letterboxed network input back to the image (relative = 1)."""
    new_w, new_h = letterbox_size(im_w, im_h, netw, neth)
    x_off, x_scale = (netw - new_w) / 2.0 / netw, f32(new_w / netw)
    y_off, y_scale = (neth - new_h) / 2.0 / neth, f32(new_h / neth)
    w_scale, h_scale = f32(netw / new_w), f32(neth / new_h)
    for d in dets:
        d.x = f32((d.x - x_off) / x_scale)
        d.y = f32((d.y - y_off) / y_scale)
        d.w = f32(d.w * w_scale)
        d.h = f32(d.h * h_scale)


def get_region_detections(
    layer, im_w: int, im_h: int, netw: int, neth: int, thresh: float, hier: float
) -> list:
    """All n*w*h boxes of a region layer (batch row 0), index anchor*w*h + cell, mapped back
    through the letterbox (kernels.region_boxes; with a tree it changes the layer's class
    outputs in place, as Darknet's hierarchy_predictions does)."""
    slots = layer.w * layer.h * layer.n
    classes = layer.classes
    boxes, objectness, probs = zeros(4 * slots), zeros(slots), zeros(slots * classes)
    parent, group_size, group_offset, child = layer.tree_arrays()
    kernels.region_boxes(
        layer.output,
        layer.w,
        layer.h,
        layer.n,
        classes,
        layer.coords,
        bool(layer.background),
        layer.biases,
        thresh,
        parent,
        group_size,
        group_offset,
        child,
        hier,
        boxes,
        objectness,
        probs,
    )
    dets = _detections(boxes, objectness, probs, slots, classes)
    correct_yolo_boxes(dets, im_w, im_h, netw, neth)
    return dets


def get_detection_detections(layer, im_w: int, im_h: int, thresh: float) -> list:
    """All side*side*n boxes of a detection layer (YOLOv1), in pixels of the image: Darknet
    neither makes them relative nor corrects them for the letterbox."""
    slots = layer.side * layer.side * layer.n
    classes = layer.classes
    boxes, objectness, probs = zeros(4 * slots), zeros(slots), zeros(slots * classes)
    kernels.detection_boxes(
        layer.output,
        layer.side,
        layer.n,
        classes,
        bool(layer.sqrt),
        im_w,
        im_h,
        thresh,
        boxes,
        objectness,
        probs,
    )
    return _detections(boxes, objectness, probs, slots, classes)


# class probabilities the Detections of one layer may hold, per box of limits.MAX_BOXES (each a
# Python float: 8.4 M, 270 MB, by default; YOLO9000's region layer at 544 holds 8.2 M)
VALUES_PER_BOX = 8192


class TooManyBoxValues(Exception):
    """A layer's boxes times its classes over limits.MAX_BOXES * VALUES_PER_BOX."""


def _detections(boxes, objectness, probs, count: int, classes: int) -> list:
    """The first `count` boxes (4 floats each), objectness and class probabilities as Detections
    (refused before they are made when there are too many: TooManyBoxValues)."""
    if count * classes > limits.MAX_BOXES * VALUES_PER_BOX:
        raise TooManyBoxValues(f"{count} boxes of {classes} classes")
    return [
        Detection(
            boxes[4 * i],
            boxes[4 * i + 1],
            boxes[4 * i + 2],
            boxes[4 * i + 3],
            objectness[i],
            probs[i * classes : (i + 1) * classes].tolist(),
        )
        for i in range(count)
    ]


def get_network_boxes(net, im_w: int, im_h: int, thresh: float, hier: float = 0.5) -> list:
    """Darknet fill_network_boxes: the boxes of every yolo, region and detection layer in order."""
    dets = []
    for index, layer in enumerate(net.layers):
        try:
            if isinstance(layer, YoloLayer):
                dets.extend(get_yolo_detections(layer, im_w, im_h, net.w, net.h, thresh))
            elif isinstance(layer, RegionLayer):
                dets.extend(get_region_detections(layer, im_w, im_h, net.w, net.h, thresh, hier))
            elif isinstance(layer, DetectionLayer):
                dets.extend(get_detection_detections(layer, im_w, im_h, thresh))
        except TooManyBoxValues as e:
            raise DLServerError(
                f"{net.cfg_path}:{layer.cfg_line}: layer {index} ({layer.kind}) gives {e} at -thresh"
                f" {thresh:g}, over the limit of {limits.MAX_BOXES * VALUES_PER_BOX} values"
                " (DL_SERVER_MAX_BOXES raises it)"
            ) from None
    return dets


def do_nms_sort(dets: list, classes: int, thresh: float) -> list:
    """Darknet do_nms_sort: zero-objectness boxes to the end, then per class: sort by that
    class's probability (musl qsort) and zero the class for boxes overlapping a better one
    by IoU > thresh. Returns the boxes in their final order. The loops run in
    `kernels.nms_sort`; tests/reference/detect.py: the same in Python."""
    n = len(dets)
    boxes = array("f", [v for d in dets for v in (d.x, d.y, d.w, d.h)])
    objectness = array("f", [d.objectness for d in dets])
    probs = array("f", [p for d in dets for p in d.prob])
    if len(probs) != n * classes:
        raise ValueError("do_nms_sort: every box needs one probability per class")
    order = array("i", bytes(4 * n))
    kernels.nms_sort(boxes, objectness, probs, n, classes, thresh, order)
    result = []
    for i in order:
        d = dets[i]
        d.prob = probs[i * classes : (i + 1) * classes].tolist()
        result.append(d)
    return result
