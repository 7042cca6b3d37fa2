"""`detect` (Darknet examples/detector.c test_detector, spec §7): YOLO boxes on one image.

1. names from the data cfg (`cfg/coco.data`), the network and its weights;
2. the image, letterboxed to the network size, one forward pass;
   stdout `<file>: Predicted in <seconds> seconds.`
3. boxes of every YOLO layer whose objectness > thresh (correct_yolo_boxes maps them back
   to the original image), do_nms_sort (in the order of musl's qsort: the order of equal
   probabilities decides the print order), then for each box in array order the class
   lines `name: NN%` on stdout, its box and label drawn;
4. the image saved as `<outfile or predictions>.jpg`.
Unlike Darknet, no `data/labels/*.png` glyph files are read: the label font is built in.
"""
import sys
import time
from array import array

from .. import kernels
from ..buffers import zeros
from ..config import read_data_cfg, read_list
from ..errors import DLServerError
from ..image.draw import draw_box_width, draw_label, get_color, get_label, save_image
from ..image.load import load_image_color
from ..image.ops import letterbox_image, letterbox_size
from ..layers.yolo import YoloLayer
from ..network import parse_network_cfg
from ..rng import f32
from ..weights import load_weights
from .classifier import clock_enabled

NMS = .45


class Detection:
    """One candidate box: centre x, y and size w, h as fractions of the image."""
    __slots__ = ("x", "y", "w", "h", "objectness", "prob")

    def __init__(self, x, y, w, h, objectness, prob):
        self.x, self.y, self.w, self.h = x, y, w, h
        self.objectness = objectness
        self.prob = prob


# ---------------------------------------------------------------- boxes (yolo_layer.c)

def get_yolo_detections(layer, im_w: int, im_h: int, netw: int, neth: int, thresh: float) -> list:
    """Candidates of one YOLO layer in Darknet's order: cells i = 0..w*h-1, then anchor
    slots (the loops run in `_dlk.yolo_candidates`; get_yolo_detections_py is the same in Python)."""
    most = layer.w * layer.h * layer.n
    anchors = array("f", [v for m in layer.mask for v in (layer.biases[2 * m], layer.biases[2 * m + 1])])
    boxes, objectness, probs = zeros(4 * most), zeros(most), zeros(most * layer.classes)
    count = kernels.yolo_candidates(layer.output, layer.w, layer.h, layer.n, layer.classes, anchors, netw, neth,
                                    thresh, boxes, objectness, probs)
    classes = layer.classes
    dets = [Detection(boxes[4 * i], boxes[4 * i + 1], boxes[4 * i + 2], boxes[4 * i + 3], objectness[i],
                      probs[i * classes:(i + 1) * classes].tolist()) for i in range(count)]
    correct_yolo_boxes(dets, im_w, im_h, netw, neth)
    return dets


def correct_yolo_boxes(dets: list, im_w: int, im_h: int, netw: int, neth: int) -> None:
    """Map boxes from the letterboxed network input back to the image (relative = 1)."""
    new_w, new_h = letterbox_size(im_w, im_h, netw, neth)
    x_off, x_scale = (netw - new_w) / 2. / netw, f32(new_w / netw)
    y_off, y_scale = (neth - new_h) / 2. / neth, f32(new_h / neth)
    w_scale, h_scale = f32(netw / new_w), f32(neth / new_h)
    for d in dets:
        d.x = f32((d.x - x_off) / x_scale)
        d.y = f32((d.y - y_off) / y_scale)
        d.w = f32(d.w * w_scale)
        d.h = f32(d.h * h_scale)


def get_network_boxes(net, im_w: int, im_h: int, thresh: float) -> list:
    dets = []
    for layer in net.layers:
        if isinstance(layer, YoloLayer):
            dets.extend(get_yolo_detections(layer, im_w, im_h, net.w, net.h, thresh))
    return dets


# ---------------------------------------------------------------- NMS (box.c)

def do_nms_sort(dets: list, classes: int, thresh: float) -> list:
    """Darknet do_nms_sort: zero-objectness boxes to the end, then per class: sort by that
    class's probability (musl qsort) and zero the class for boxes overlapping a better one
    by IoU > thresh. Returns the boxes in their final order. The loops run in
    `_dlk.nms_sort`; do_nms_sort_py is the same in Python."""
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
        d.prob = probs[i * classes:(i + 1) * classes].tolist()
        result.append(d)
    return result


