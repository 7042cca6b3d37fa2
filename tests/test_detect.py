"""`detect` (docs/darknet-contract.md §7): YOLO layers, boxes, NMS with musl's qsort order, drawing,
errors, and the official YOLOv3-tiny on dog.jpg (those tests skip without `make yolo_detection`)."""

import copy
import io
import math
import os
import random
import shutil
import struct
import subprocess
from array import array

import numpy as np
import pytest
from PIL import Image as PILImage

import _dlk
import reference.detect
import reference.image
from conftest import ROOT, run_wasmtime
from dlserver import boxes, kernels
from dlserver.commands import detector
from dlserver.image import draw
from dlserver.image.font import HEIGHTS, glyph, glyph_size
from dlserver.image.ops import Image, letterbox_image, resize_image
from dlserver.main import main
from dlserver.network import parse_network_cfg
from dlserver.rng import Random, f32

WEIGHTS = ROOT / "model" / "yolov3-tiny.weights"
DOG = ROOT / "data" / "dog.jpg"
DETECT = ["dl-server", "detect", "cfg/yolov3-tiny.cfg", "model/yolov3-tiny.weights", "data/dog.jpg"]
# The original's lines for dog.jpg: the classes and percentages Darknet publishes for
# yolov3-tiny, in the order musl's qsort (wasi-libc) leaves the boxes (glibc's qsort
# prints car 52% and truck 56% before car 62%).
DOG_LINES = [
    "data/dog.jpg: Predicted in 0.000000 seconds.",
    "dog: 57%",
    "car: 62%",
    "car: 52%",
    "truck: 56%",
    "bicycle: 59%",
]

YOLO_TABLE = """\
layer     filters    size              input                output
    0 conv     16  3 x 3 / 1   416 x 416 x   3   ->   416 x 416 x  16  0.150 BFLOPs
    1 max          2 x 2 / 2   416 x 416 x  16   ->   208 x 208 x  16
    2 conv     32  3 x 3 / 1   208 x 208 x  16   ->   208 x 208 x  32  0.399 BFLOPs
    3 max          2 x 2 / 2   208 x 208 x  32   ->   104 x 104 x  32
    4 conv     64  3 x 3 / 1   104 x 104 x  32   ->   104 x 104 x  64  0.399 BFLOPs
    5 max          2 x 2 / 2   104 x 104 x  64   ->    52 x  52 x  64
    6 conv    128  3 x 3 / 1    52 x  52 x  64   ->    52 x  52 x 128  0.399 BFLOPs
    7 max          2 x 2 / 2    52 x  52 x 128   ->    26 x  26 x 128
    8 conv    256  3 x 3 / 1    26 x  26 x 128   ->    26 x  26 x 256  0.399 BFLOPs
    9 max          2 x 2 / 2    26 x  26 x 256   ->    13 x  13 x 256
   10 conv    512  3 x 3 / 1    13 x  13 x 256   ->    13 x  13 x 512  0.399 BFLOPs
   11 max          2 x 2 / 1    13 x  13 x 512   ->    13 x  13 x 512
   12 conv   1024  3 x 3 / 1    13 x  13 x 512   ->    13 x  13 x1024  1.595 BFLOPs
   13 conv    256  1 x 1 / 1    13 x  13 x1024   ->    13 x  13 x 256  0.089 BFLOPs
   14 conv    512  3 x 3 / 1    13 x  13 x 256   ->    13 x  13 x 512  0.399 BFLOPs
   15 conv    255  1 x 1 / 1    13 x  13 x 512   ->    13 x  13 x 255  0.044 BFLOPs
   16 yolo
   17 route  13
   18 conv    128  1 x 1 / 1    13 x  13 x 256   ->    13 x  13 x 128  0.011 BFLOPs
   19 upsample            2x    13 x  13 x 128   ->    26 x  26 x 128
   20 route  19 8
   21 conv    256  3 x 3 / 1    26 x  26 x 384   ->    26 x  26 x 256  1.196 BFLOPs
   22 conv    255  1 x 1 / 1    26 x  26 x 256   ->    26 x  26 x 255  0.088 BFLOPs
   23 yolo
"""

# A small detector: 8x8 input, a 1x1 conv to 1 anchor x (1 class + 5), a yolo layer.
TINY_CFG = """[net]
width=8
height=8
channels=3
[convolutional]
filters=6
size=1
stride=1
pad=1
activation=linear
[yolo]
mask=0
anchors=4,4
classes=1
num=1
jitter=.3
ignore_thresh=.7
truth_thresh=1
"""


