"""`detect` (Darknet examples/detector.c test_detector, docs/darknet-contract.md §7): YOLO boxes on one image.

1. names from the data cfg (`cfg/coco.data`), the network and its weights;
2. the image, letterboxed to the network size, one forward pass;
   stdout `<file>: Predicted in <seconds> seconds.`
3. boxes of every YOLO layer whose objectness > thresh (correct_yolo_boxes maps them back
   to the original image), and all slots of [region] (YOLOv2, also mapped back) and
   [detection] (YOLOv1, in pixels as Darknet) layers (boxes.get_network_boxes), do_nms_sort
   (in the order of musl's qsort: the order of equal probabilities decides the print order),
   then for each box in array order the class lines `name: NN%` on stdout, its box and label
   drawn;
4. the image saved as `<outfile or predictions>.jpg`.
Unlike Darknet, no `data/labels/*.png` glyph files are read: the label font is built in.
"""

import sys
import time

from .. import limits
from ..boxes import do_nms_sort, get_network_boxes
from ..buffers import allow_for_weights
from ..config import read_data_cfg, read_list
from ..errors import DLServerError
from ..image.draw import draw_box_width, draw_label, get_color, get_label, save_image
from ..image.load import load_image_color
from ..image.ops import letterbox_image
from ..layers.detection import DetectionLayer
from ..layers.region import RegionLayer
from ..layers.yolo import YoloLayer
from ..limits import check, trunc_int
from ..network import parse_network_cfg
from ..rng import f32
from ..weights import load_weights
from ..work import check_work
from .classifier import clock_enabled

NMS = 0.45


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
        width = int(im.h * 0.006)
        offset = klass * 123457 % classes
        red = get_color(2, offset, classes)
        green = get_color(1, offset, classes)
        blue = get_color(0, offset, classes)
        left = trunc_int((d.x - d.w / 2.0) * im.w)
        right = trunc_int((d.x + d.w / 2.0) * im.w)
        top = trunc_int((d.y - d.h / 2.0) * im.h)
        bot = trunc_int((d.y + d.h / 2.0) * im.h)
        left = max(left, 0)
        right = min(right, im.w - 1)
        top = max(top, 0)
        bot = min(bot, im.h - 1)
        draw_box_width(im, left, top, right, bot, width, red, green, blue)
        label = get_label(", ".join(labels), int(im.h * 0.03))
        draw_label(im, top + width, left, label, (red, green, blue))


# ---------------------------------------------------------------- the command


def run(argv) -> None:
    """`detect [cfg] [weights] [image] [-thresh T] [-out NAME]`: thresh and filename are read
    before -out is removed, as in Darknet (docs/darknet-contract.md §1.4)."""
    thresh = argv.find_float("-thresh", 0.5)
    if thresh < 0:
        raise DLServerError(f"flag -thresh {thresh:g}: must be at least 0")
    filename = argv[4] if argv.argc > 4 else None
    outfile = argv.find_str("-out", None)
    if argv[2] is None:
        raise DLServerError(f"usage: {argv[0]} detect [cfg] [weights] [image] [-thresh T] [-out NAME]")
    test_detector("cfg/coco.data", argv[2], argv[3], filename, thresh, outfile)


def test_detector(
    datacfg: str,
    cfg: str,
    weights: str | None,
    filename: str | None,
    thresh: float,
    outfile: str | None = None,
) -> None:
    options = read_data_cfg(datacfg)
    name_list = options.find_str("names", "data/names.list")
    names = read_list(name_list, "names list")
    if not weights:
        raise DLServerError(
            "detect: no weights file given (usage: detect [cfg] [weights] [image] [-thresh T] [-out NAME])"
        )
    allow_for_weights(weights)
    net = parse_network_cfg(cfg, batch=1)
    load_weights(net, weights)
    net.set_batch(1)
    check_work(net, 1, "detect of 1 image")
    heads = (YoloLayer, RegionLayer, DetectionLayer)
    yolo_layers = [layer for layer in net.layers if isinstance(layer, heads)]
    if not yolo_layers or not isinstance(net.layers[-1], heads):
        raise DLServerError(
            f"{cfg}: detect needs a network whose last layer is [yolo], [region] or [detection]"
        )
    if net.w < 1 or net.h < 1 or net.c != 3:
        raise DLServerError(
            f"{cfg}: detect needs an image network (width, height, channels=3), got {net.w}x{net.h}x{net.c}"
        )
    classes = net.layers[-1].classes
    for layer in yolo_layers:
        if layer.classes != classes:
            raise DLServerError(
                f"{cfg}: the detection layers disagree on classes ({layer.classes} and {classes})"
            )
    if len(names) < classes:
        raise DLServerError(f"{name_list}: {len(names)} names, but {cfg} detects {classes} classes")
    if filename is None:
        raise DLServerError(
            "image file not defined (usage: detect [cfg] [weights] [image] [-thresh T] [-out NAME])"
        )
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
    candidates = sum(1 for d in dets if max(d.prob, default=0) > 0)
    check(
        f"{filename}",
        f"detect -thresh {thresh:g}: boxes over the threshold",
        candidates,
        limits.MAX_BOXES,
        "MAX_BOXES",
    )
    dets = do_nms_sort(dets, classes, NMS)
    labels = sum(1 for d in dets for p in d.prob if p > thresh)
    check(f"{filename}", f"detect -thresh {thresh:g}: labels to draw", labels, limits.MAX_BOXES, "MAX_BOXES")
    draw_detections(im, dets, thresh, names, classes, out)
    save_image(im, outfile if outfile is not None else "predictions")
