"""The [yolo] layer in training (issue 15, docs/darknet-contract.md §4.12): Darknet's forward_yolo_layer
deltas, cost and `Region N Avg IOU` line against Debian's libdarknet.so (tests/oracle/darknet_detect.c,
batch 2) on yolov3-tiny and on a hand-made two-yolo cfg; backward; bad truths; and a small yolo
net trained through Network.train_step whose weights reload and predict identically."""

import math
import re
import subprocess
from array import array
from pathlib import Path

import numpy as np
import pytest

from darknet_oracle import build_harness, needs_darknet
from dlserver import kernels
from dlserver.layers.yolo import YoloLayer
from dlserver.network import parse_network_cfg
from dlserver.rng import Random
from dlserver.weights import load_weights, save_weights
from test_zoo_detection import as_np, floats, oracle_weights, small_cfg

f32 = np.float32
BATCH = 2
TRUTHS = 90 * 5  # floats of truth per image (Darknet's l.truths)

NET_AND_FIRST_CONV = """[net]
batch=2
subdivisions=1
height={size}
width={size}
channels=3
learning_rate={rate}
momentum=0.9
decay=0.0005

[convolutional]
batch_normalize=1
filters=8
size=3
stride=2
pad=1
activation=leaky
"""

TWO_YOLO_CFG = (
    NET_AND_FIRST_CONV.format(size=32, rate=0.01)
    + """
[maxpool]
size=2
stride=2

[convolutional]
filters=8
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
filters=16
size=1
stride=1
pad=1
activation=linear

[yolo]
mask=2,3
anchors=3,4, 6,5, 9,12, 20,18, 30,28
classes=3
num=5
ignore_thresh=.3
truth_thresh=.45

[route]
layers=-4

[convolutional]
filters=24
size=1
stride=1
pad=1
activation=linear

[yolo]
mask=0,1,4
anchors=3,4, 6,5, 9,12, 20,18, 30,28
classes=3
num=5
max=4
ignore_thresh=.2
truth_thresh=1
"""
)


def truth_rows(*images) -> np.ndarray:
    """BATCH rows of 90 boxes x (x, y, w, h, class), each image's boxes first."""
    t = np.zeros((BATCH, TRUTHS), f32)
    for b, boxes in enumerate(images):
        flat = np.asarray(boxes, f32).ravel()
        t[b, : len(flat)] = flat
    return t.ravel()


# Image 0: overlapping boxes in one cell with the same best anchor (Darknet's class-delta shortcut),
# boxes of every anchor size (so some fall outside each layer's mask), a box at a cell edge, and
# (in both images) a box the size of an anchor at a cell's centre, where the first yolo layer's
# damped predictions are (so IoU > .5 and > .75 count). Image 1: fewer boxes, overlapping ones.
HAND_TRUTH = truth_rows(
    [
        [0.30, 0.30, 0.28, 0.38, 1],
        [0.31, 0.29, 0.30, 0.36, 2],
        [0.70, 0.60, 0.60, 0.55, 0],
        [0.55, 0.80, 0.10, 0.12, 2],
        [0.12, 0.50, 0.20, 0.16, 1],
        [0.875, 0.25, 0.95, 0.9, 0],
        [0.375, 0.625, 0.28, 0.37, 1],
    ],
    [
        [0.625, 0.375, 0.62, 0.56, 0],
        [0.50, 0.50, 0.62, 0.58, 2],
        [0.45, 0.55, 0.70, 0.50, 1],
        [0.20, 0.80, 0.08, 0.14, 0],
    ],
)

TINY_TRUTH = truth_rows(
    [
        [0.40, 0.45, 0.30, 0.40, 16],
        [0.42, 0.43, 0.28, 0.44, 7],
        [0.70, 0.30, 0.80, 0.75, 1],
        [0.20, 0.75, 0.11, 0.14, 56],
        [0.60, 0.62, 0.25, 0.20, 0],
    ],
    [
        [0.55, 0.50, 0.90, 0.85, 2],
        [0.30, 0.30, 0.16, 0.25, 79],
        [0.31, 0.32, 0.14, 0.27, 3],
    ],
)