def write_tiny(workdir, obj_bias=4.0, class_bias=4.0):
    """cfg/tiny.cfg and model/tiny.weights: zero conv weights, biases giving every cell
    objectness and class score sigmoid(bias), boxes of size anchor/net = 1/2."""
    (workdir / "cfg" / "tiny.cfg").write_text(TINY_CFG)
    biases = [0.0, 0.0, 0.0, 0.0, obj_bias, class_bias]
    data = struct.pack("<iiiII", 0, 2, 0, 0, 0) + struct.pack("<6f", *biases) + bytes(4 * 6 * 3)
    (workdir / "model" / "tiny.weights").write_bytes(data)


def write_png(path, w, h, seed=0):
    rng = np.random.default_rng(seed)
    PILImage.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def run(argv, capsys):
    status = main(argv)
    out, err = capsys.readouterr()
    return status, out, err


def error_line(err: str) -> str:
    return err.strip().splitlines()[-1]


# ---------------------------------------------------------------- construction


def test_layer_table(capsys):
    net = parse_network_cfg(str(ROOT / "cfg" / "yolov3-tiny.cfg"))
    assert capsys.readouterr().err == YOLO_TABLE
    assert [layer.kind for layer in net.layers].count("yolo") == 2
    assert net.outputs == 26 * 26 * 255
    assert net.layers[16].mask == [3, 4, 5] and net.layers[23].mask == [0, 1, 2]
    assert list(net.layers[23].biases) == [10, 14, 23, 27, 37, 58, 81, 82, 135, 169, 344, 319]


def test_yolo_layer_resets_rand(tmp_path, capsys):
    """make_yolo_layer calls srand(0): the next rand() is musl's first after srand(0)."""
    cfg = tmp_path / "t.cfg"
    cfg.write_text(TINY_CFG)
    rng = Random()
    parse_network_cfg(str(cfg), init_rng=rng)
    assert [rng.rand() for _ in range(3)] == [2049033599, 2025915578, 1407788582]


# ---------------------------------------------------------------- layer math against numpy

LAYERS_CFG = """[net]
batch=2
width=6
height=4
channels=3
[upsample]
stride=2
scale=.5
[upsample]
stride=-2
[route]
layers=-1
[route]
layers=1,-1
[yolo]
mask=1
anchors=1,2,3,4
classes=1
num=2
jitter=.3
ignore_thresh=.7
truth_thresh=1
"""


def sigmoid(x):
    return 1 / (1 + np.exp(-x.astype(np.float64)))