# ---------------------------------------------------------------- drawing (image.c)

def draw_detections(im, dets: list, thresh: float, names: list, classes: int, out) -> None:
    """Print each box's classes above thresh (`name: NN%`) and draw its box and label."""
    for d in dets:
        labels = []
        klass = -1
        for j in range(classes):
            if d.prob[j] > thresh:
                if klass < 0:
                    klass = j
                labels.append(names[j])
                out.write("%s: %.0f%%\n" % (names[j], f32(d.prob[j] * 100)))
        if klass < 0:
            continue
        width = int(im.h * .006)
        offset = klass * 123457 % classes
        red = get_color(2, offset, classes)
        green = get_color(1, offset, classes)
        blue = get_color(0, offset, classes)
        left = int((d.x - d.w / 2.) * im.w)
        right = int((d.x + d.w / 2.) * im.w)
        top = int((d.y - d.h / 2.) * im.h)
        bot = int((d.y + d.h / 2.) * im.h)
        left = max(left, 0)
        right = min(right, im.w - 1)
        top = max(top, 0)
        bot = min(bot, im.h - 1)
        draw_box_width(im, left, top, right, bot, width, red, green, blue)
        label = get_label(", ".join(labels), int(im.h * .03))
        draw_label(im, top + width, left, label, (red, green, blue))


# ---------------------------------------------------------------- the command

def run(argv) -> None:
    """`detect [cfg] [weights] [image] [-thresh T] [-out NAME]`: thresh and filename are read
    before -out is removed, as in Darknet (spec §1.4)."""
    thresh = argv.find_float("-thresh", .5)
    filename = argv[4] if argv.argc > 4 else None
    outfile = argv.find_str("-out", None)
    if argv[2] is None:
        raise DLServerError(f"usage: {argv[0]} detect [cfg] [weights] [image] [-thresh T] [-out NAME]")
    test_detector("cfg/coco.data", argv[2], argv[3], filename, thresh, outfile)


def test_detector(datacfg: str, cfg: str, weights: str | None, filename: str | None, thresh: float,
                  outfile: str | None = None) -> None:
    options = read_data_cfg(datacfg)
    name_list = options.find_str("names", "data/names.list")
    names = read_list(name_list, "names list")
    if not weights:
        raise DLServerError("detect: no weights file given (usage: detect [cfg] [weights] [image]"
                            " [-thresh T] [-out NAME])")
    net = parse_network_cfg(cfg)
    load_weights(net, weights)
    net.set_batch(1)
    yolo_layers = [layer for layer in net.layers if isinstance(layer, YoloLayer)]
    if not yolo_layers or not isinstance(net.layers[-1], YoloLayer):
        raise DLServerError(f"{cfg}: detect needs a network whose last layer is [yolo]")
    if net.w < 1 or net.h < 1 or net.c != 3:
        raise DLServerError(f"{cfg}: detect needs an image network (width, height, channels=3),"
                            f" got {net.w}x{net.h}x{net.c}")
    classes = net.layers[-1].classes
    for layer in yolo_layers:
        if layer.classes != classes:
            raise DLServerError(f"{cfg}: the [yolo] layers disagree on classes ({layer.classes} and {classes})")
    if len(names) < classes:
        raise DLServerError(f"{name_list}: {len(names)} names, but {cfg} detects {classes} classes")
    if filename is None:
        raise DLServerError("image file not defined (usage: detect [cfg] [weights] [image]"
                            " [-thresh T] [-out NAME])")
    thresh = f32(thresh)
    im = load_image_color(filename)
    sized = letterbox_image(im, net.w, net.h)
    use_clock = clock_enabled()
    start = time.perf_counter()
    net.predict(sized.data)
    seconds = time.perf_counter() - start if use_clock else 0.0
    out = sys.stdout
    out.write("%s: Predicted in %f seconds.\n" % (filename, seconds))
    dets = get_network_boxes(net, im.w, im.h, thresh)
    dets = do_nms_sort(dets, classes, NMS)
    draw_detections(im, dets, thresh, names, classes, out)
    save_image(im, outfile if outfile is not None else "predictions")