def run_train_oracle_batch(tmp_path: Path, cfg: Path, weights: Path, x: np.ndarray, truth: np.ndarray):
    """Darknet's training forward + backward on BATCH images: outputs, deltas, costs, printed lines.
    (The cfg must say batch=BATCH: Darknet's set_batch_network does not reallocate the buffers.)"""
    exe = build_harness("darknet_detect", tmp_path)
    (tmp_path / "x.f32").write_bytes(x.astype(f32).tobytes())
    (tmp_path / "t.f32").write_bytes(truth.astype(f32).tobytes())
    run = subprocess.run(
        [str(exe), str(cfg), str(weights), str(tmp_path / "x.f32"), str(tmp_path / "t.f32"), str(BATCH)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    out: dict = {"lines": [], "out": {}, "delta": {}, "back": {}, "lcost": {}}
    for line in run.stdout.splitlines():
        word, *rest = line.split()
        if word == "cost":
            out["cost"] = float(rest[0])
        elif word == "lcost":
            out["lcost"][int(rest[0])] = f32(rest[1])
        elif word in ("out", "delta", "back"):
            values = np.array(rest[2:], dtype=f32)
            assert len(values) == int(rest[1])
            out[word][int(rest[0])] = values
        else:
            out["lines"].append(line)
    return out


def train_step_ours(cfg: Path, weights: Path, x: np.ndarray, truth: np.ndarray, truth_thresh=None) -> tuple:
    """One Network.train_step on BATCH images: the net and its cost. (A yolo layer's delta stays as
    its forward pass left it: backward only reads it, and no later layer sends a delta to it.)"""
    net = parse_network_cfg(str(cfg))
    net.set_batch(BATCH)
    load_weights(net, str(weights))
    net.prepare_training(Random(0))
    if truth_thresh is not None:
        for layer in net.layers:
            if isinstance(layer, YoloLayer):
                layer.truth_thresh = truth_thresh
    cost = net.train_step(floats(x), floats(truth))
    return net, cost


def compare_with_darknet(tmp_path, cfg, weights, x, truth, capsys) -> dict:
    theirs = run_train_oracle_batch(tmp_path, cfg, weights, x, truth)
    capsys.readouterr()
    net, cost = train_step_ours(cfg, weights, x, truth)
    ours_lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Region ")]
    theirs_lines = [line for line in theirs["lines"] if line.startswith("Region ")]
    # the printed lines, byte for byte (two per network, in layer order)
    assert ours_lines == theirs_lines
    yolo_indexes = [i for i, layer in enumerate(net.layers) if layer.kind == "yolo"]
    assert sorted(theirs["lcost"]) == yolo_indexes
    for i in yolo_indexes:
        layer = net.layers[i]
        ours = as_np(layer.output)
        np.testing.assert_allclose(ours, theirs["out"][i], rtol=2e-5, atol=2e-6, err_msg=f"out {i}")
        np.testing.assert_allclose(
            as_np(layer.delta), theirs["delta"][i], rtol=1e-5, atol=1e-6, err_msg=f"delta {i}"
        )
        assert layer.cost == pytest.approx(float(theirs["lcost"][i]), rel=1e-5)
    expected = f32(sum(theirs["lcost"][i] for i in yolo_indexes) / f32(len(yolo_indexes)))
    assert cost == pytest.approx(float(expected), rel=1e-5)
    # backward: every layer's delta after backward_network (yolo adds into the layer before it)
    for i, layer in enumerate(net.layers):
        scale = max(1.0, float(np.abs(theirs["back"][i]).max()))
        np.testing.assert_allclose(
            as_np(layer.delta), theirs["back"][i], rtol=1e-4, atol=1e-5 * scale, err_msg=f"back {i}"
        )
    return {"net": net, "lines": ours_lines, "theirs": theirs}


def damp_layer(index: int):
    """Scale down the weights of convolution `index` so its yolo layer predicts boxes near
    anchor size at the cells' centres."""

    def tweak(net):
        layer = net.layers[index]
        layer.weights[:] = floats(as_np(layer.weights) * f32(0.02))
        layer.biases[:] = floats(as_np(layer.biases) * f32(0.1))

    return tweak


@needs_darknet
def test_two_yolo_layers_train_as_debians_darknet(tmp_path, capsys):
    """Masks that leave anchors to the other layer, truth_thresh < 1 (loop 1 writes class and box
    deltas), max=4 (the fifth and sixth boxes count only in the first layer), overlapping boxes."""
    cfg = tmp_path / "two_yolo.cfg"
    cfg.write_text(TWO_YOLO_CFG)
    weights = oracle_weights(tmp_path, cfg, 23, damp_layer(4))
    x = np.random.default_rng(3).random(BATCH * 32 * 32 * 3).astype(f32)
    got = compare_with_darknet(tmp_path, cfg, weights, x, HAND_TRUTH, capsys)
    counts = [int(line.rsplit(" ", 1)[1]) for line in got["lines"]]
    assert all(counts) and sum(counts) < 11  # anchors 2 and 3 in one layer, 0, 1, 4 in the other; max=4
    assert ".75R: 0.000000" not in got["lines"][0]
    # truth_thresh=.45 made a difference (predictions with IoU above it got class and box deltas)
    plain, _ = train_step_ours(cfg, weights, x, HAND_TRUTH, truth_thresh=1.0)
    assert not np.array_equal(as_np(plain.layers[5].delta), as_np(got["net"].layers[5].delta))


@needs_darknet
@pytest.mark.parametrize("size", [64, 96])
def test_yolov3_tiny_trains_as_debians_darknet(tmp_path, capsys, size):
    cfg = small_cfg(tmp_path, "yolov3-tiny", size)
    cfg.write_text(re.sub(r"(?m)^batch=1$", f"batch={BATCH}", cfg.read_text()))
    weights = oracle_weights(tmp_path, cfg, 17)
    x = np.random.default_rng(size).random(BATCH * size * size * 3).astype(f32)
    compare_with_darknet(tmp_path, cfg, weights, x, TINY_TRUTH, capsys)


# ---------------------------------------------------------------- ours alone: bad truths, training

SMALL_YOLO_CFG = (
    NET_AND_FIRST_CONV.format(size=16, rate=0.02)
    + """
[convolutional]
filters=16
size=3
stride=2
pad=1
activation=linear

[yolo]
mask=0,1
anchors=4,4, 8,6, 12,12
classes=3
num=3
ignore_thresh=.5
"""
)

GOOD_BOXES = [[0.30, 0.40, 0.30, 0.35, 1], [0.70, 0.60, 0.55, 0.50, 2], [0.31, 0.41, 0.28, 0.30, 0]]


def small_net(tmp_path: Path, seed: int = 0):
    cfg = tmp_path / "small_yolo.cfg"
    cfg.write_text(SMALL_YOLO_CFG)
    net = parse_network_cfg(str(cfg), init_rng=Random(seed))
    net.prepare_training(Random(seed))
    return net


def yolo_forward(net, x, truth) -> tuple:
    """The yolo layer's delta, cost and printed line after a training forward pass."""
    net.truth = truth
    net.forward(x, train=True)
    layer = net.layers[-1]
    return as_np(layer.delta), layer.cost


def test_bad_truths_are_skipped_and_nothing_is_read_outside(tmp_path, capsys):
    """NaN, inf, negative or zero sizes, a class outside 0..2 or not finite, a box whose cell is
    outside the grid (x = 1): skipped as if absent; the list still ends at the first x = 0."""
    net = small_net(tmp_path)
    x = floats(np.random.default_rng(1).random(BATCH * 16 * 16 * 3))
    nan, inf = float("nan"), float("inf")
    bad = [
        [nan, 0.5, 0.2, 0.2, 1],
        [0.5, 0.5, inf, 0.2, 1],
        [0.5, 0.5, -0.2, 0.3, 1],
        [0.5, 0.5, 0.2, 0.0, 1],
        [0.5, 0.5, 0.2, 0.2, 3],
        [0.5, 0.5, 0.2, 0.2, -1],
        [0.5, 0.5, 0.2, 0.2, nan],
        [1.0, 0.5, 0.2, 0.2, 1],
        [0.5, -1.5, 0.2, 0.2, 1],
    ]
    mixed = [bad[0], GOOD_BOXES[0], *bad[1:5], GOOD_BOXES[1], *bad[5:], GOOD_BOXES[2]]
    clean = truth_rows(GOOD_BOXES, GOOD_BOXES[:1])
    want = yolo_forward(net, x, floats(clean))
    got = yolo_forward(net, x, floats(truth_rows(mixed, [bad[4], GOOD_BOXES[0]])))
    np.testing.assert_array_equal(got[0], want[0])
    assert got[1] == want[1] and math.isfinite(got[1])
    # after x = 0 nothing counts, good or bad
    after_end = truth_rows([*GOOD_BOXES, [0, 0.5, 0.2, 0.2, 1], [0.6, 0.6, 0.3, 0.3, 2]], GOOD_BOXES[:1])
    np.testing.assert_array_equal(yolo_forward(net, x, floats(after_end))[0], want[0])
    # a short truth buffer: boxes are read only while whole ones fit (image 1's is cut off)
    short = floats(clean[: TRUTHS + 3])
    only_first = yolo_forward(net, x, floats(truth_rows(GOOD_BOXES, [])))
    np.testing.assert_array_equal(yolo_forward(net, x, short)[0], only_first[0])
    # max= beyond 90 boxes stops at the end of the buffer
    net.layers[-1].max_boxes = 1000
    full = floats(np.tile(np.array([0.5, 0.5, 0.3, 0.3, 1], f32), 2 * 90))
    delta, cost = yolo_forward(net, x, full)
    assert math.isfinite(cost)
    capsys.readouterr()


def test_yolo_delta_kernel_checks_its_buffers(tmp_path, capsys):
    """The kernel refuses a mask value outside the anchors and buffers too short for the geometry."""
    net = small_net(tmp_path)
    layer = net.layers[-1]
    stats = floats(np.zeros(9))
    truth = floats(truth_rows(GOOD_BOXES, []))

    def call(mask=(0, 1), delta=None, biases=None, stats=stats):
        delta = layer.delta if delta is None else delta
        biases = layer.biases if biases is None else biases
        kernels.yolo_delta(
            layer.output, delta, BATCH, layer.w, layer.h, 2, 3, array("i", mask), 3, biases, 16, 16, truth,
            90, 0.5, 1.0, stats,
        )  # fmt: skip

    call()
    assert stats[7] == 3  # count: the three good boxes all fit anchors 0 and 1
    with pytest.raises(ValueError, match="mask value"):
        call(mask=(0, 3))
    with pytest.raises(ValueError, match="yolo delta"):
        call(delta=floats(np.zeros(len(layer.delta) - 1)))
    with pytest.raises(ValueError, match="biases"):
        call(biases=floats(np.zeros(5)))
    with pytest.raises(ValueError, match="stats"):
        call(stats=floats(np.zeros(8)))


def test_no_truth_in_the_mask_prints_darknets_nan_line(tmp_path, capsys):
    """count 0: Darknet divides 0 by 0 and prints the x86 default NaN as glibc does ("-nan")."""
    net = small_net(tmp_path)
    x = floats(np.random.default_rng(2).random(BATCH * 16 * 16 * 3))
    capsys.readouterr()
    # a 12x12-pixel box fits anchor 2, which is not in this layer's mask
    yolo_forward(net, x, floats(truth_rows([[0.5, 0.5, 0.75, 0.75, 1]], [])))
    line = capsys.readouterr().out.strip()
    assert line.startswith("Region 2 Avg IOU: -nan, Class: -nan, Obj: -nan, No Obj: 0.")
    assert line.endswith(", .5R: -nan, .75R: -nan,  count: 0")


def test_backward_adds_the_delta_into_the_previous_layer(tmp_path, capsys):
    net = small_net(tmp_path)
    layer = net.layers[-1]
    delta = np.random.default_rng(4).normal(size=len(layer.delta)).astype(f32)
    layer.delta[:] = floats(delta)
    prev = np.random.default_rng(5).normal(size=len(layer.delta)).astype(f32)
    prev_buf = floats(prev)
    layer.backward(net, None, prev_buf)
    np.testing.assert_array_equal(as_np(prev_buf), prev + delta)
    layer.backward(net, None, None)  # the first layer: nothing to add to


def test_small_yolo_net_trains_and_its_weights_reload(tmp_path, capsys):
    net = small_net(tmp_path, seed=3)
    x = floats(np.random.default_rng(6).random(BATCH * 16 * 16 * 3))
    truth = floats(truth_rows(GOOD_BOXES[:2], [[0.6, 0.3, 0.35, 0.4, 0]]))
    costs = [net.train_step(x, truth) for _ in range(20)]
    assert all(math.isfinite(c) for c in costs)
    assert costs[-1] < 0.5 * costs[0], costs
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Region 2 Avg IOU")]
    assert len(lines) == 20
    path = tmp_path / "small_yolo.weights"
    save_weights(net, str(path))
    net.set_batch(1)
    ours = as_np(net.predict(x)).copy()
    again = parse_network_cfg(str(tmp_path / "small_yolo.cfg"))
    again.set_batch(1)
    load_weights(again, str(path))
    np.testing.assert_array_equal(as_np(again.predict(x)), ours)