def test_route_upsample_yolo_forward_match_numpy(tmp_path, capsys):
    cfg = tmp_path / "layers.cfg"
    cfg.write_text(LAYERS_CFG)
    net = parse_network_cfg(str(cfg))
    table = capsys.readouterr().err
    assert "    0 upsample            2x     6 x   4 x   3   ->    12 x   8 x   3\n" in table
    assert "    1 downsample          2x    12 x   8 x   3   ->     6 x   4 x   3\n" in table
    assert "    2 route  1\n" in table and "    3 route  1 2\n" in table and "    4 yolo\n" in table
    x = np.random.default_rng(1).normal(size=(2, 3, 4, 6)).astype(np.float32)
    net.forward(array("f", x.tobytes()))
    out = [np.frombuffer(layer.output, dtype=np.float32) for layer in net.layers]
    up = np.float32(0.5) * x.repeat(2, axis=2).repeat(2, axis=3)
    np.testing.assert_array_equal(out[0].reshape(2, 3, 8, 12), up)
    down = up.reshape(2, 3, 4, 2, 6, 2).sum(axis=(3, 5))
    np.testing.assert_allclose(out[1].reshape(2, 3, 4, 6), down, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(out[2], out[1])
    both = np.concatenate([out[1].reshape(2, -1), out[2].reshape(2, -1)], axis=1)
    np.testing.assert_array_equal(out[3].reshape(2, -1), both)
    yolo_in = both.reshape(2, 6, 4, 6)  # 1 anchor x (4 + 1 + 1 class) planes of 4 x 6
    expected = yolo_in.astype(np.float64)
    for e in (0, 1, 4, 5):
        expected[:, e] = sigmoid(yolo_in[:, e])
    np.testing.assert_allclose(out[4].reshape(2, 6, 4, 6), expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(out[4].reshape(2, 6, 4, 6)[:, 2:4], yolo_in[:, 2:4])


def test_route_and_upsample_backward(tmp_path, capsys):
    cfg = tmp_path / "layers.cfg"
    cfg.write_text(LAYERS_CFG.split("[yolo]")[0])
    net = parse_network_cfg(str(cfg))
    for layer in net.layers:
        layer.prepare_training()
    rng = np.random.default_rng(2)
    route = net.layers[3]
    d = rng.normal(size=route.batch * route.outputs).astype(np.float32)
    route.delta[:] = array("f", d.tobytes())
    route.backward(net, None, None)
    half = route.outputs // 2
    d = d.reshape(2, -1)
    np.testing.assert_array_equal(
        np.frombuffer(net.layers[1].delta, dtype=np.float32).reshape(2, -1), d[:, :half]
    )
    np.testing.assert_array_equal(
        np.frombuffer(net.layers[2].delta, dtype=np.float32).reshape(2, -1), d[:, half:]
    )
    up = net.layers[0]
    dy = rng.normal(size=(2, 3, 8, 12)).astype(np.float32)
    up.delta[:] = array("f", dy.tobytes())
    prev = array("f", bytes(4 * 2 * 3 * 4 * 6))
    up.backward(net, None, prev)
    expected = (np.float32(0.5) * dy).reshape(2, 3, 4, 2, 6, 2).sum(axis=(3, 5))
    np.testing.assert_allclose(
        np.frombuffer(prev, dtype=np.float32).reshape(2, 3, 4, 6), expected, rtol=1e-6, atol=1e-6
    )


def test_yolo_trains(tmp_path, capsys):
    """The yolo layer trains (its refusal is gone): a cost, Darknet's Region line, and its delta
    sent back into the convolution (tests/test_zoo_yolo_train.py compares it with Darknet)."""
    cfg = tmp_path / "t.cfg"
    cfg.write_text(TINY_CFG)
    net = parse_network_cfg(str(cfg), init_rng=Random(0))
    net.prepare_training(Random(0))
    truth = array("f", bytes(4 * 90 * 5))
    truth[:5] = array("f", [0.3, 0.6, 0.5, 0.5, 0])
    x = array("f", np.random.default_rng(0).random(8 * 8 * 3).astype(np.float32).tobytes())
    capsys.readouterr()
    cost = net.train_step(x, truth)
    assert math.isfinite(cost) and cost > 0
    assert capsys.readouterr().out.startswith("Region 1 Avg IOU: ")
    assert np.frombuffer(net.layers[0].delta, dtype=np.float32).any()


@pytest.mark.parametrize(
    "cfg, problem",
    [
        ("[net]\nwidth=4\nheight=4\nchannels=12\n[yolo]\nclasses=1\nnum=1\n", "needs 6 input channels"),
        ("[net]\nwidth=4\nheight=4\nchannels=6\n[yolo]\nclasses=1\nnum=1\nmask=1\n", "mask value 1"),
        ("[net]\nwidth=4\nheight=4\nchannels=6\n[route]\nlayers=-1\n", "not an earlier layer"),
        ("[net]\nwidth=4\nheight=4\nchannels=6\n[upsample]\nstride=0\n", "stride=0"),
        ("[net]\nwidth=5\nheight=4\nchannels=6\n[upsample]\nstride=-2\n", "not a multiple of 2"),
    ],
)
def test_bad_layer_options(tmp_path, capsys, cfg, problem):
    path = tmp_path / "bad.cfg"
    path.write_text(cfg)
    with pytest.raises(Exception, match=problem):
        parse_network_cfg(str(path))


# ---------------------------------------------------------------- boxes and NMS


def tiny_yolo_layer(tmp_path, logits):
    """A 4x4 yolo layer of 2 anchors x (2 classes + 5) fed `logits` (shape 14 x 4 x 4)."""
    cfg = tmp_path / "y.cfg"
    cfg.write_text(
        "[net]\nwidth=4\nheight=4\nchannels=14\n[yolo]\nmask=0,2\nanchors=.5,1,1.5,2,2.5,3\n"
        "classes=2\nnum=3\njitter=.3\nignore_thresh=.7\ntruth_thresh=1\n"
    )
    net = parse_network_cfg(str(cfg))
    net.forward(array("f", np.asarray(logits, dtype=np.float32).tobytes()))
    return net


def logit(p):
    return math.log(p / (1 - p))


def test_box_decode_order_and_correction(tmp_path, capsys):
    logits = np.full((14, 4, 4), -10.0, dtype=np.float32)
    # anchor slot 1 (anchor 2: 2.5 x 3) at row 1, col 2; anchor slot 0 (anchor 0) at row 3, col 0
    a1 = logits[7:]
    a1[0, 1, 2], a1[1, 1, 2], a1[2, 1, 2], a1[3, 1, 2] = logit(0.25), logit(0.75), math.log(2), math.log(0.5)
    a1[4, 1, 2], a1[5, 1, 2], a1[6, 1, 2] = logit(0.9), logit(0.4), logit(0.8)
    a0 = logits[:7]
    a0[0, 3, 0], a0[1, 3, 0], a0[2, 3, 0], a0[3, 3, 0] = 0.0, 0.0, 0.0, 0.0
    a0[4, 3, 0], a0[6, 3, 0] = logit(0.6), logit(0.95)
    a0[4, 1, 2] = logit(0.7)  # the same cell as the first box: slot 0 comes first there
    net = tiny_yolo_layer(tmp_path, logits)
    dets = boxes.get_network_boxes(net, 40, 40, f32(0.5))  # a square image: no letterbox offset
    assert len(dets) == 3
    first, second, third = dets  # cell 6 (row 1, col 2) anchor slots 0, 1; then cell 12
    assert first.objectness == pytest.approx(0.7, abs=1e-6)
    assert first.prob == [0.0, 0.0]  # .7 * sigmoid(-10) on both classes
    assert second.objectness == pytest.approx(0.9, abs=1e-6)
    assert second.x == pytest.approx((2 + 0.25) / 4, abs=1e-6)
    assert second.y == pytest.approx((1 + 0.75) / 4, abs=1e-6)
    assert second.w == pytest.approx(2 * 2.5 / 4, rel=1e-6)
    assert second.h == pytest.approx(0.5 * 3 / 4, rel=1e-6)
    assert second.prob[0] == 0.0  # .9 * .4 = .36 is not > .5
    assert second.prob[1] == pytest.approx(0.9 * 0.8, abs=1e-6)
    assert third.x == pytest.approx(0.5 / 4) and third.y == pytest.approx(3.5 / 4)
    assert third.w == pytest.approx(0.5 / 4) and third.h == pytest.approx(1 / 4)
    assert third.prob[1] == pytest.approx(0.6 * 0.95, abs=1e-6)

    # correct_yolo_boxes for a 768 x 576 image letterboxed to 4 x 4: 4 x 3 at y offset .5
    net = tiny_yolo_layer(tmp_path, logits)
    dets = boxes.get_network_boxes(net, 768, 576, f32(0.5))
    box = dets[1]
    assert box.x == pytest.approx((2 + 0.25) / 4, abs=1e-6)
    assert box.y == pytest.approx(((1 + 0.75) / 4 - 0.5 / 4) / (3 / 4), abs=1e-6)
    assert box.w == pytest.approx(2 * 2.5 / 4, rel=1e-6)
    assert box.h == pytest.approx(0.5 * 3 / 4 * 4 / 3, rel=1e-6)


def det(x, y, w, h, probs, objectness=1.0):
    return boxes.Detection(f32(x), f32(y), f32(w), f32(h), objectness, [f32(p) for p in probs])


def test_box_iou():
    a = det(0.5, 0.5, 0.2, 0.2, [])
    assert reference.detect.box_iou(a, det(0.6, 0.5, 0.2, 0.2, [])) == pytest.approx(1 / 3, rel=1e-6)
    assert reference.detect.box_iou(a, a) == pytest.approx(1.0, rel=1e-6)
    assert reference.detect.box_iou(a, det(0.9, 0.5, 0.2, 0.2, [])) == 0.0


def test_nms_sort(capsys):
    dets = [
        det(0.30, 0.30, 0.2, 0.2, [0.6, 0.0]),
        det(0.31, 0.30, 0.2, 0.2, [0.9, 0.55]),  # overlaps the first: keeps class 0, the first loses it
        det(0.80, 0.80, 0.1, 0.1, [0.7, 0.0]),  # apart: kept
        det(0.10, 0.90, 0.1, 0.1, [0.0, 0.0], objectness=0.0),  # goes to the end, untouched
        det(0.32, 0.31, 0.2, 0.2, [0.0, 0.8]),  # class 1 beats the second box there
    ]
    zero = dets[3]
    out = boxes.do_nms_sort(dets, 2, 0.45)
    assert out[-1] is zero
    by_x = {round(d.x, 2): d for d in out}
    assert by_x[0.31].prob == [f32(0.9), 0.0]
    assert by_x[0.30].prob == [0.0, 0.0]
    assert by_x[0.80].prob == [f32(0.7), 0.0]
    assert by_x[0.32].prob == [0.0, f32(0.8)]
    # after the class-1 sort the order is by class-1 probability, descending
    assert [round(d.x, 2) for d in out[:4]][:1] == [0.32]
    lines = io.StringIO()
    names = ["cat", "dog"]
    im = Image(20, 20, 3, array("f", [0.5]) * 1200)
    detector.draw_detections(im, out, f32(0.5), names, 2, lines)
    assert lines.getvalue() == "dog: 80%\ncat: 90%\ncat: 70%\n"


# musl's qsort (smoothsort) orders, recorded from musl 1.2.3 with Darknet's comparator
# (descending, equal keys left where smoothsort puts them)
MUSL_ORDERS = [
    ([0, 0, 0, 0, 0, 0, 0, 0], [0, 1, 2, 3, 4, 5, 6, 7]),
    ([1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1], [0, 2, 4, 8, 10, 6, 5, 7, 3, 1, 9]),
    ([3, 1, 2, 3, 1, 2, 3, 1, 2, 0, 0, 3, 2], [0, 11, 6, 3, 2, 8, 5, 12, 7, 1, 4, 10, 9]),
    ([0.5, 0, 0, 0.7, 0, 0.5, 0, 0, 0.9, 0, 0, 0, 0.5, 0.7], [8, 13, 3, 0, 12, 5, 6, 7, 1, 2, 4, 10, 9, 11]),
    (
        [1, 2, 1, 1, 2, 2, 0, 0, 2, 1, 2, 0, 0, 1, 0, 0, 0],
        [4, 1, 10, 5, 8, 3, 0, 13, 2, 9, 6, 7, 12, 11, 14, 15, 16],
    ),
    (
        [2, 0, 2, 1, 1, 2, 0, 2, 0, 2, 0, 0, 0, 0, 0, 2, 0, 1, 0, 1, 2, 0, 2, 0, 0],
        [0, 2, 22, 20, 9, 5, 7, 15, 19, 3, 4, 17, 12, 10, 11, 13, 6, 1, 8, 14, 18, 16, 21, 23, 24],
    ),
]


def emulated_order(keys):
    items = list(enumerate(keys))
    reference.detect.musl_qsort(items, lambda a, b: (a[1] < b[1]) - (a[1] > b[1]))
    return [i for i, _ in items]


def kernel_order(keys):
    order = array("i", bytes(4 * len(keys)))
    _dlk.musl_sort_desc(array("f", keys), len(keys), order)
    return order.tolist()


@pytest.mark.parametrize("keys, order", MUSL_ORDERS)
def test_musl_qsort_recorded_orders(keys, order):
    assert emulated_order(keys) == order
    assert kernel_order(keys) == order


MUSL_DRIVER = r"""
#include <stdio.h>
#include <stdlib.h>
typedef struct { float key; int id; } item;
static int cmp(const void *pa, const void *pb)
{
    float diff = ((const item *)pa)->key - ((const item *)pb)->key;
    if (diff < 0) return 1;
    if (diff > 0) return -1;
    return 0;
}
int main(void)
{
    int n;
    while (scanf("%d", &n) == 1) {
        item *v = malloc(sizeof(item) * (n ? n : 1));
        for (int i = 0; i < n; ++i) { if (scanf("%f", &v[i].key) != 1) return 1; v[i].id = i; }
        qsort(v, n, sizeof(item), cmp);
        for (int i = 0; i < n; ++i) printf("%d ", v[i].id);
        printf("\n");
        free(v);
    }
    return 0;
}
"""


def test_musl_qsort_against_musl(tmp_path):
    """The emulation against musl's own qsort (musl-gcc, Debian package musl-tools) on random
    arrays full of ties."""
    compiler = shutil.which("musl-gcc")
    if compiler is None:
        pytest.skip("musl-gcc not installed (apt-get install musl-tools)")
    source = tmp_path / "sort.c"
    source.write_text(MUSL_DRIVER)
    exe = tmp_path / "sort"
    subprocess.run([compiler, "-O2", "-static", str(source), "-o", str(exe)], check=True)
    rng = random.Random(7)
    cases = []
    for _ in range(1500):
        n = rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 13, 20, 31, 40, 64, 100, 300])
        distinct = rng.choice([1, 2, 3, 5, 40])
        cases.append([rng.randrange(distinct) / 4 for _ in range(n)])
    text = "".join(f"{len(c)} " + " ".join(map(str, c)) + "\n" for c in cases)
    lines = subprocess.run([str(exe)], input=text, capture_output=True, text=True, check=True).stdout.split(
        "\n"
    )
    for keys, line in zip(cases, lines):
        musl = [int(i) for i in line.split()]
        assert emulated_order(keys) == musl, keys
        assert kernel_order(keys) == musl, keys


def random_detections(rng, n, classes):
    """Boxes with many equal probabilities (and some zero objectness), as NMS meets them."""
    dets = []
    for _ in range(n):
        probs = [
            f32(rng.choice([0.6, 0.9, rng.random()])) if rng.random() < 0.4 else 0.0 for _ in range(classes)
        ]
        dets.append(
            boxes.Detection(
                f32(rng.random()),
                f32(rng.random()),
                f32(rng.choice([0.05, 0.2, 0.4])),
                f32(rng.choice([0.05, 0.2, 0.4])),
                rng.choice([f32(0.7), f32(0.55), 0.0]),
                probs,
            )
        )
    return dets


def test_nms_sort_kernel_equals_python():
    rng = random.Random(3)
    for _ in range(300):
        n, classes = rng.choice([0, 1, 2, 3, 5, 8, 13, 40]), rng.choice([1, 2, 3, 6])
        dets = random_detections(rng, n, classes)
        twins = copy.deepcopy(dets)
        where = {id(d): i for i, d in enumerate(dets)}
        where_twin = {id(d): i for i, d in enumerate(twins)}
        fast = boxes.do_nms_sort(dets, classes, 0.45)
        slow = reference.detect.do_nms_sort(twins, classes, 0.45)  # reorders twins in place
        assert [where[id(d)] for d in fast] == [where_twin[id(d)] for d in slow]
        assert [d.prob for d in fast] == [d.prob for d in slow]


def test_yolo_candidates_kernel_equals_python(tmp_path, capsys):
    rng = np.random.default_rng(4)
    logits = rng.normal(scale=2.0, size=(14, 4, 4)).astype(np.float32)
    net = tiny_yolo_layer(tmp_path, logits)
    layer = net.layers[0]
    for thresh in (0.1, 0.5, 0.8):
        for im_w, im_h in ((40, 40), (768, 576), (300, 700)):
            fast = boxes.get_yolo_detections(layer, im_w, im_h, 4, 4, f32(thresh))
            slow = reference.detect.get_yolo_detections(layer, im_w, im_h, 4, 4, f32(thresh))
            assert [(d.x, d.y, d.w, d.h, d.objectness, d.prob) for d in fast] == [
                (d.x, d.y, d.w, d.h, d.objectness, d.prob) for d in slow
            ]


# ---------------------------------------------------------------- image kernels


@pytest.mark.parametrize(
    "sw, sh, dw, dh",
    [
        (7, 5, 4, 3),
        (5, 7, 11, 13),
        (1, 4, 3, 2),
        (4, 1, 2, 3),
        (3, 3, 1, 1),
        (6, 4, 6, 2),
        (2, 2, 5, 5),
        (30, 20, 17, 11),
        (9, 9, 9, 4),
        (40, 30, 40, 30),
    ],
)
def test_resize_and_letterbox_c_equal_python(sw, sh, dw, dh):
    rng = np.random.default_rng(sw * 100 + dw)
    data = array("f", rng.random(sw * sh * 3, dtype=np.float32).tobytes())
    im = Image(sw, sh, 3, data)
    with kernels.using(reference.image):
        slow_resized = resize_image(im, dw, dh)
    assert resize_image(im, dw, dh).data.tobytes() == slow_resized.data.tobytes()
    for w, h in ((dw + 3, dh + 2), (dw, dh + 5), (dw + 4, dh)):
        fast = letterbox_image(im, w, h)
        with kernels.using(reference.image):
            slow = letterbox_image(im, w, h)
        assert (fast.w, fast.h) == (w, h)
        assert fast.data.tobytes() == slow.data.tobytes()


def test_letterbox_dog_geometry():
    im = Image(768, 576, 3, array("f", [0.25]) * (768 * 576 * 3))
    boxed = np.frombuffer(letterbox_image(im, 416, 416).data, dtype=np.float32).reshape(3, 416, 416)
    assert (boxed[:, :52] == 0.5).all() and (boxed[:, 364:] == 0.5).all()
    assert (boxed[:, 52:364] == 0.25).all()


def test_colors_and_label_geometry():
    # Darknet's colours for the dog.jpg classes: offset = class*123457 % 80
    rgb = lambda klass: tuple(draw.get_color(c, klass * 123457 % 80, 80) for c in (2, 1, 0))  # noqa: E731
    assert rgb(1) == (1.0, 0.0625, 0.0)  # bicycle: red
    assert rgb(2) == (0.875, 1.0, 0.0)  # car
    assert rgb(7) == (0.5625, 1.0, 0.0)  # truck
    assert rgb(16) == (1.0, 1.0, 0.0)  # dog: yellow
    assert [glyph_size(k)[1] for k in range(8)] == list(HEIGHTS)
    label = draw.get_label("dog", int(576 * 0.03))  # font size 1: 22-pixel glyphs, 1-pixel overlap
    w, h, _ = glyph(1, "d")
    border = int(22 * 0.25)
    assert (label.w, label.h) == (3 * w - 2 + 2 * border, 22 + 2 * border)
    pixels = np.frombuffer(label.data, dtype=np.float32).reshape(label.h, label.w)
    assert (pixels[:border] == 1).all() and (pixels[:, :border] == 1).all()
    assert pixels.min() == 0.0  # black ink on white
    assert draw.get_label("x", 300).h == 84 + 2 * 21  # the largest font size is 7


def test_draw_box_and_label_pixels():
    im = Image(40, 30, 3, array("f", [0.5]) * 3600)
    draw.draw_box_width(im, 5, 12, 30, 25, 2, 1.0, 0.25, 0.0)
    px = np.frombuffer(im.data, dtype=np.float32).reshape(3, 30, 40)
    for y, x in ((12, 10), (13, 10), (25, 20), (24, 20), (20, 5), (20, 6), (20, 30), (20, 29)):
        assert tuple(px[:, y, x]) == (1.0, 0.25, 0.0)
    assert tuple(px[:, 14, 10]) == (0.5, 0.5, 0.5) and tuple(px[:, 20, 7]) == (0.5, 0.5, 0.5)
    label = Image(3, 2, 1, array("f", [1, 0, 0.5, 1, 1, 1]))
    draw.draw_label(im, 12, 5, label, (1.0, 0.25, 0.0))  # above the box: rows 10, 11
    assert tuple(px[:, 10, 5]) == (1.0, 0.25, 0.0) and tuple(px[:, 10, 6]) == (0, 0, 0)
    assert tuple(px[:, 10, 7]) == (0.5, 0.125, 0.0)
    draw.draw_label(im, 1, 38, label, (1.0, 1.0, 1.0))  # no room above: at row 1, clipped at x = 40
    assert tuple(px[:, 1, 39]) == (0, 0, 0)


# ---------------------------------------------------------------- the command, without the official weights


def test_detect_small_network(workdir, capsys, monkeypatch):
    monkeypatch.setenv("DL_SERVER_CLOCK", "0")
    write_tiny(workdir)
    write_png(workdir / "data" / "pic.png", 24, 16)
    status, out, err = run(
        ["dl-server", "detect", "cfg/tiny.cfg", "model/tiny.weights", "data/pic.png", "-out", "boxes"], capsys
    )
    assert status == 0, err
    lines = out.splitlines()
    assert lines[0] == "data/pic.png: Predicted in 0.000000 seconds."
    assert set(lines[1:]) == {"person: 96%"}  # sigmoid(4)^2 = .9644; NMS keeps a few of the 64 boxes
    assert 1 < len(lines) - 1 < 64
    assert err.endswith("Loading weights from model/tiny.weights...Done!\n")
    with PILImage.open(workdir / "boxes.jpg") as im:
        assert im.size == (24, 16) and im.format == "JPEG"
    assert not (workdir / "predictions.jpg").exists()


def test_detect_thresh_flag(workdir, capsys, monkeypatch):
    write_tiny(workdir)
    write_png(workdir / "data" / "pic.png", 24, 16)
    status, out, err = run(
        ["dl-server", "detect", "cfg/tiny.cfg", "model/tiny.weights", "-thresh", ".99", "data/pic.png"],
        capsys,
    )
    assert status == 0, err
    assert out.splitlines()[1:] == []  # objectness .982 is not > .99: no boxes
    assert (workdir / "predictions.jpg").exists()


@pytest.mark.parametrize(
    "case", ["weights size", "unknown layer", "names", "image", "no image", "not an image"]
)
def test_detect_errors(workdir, capsys, case):
    write_tiny(workdir)
    write_png(workdir / "data" / "pic.png", 24, 16)
    argv = ["dl-server", "detect", "cfg/tiny.cfg", "model/tiny.weights", "data/pic.png"]
    if case == "weights size":
        (workdir / "model" / "tiny.weights").write_bytes(bytes(100))
        problem = "model/tiny.weights: truncated"
    elif case == "unknown layer":
        (workdir / "cfg" / "tiny.cfg").write_text(TINY_CFG + "[wibble]\n")
        problem = "unknown section [wibble]"
    elif case == "names":
        (workdir / "data" / "coco.names").unlink()
        problem = "data/coco.names: cannot open names list: no such file"
    elif case == "image":
        argv[4] = "data/missing.jpg"
        problem = "data/missing.jpg: cannot "
    elif case == "no image":
        argv = argv[:4]
        problem = "image file not defined"
    else:
        (workdir / "data" / "pic.png").write_bytes(b"GIF89a....")
        problem = "data/pic.png: cannot load image: not a PNG file nor a JPEG file"
    status, _, err = run(argv, capsys)
    assert status == 1
    assert error_line(err).startswith("dl-server: error: ")
    assert problem in error_line(err)
    assert not (workdir / "predictions.jpg").exists()


def test_detect_weights_of_wrong_size_for_yolov3_tiny(workdir, capsys):
    (workdir / "model" / "yolov3-tiny.weights").write_bytes(struct.pack("<iiiII", 0, 2, 0, 0, 0) + bytes(400))
    shutil.copy(ROOT / "cfg" / "yolov3-tiny.cfg", workdir / "cfg")
    write_png(workdir / "data" / "dog.jpg", 8, 8)
    status, _, err = run(DETECT, capsys)
    assert status == 1
    assert (
        "model/yolov3-tiny.weights: truncated: 400 bytes of parameters after the header, but"
        " cfg/yolov3-tiny.cfg needs 35434936"
    ) in error_line(err)


# ---------------------------------------------------------------- the official YOLOv3-tiny on dog.jpg


@pytest.fixture
def yolo_dir(workdir):
    if not WEIGHTS.exists() or not DOG.exists():
        pytest.skip("model/yolov3-tiny.weights or data/dog.jpg missing (make yolo_detection)")
    os.symlink(WEIGHTS, workdir / "model" / "yolov3-tiny.weights")
    os.symlink(DOG, workdir / "data" / "dog.jpg")
    return workdir


def box_pixels(path):
    with PILImage.open(path) as im:
        return im.size, np.asarray(im.convert("RGB"), dtype=np.int32)


@pytest.mark.slow
def test_detect_dog(yolo_dir, capsys, monkeypatch):
    monkeypatch.setenv("DL_SERVER_CLOCK", "0")
    status, out, err = run(DETECT, capsys)
    assert status == 0, err
    assert out.splitlines() == DOG_LINES
    assert err == YOLO_TABLE + "Loading weights from model/yolov3-tiny.weights...Done!\n"
    size, px = box_pixels(yolo_dir / "predictions.jpg")
    assert size == (768, 576)
    # the bicycle box (red, width 3): its top edge runs along row 150..152 from x = 206
    bicycle = px[151, 250:500]
    assert (abs(bicycle - [255, 15, 0]) < 40).all()
    # the dog box (class 16: yellow-green); its left edge is column 129..131 from y = 186
    r, g, b = (round(255 * draw.get_color(c, 16 * 123457 % 80, 80)) for c in (2, 1, 0))
    dog = px[260:500, 130]
    assert (abs(dog - [r, g, b]) < 40).all()
    # the dog label sits above the box: coloured background, dark text
    label = px[155:186, 130:165]
    assert (abs(label - [r, g, b]) < 40).all(axis=2).mean() > 0.5
    assert (label.sum(axis=2) < 150).any()


@pytest.mark.slow
def test_detect_dog_out_name_and_thresh(yolo_dir, capsys, monkeypatch):
    monkeypatch.setenv("DL_SERVER_CLOCK", "0")
    status, out, _ = run(DETECT + ["-thresh", ".58", "-out", "dog_boxes"], capsys)
    assert status == 0
    assert out.splitlines() == [DOG_LINES[0], "car: 62%", "bicycle: 59%"]
    assert (yolo_dir / "dog_boxes.jpg").exists() and not (yolo_dir / "predictions.jpg").exists()


@pytest.mark.slow
@pytest.mark.component
def test_detect_dog_in_component(component, yolo_dir, capsys):
    for name in ("yolov3-tiny.weights",):
        os.unlink(yolo_dir / "model" / name)
        shutil.copy(WEIGHTS, yolo_dir / "model" / name)  # the guest cannot follow symlinks out
    os.unlink(yolo_dir / "data" / "dog.jpg")
    shutil.copy(DOG, yolo_dir / "data" / "dog.jpg")
    result = run_wasmtime(yolo_dir, *DETECT[1:])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("data/dog.jpg: Predicted in ") and lines[1:] == DOG_LINES[1:]
    assert result.stderr == YOLO_TABLE + "Loading weights from model/yolov3-tiny.weights...Done!\n"
    native_dir = yolo_dir / "native"
    native_dir.mkdir()
    assert main(DETECT + ["-out", "native/predictions"]) == 0
    capsys.readouterr()
    assert (yolo_dir / "predictions.jpg").read_bytes() == (native_dir / "predictions.jpg").read_bytes()


def test_boxes_gone_to_infinity_still_draw():
    """A model whose boxes overflow (random yolov3 weights do) prints and draws, no crash:
    corners are C casts as wasm's saturating truncation does them."""
    assert detector.trunc_int(math.inf) == 2**31 - 1
    assert detector.trunc_int(-math.inf) == -(2**31)
    assert detector.trunc_int(math.nan) == 0
    assert detector.trunc_int(-2.7) == -2
    im = Image(6, 5, 3, array("f", bytes(4 * 90)))
    det = boxes.Detection(x=0.5, y=math.inf, w=math.inf, h=math.nan, prob=[0.9], objectness=0.9)
    out = io.StringIO()
    detector.draw_detections(im, [det], f32(0.5), ["thing"], 1, out)
    assert out.getvalue() == "thing: 90%\n"
    draw.draw_box_width(im, -(2**31), -(2**31), 2**31 - 1, 2**31 - 1, 3, 1.0, 0.0, 0.0)
