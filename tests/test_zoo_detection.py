"""The detection family (issue 15, docs/darknet-contract.md §4.18-4.21): [reorg], [region], [detection],
[local], [crop] and softmax groups/tree. Kernels against numpy, gradients by finite differences,
per-layer outputs and decoded boxes against Debian's libdarknet.so (tests/oracle/darknet_detect.c),
and `detect` against Debian's `darknet detector test` (skipped where the package or gcc is missing)."""

import re
import shutil
import subprocess
from array import array
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_wasmtime
from darknet_oracle import DARKNET_CFGS, DARKNET_DATA, build_harness, needs_darknet
from dlserver import kernels
from dlserver.boxes import do_nms_sort, get_network_boxes
from dlserver.errors import DLServerError
from dlserver.main import main
from dlserver.network import parse_network_cfg
from dlserver.rng import Random
from dlserver.weights import load_weights, save_weights

f32 = np.float32
DARKNET_BIN = Path("/usr/bin/darknet")
TREE_9K = DARKNET_DATA / "9k.tree"


def floats(values) -> array:
    return array("f", np.asarray(values, dtype=f32).ravel().tolist())


def as_np(buf) -> np.ndarray:
    return np.frombuffer(buf, dtype=f32).copy()


# ---------------------------------------------------------------- numpy references (Darknet's loops)


def ref_reorg(x, w, h, c, batch, stride, forward):
    out = np.zeros_like(x)
    out_c = c // (stride * stride)
    for b in range(batch):
        for k in range(c):
            for j in range(h):
                for i in range(w):
                    src = i + w * (j + h * (k + c * b))
                    c2, off = k % out_c, k // out_c
                    w2, h2 = i * stride + off % stride, j * stride + off // stride
                    o = w2 + w * stride * (h2 + h * stride * (c2 + out_c * b))
                    if forward:
                        out[o] = x[src]
                    else:
                        out[src] = x[o]
    return out


def ref_softmax(x, n, batch, batch_offset, groups, group_offset, stride, temp):
    out = np.zeros_like(x)
    for b in range(batch):
        for g in range(groups):
            idx = b * batch_offset + g * group_offset + np.arange(n) * stride
            v = x[idx].astype(np.float64) / temp
            e = np.exp(v - v.max())
            out[idx] = (e / e.sum()).astype(f32)
    return out


# ---------------------------------------------------------------- kernels


@pytest.mark.parametrize("stride,forward", [(2, False), (2, True), (3, False)])
def test_reorg_kernel_matches_numpy_and_is_a_permutation(stride, forward):
    rng = np.random.default_rng(1)
    w, h, c, batch = 6, 6, 36, 2
    x = rng.standard_normal(batch * w * h * c).astype(f32)
    out = floats(np.zeros_like(x))
    kernels.reorg(floats(x), w, h, c, batch, stride, forward, out)
    want = ref_reorg(x, w, h, c, batch, stride, forward)
    assert as_np(out).tobytes() == want.tobytes()
    assert sorted(as_np(out).tolist()) == sorted(x.tolist())
    back = floats(np.zeros_like(x))
    kernels.reorg(out, w, h, c, batch, stride, not forward, back)  # the backward pass undoes it
    assert as_np(back).tobytes() == x.tobytes()
    with pytest.raises(ValueError):
        kernels.reorg(floats(x[:-1]), w, h, c, batch, stride, forward, out)
    with pytest.raises(ValueError):
        kernels.reorg(floats(x), w, h, 17, batch, stride, forward, out)


def test_flatten_kernel_matches_numpy():
    rng = np.random.default_rng(2)
    size, layers, batch = 5, 3, 2
    x = rng.standard_normal(batch * size * layers).astype(f32)
    out = floats(np.zeros_like(x))
    kernels.flatten(floats(x), size, layers, batch, True, out)
    want = x.reshape(batch, layers, size).transpose(0, 2, 1).ravel()
    assert as_np(out).tobytes() == want.tobytes()
    back = floats(np.zeros_like(x))
    kernels.flatten(out, size, layers, batch, False, back)
    assert as_np(back).tobytes() == x.tobytes()


@pytest.mark.parametrize(
    "n,batch,batch_offset,groups,group_offset,stride,temp",
    [(4, 2, 12, 3, 4, 1, 1.0), (3, 2, 12, 4, 1, 4, 1.0), (6, 1, 6, 1, 0, 1, 0.5)],
)
def test_softmax_strided_matches_numpy(n, batch, batch_offset, groups, group_offset, stride, temp):
    rng = np.random.default_rng(3)
    x = (3 * rng.standard_normal(batch * batch_offset)).astype(f32)
    out = floats(np.zeros_like(x))
    kernels.softmax_strided(floats(x), n, batch, batch_offset, groups, group_offset, stride, temp, out)
    want = ref_softmax(x, n, batch, batch_offset, groups, group_offset, stride, temp)
    np.testing.assert_allclose(as_np(out), want, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError):
        kernels.softmax_strided(
            floats(x[:-1]), n, batch, batch_offset, groups, group_offset, stride, temp, out
        )


def test_crop_kernel_matches_numpy():
    rng = np.random.default_rng(4)
    batch, c, h, w, oh, ow = 2, 3, 7, 6, 4, 3
    x = rng.standard_normal(batch * c * h * w).astype(f32)
    out = floats(np.zeros(batch * c * oh * ow))
    im = x.reshape(batch, c, h, w)
    kernels.crop(floats(x), batch, c, h, w, oh, ow, 2, 1, False, 2.0, -1.0, out)
    want = im[:, :, 2 : 2 + oh, 1 : 1 + ow] * f32(2) + f32(-1)
    assert as_np(out).tobytes() == want.astype(f32).ravel().tobytes()
    kernels.crop(floats(x), batch, c, h, w, oh, ow, 3, 2, True, 1.0, 0.0, out)
    want = im[:, :, 3 : 3 + oh, :][:, :, :, [w - 2 - j - 1 for j in range(ow)]]
    assert as_np(out).tobytes() == want.astype(f32).ravel().tobytes()
    with pytest.raises(ValueError):
        kernels.crop(floats(x), batch, c, h, w, oh, ow, 4, 0, False, 1.0, 0.0, out)


# ---------------------------------------------------------------- layers in small networks

LOCAL_CFG = """[net]
batch={batch}
subdivisions=1
height=7
width=6
channels=2
learning_rate=0.1
momentum=0.9
decay=0.0005

[local]
filters=3
size=3
stride=1
pad=1
activation={activation}

[local]
filters=2
size=2
stride=2
pad=0
activation=linear

[connected]
output=4
activation=linear

[softmax]
groups=2
"""


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def randomise(net, seed: int, scale: float = 1.0) -> None:
    """Random parameters everywhere, scaled so that activations stay of order 1 through a deep
    net: weights N(0, scale^2/fan_in), biases and rolling means N(0, 0.1^2), batch-norm scales
    and rolling variances U(0.5, 1.5)."""
    rng = np.random.default_rng(seed)
    for layer in net.layers:
        arrays = layer.parameter_arrays()
        if not arrays:
            continue
        if layer.kind == "convolutional":
            fan_in = len(layer.weights) // max(1, layer.n)
        elif layer.kind == "local":
            fan_in = layer.ksize
        else:
            fan_in = layer.inputs
        for arr in arrays:
            names = ("weights", "scales", "rolling_variance")
            name = next((k for k in names if getattr(layer, k, None) is arr), "")
            if name == "weights":
                v = rng.standard_normal(len(arr)) * scale / np.sqrt(fan_in)
            elif name:
                v = rng.uniform(0.5, 1.5, len(arr))
            else:
                v = 0.1 * rng.standard_normal(len(arr))
            arr[:] = floats(v)


def test_local_layer_table_and_weights_order(tmp_path, capsys):
    net = parse_network_cfg(
        write(tmp_path / "l.cfg", LOCAL_CFG.format(batch=1, activation="leaky")), init_rng=Random(0)
    )
    err = capsys.readouterr().err
    assert "    0 Local Layer: 7 x 6 x 2 image, 3 filters -> 7 x 6 x 3 image" in err
    assert "    1 Local Layer: 7 x 6 x 3 image, 2 filters -> 3 x 3 x 2 image" in err
    first = net.layers[0]
    assert len(first.biases) == 7 * 6 * 3 and len(first.weights) == 42 * 3 * 18
    # Darknet's init quirk: only the first filters*size*size*c weights are drawn
    w = as_np(first.weights)
    assert np.count_nonzero(w[: 3 * 18]) == 3 * 18 and not w[3 * 18 :].any()
    assert [len(a) for a in first.parameter_arrays()] == [len(first.biases), len(first.weights)]


def numeric_gradient_check(net, x, truth_fn, eps=1e-2):
    """Central differences of the scalar loss sum(y * t) of the last layer's output against
    the guest's backward pass, on the input and on the first layer's weights."""
    rng = np.random.default_rng(7)
    t = rng.standard_normal(net.outputs * net.batch).astype(f32)

    def loss(xv):
        out = net.forward(floats(xv))
        return float(np.dot(as_np(out)[: len(t)].astype(np.float64), t))

    # analytic: set the last layer's delta to t and propagate
    net.prepare_training(Random(0))
    xbuf = floats(x)
    current = xbuf
    for layer in net.layers:
        layer.clear_delta()
        layer.forward(net, current, False)
        current = layer.output
    in_delta = floats(np.zeros_like(x))
    net.layers[-1].delta[:] = floats(t)
    for i in range(len(net.layers) - 1, -1, -1):
        layer = net.layers[i]
        prev = net.layers[i - 1] if i else None
        layer.backward(net, prev.output if prev else xbuf, prev.delta if prev else in_delta)
    analytic = as_np(in_delta)
    for k in rng.choice(len(x), 12, replace=False):
        xp, xm = x.copy(), x.copy()
        xp[k] += eps
        xm[k] -= eps
        numeric = (loss(xp) - loss(xm)) / (2 * eps)
        assert abs(numeric - analytic[k]) < 2e-2 * max(1.0, abs(numeric)), (k, numeric, analytic[k])
    return net


def test_local_layers_gradients_by_finite_differences(tmp_path, capsys):
    cfg = LOCAL_CFG.format(batch=1, activation="leaky").replace(
        "[connected]\noutput=4\nactivation=linear\n\n[softmax]\ngroups=2\n", ""
    )
    net = parse_network_cfg(write(tmp_path / "l.cfg", cfg), init_rng=Random(0))
    randomise(net, 1)
    x = np.random.default_rng(2).standard_normal(net.inputs).astype(f32)
    numeric_gradient_check(net, x, None)
    # weight gradient of the first local layer, one entry at a time
    first = net.layers[0]
    t = np.random.default_rng(7).standard_normal(net.outputs).astype(f32)
    analytic = as_np(first.weight_updates)
    for k in [0, 17, 100, 1000, len(first.weights) - 1]:
        saved = first.weights[k]
        vals = []
        for sign in (1, -1):
            first.weights[k] = saved + sign * 1e-2
            vals.append(float(np.dot(as_np(net.forward(floats(x))).astype(np.float64), t)))
        first.weights[k] = saved
        numeric = (vals[0] - vals[1]) / 2e-2
        assert abs(numeric - analytic[k]) < 2e-2 * max(1.0, abs(numeric)), (k, numeric, analytic[k])


def test_local_layers_train(tmp_path, capsys):
    """Training steps change the weights by Darknet's SGD and lower the loss."""
    net = parse_network_cfg(
        write(tmp_path / "l.cfg", LOCAL_CFG.format(batch=2, activation="leaky")), init_rng=Random(0)
    )
    randomise(net, 3)
    net.prepare_training(Random(0))
    rng = np.random.default_rng(5)
    x = floats(rng.standard_normal(2 * net.inputs))
    truth = floats([1, 0, 0, 1, 0, 1, 1, 0])
    errors = [net.train_step(x, truth) for _ in range(30)]
    assert errors[-1] < errors[0]


def test_softmax_groups_and_tree(tmp_path, capsys):
    tree = tmp_path / "t.tree"
    tree.write_text("a -1\nb -1\nc 0\nd 0\ne 0\nf 1\ng 1\n")
    cfg = f"[net]\nheight=1\nwidth=1\nchannels=7\n[softmax]\ntree={tree}\n"
    net = parse_network_cfg(write(tmp_path / "s.cfg", cfg))
    t = net.layers[0].tree
    assert list(t.group_offset) == [0, 2, 5] and list(t.group_size) == [2, 3, 2]
    assert list(t.child) == [1, 2, -1, -1, -1, -1, -1] and list(t.parent) == [-1, -1, 0, 0, 0, 1, 1]
    x = np.random.default_rng(1).standard_normal(7).astype(f32)
    y = as_np(net.predict(floats(x)))
    for off, size in [(0, 2), (2, 3), (5, 2)]:
        np.testing.assert_allclose(
            y[off : off + size], ref_softmax(x[off : off + size], size, 1, size, 1, 0, 1, 1.0), rtol=1e-6
        )
    cfg = "[net]\nheight=1\nwidth=1\nchannels=6\n[softmax]\ngroups=3\ntemperature=2\n"
    net = parse_network_cfg(write(tmp_path / "g.cfg", cfg))
    x = np.random.default_rng(2).standard_normal(6).astype(f32)
    np.testing.assert_allclose(
        as_np(net.predict(floats(x))), ref_softmax(x, 2, 1, 6, 3, 2, 1, 2.0), rtol=1e-6
    )


@pytest.mark.skipif(not TREE_9K.exists(), reason="Debian's 9k.tree is not installed")
def test_debians_9k_tree_reads():
    from dlserver.layers.softmax import read_tree

    t = read_tree(str(TREE_9K), "x.cfg:1")
    assert t.n == 9418 and sum(t.group_size) == 9418 and t.groups == len(t.group_size)
    assert all(p < i for i, p in enumerate(t.parent))


def test_detection_training_deltas(tmp_path, capsys):
    """One cell with an object: class, confidence and box deltas as Darknet's forward_detection_layer."""
    cfg = NET.format(h=1, w=1, c="{}") + "[detection]\nclasses=2\ncoords=4\nnum=2\nside=2\n"
    cfg += "rescore=1\nsqrt=1\n"
    inputs = 2 * 2 * (5 * 2 + 2)
    net = parse_network_cfg(write(tmp_path / "d.cfg", cfg.format(inputs)))
    layer = net.layers[0]
    net.prepare_training(Random(0))
    rng = np.random.default_rng(3)
    x = rng.uniform(0.1, 0.9, inputs).astype(f32)
    truth = np.zeros(4 * 7, f32)
    truth[7 * 3 : 7 * 4] = [1, 0, 1, 0.4, 0.6, 0.25, 0.36]  # cell 3: class 1, box
    net.truth = floats(truth)
    layer.forward(net, floats(x), True)
    d = as_np(layer.delta)
    conf = x[8:16]
    # every confidence gets 0 - conf but the responsible one in cell 3
    changed = [i for i in range(8) if d[8 + i] != f32(-conf[i])]
    assert changed in ([6], [7])
    np.testing.assert_array_equal(d[6:8], np.array([0, 1], f32) - x[6:8])
    best = changed[0] - 6
    box = x[16 + (3 * 2 + best) * 4 : 16 + (3 * 2 + best) * 4 + 4]
    np.testing.assert_allclose(
        d[16 + (3 * 2 + best) * 4 : 16 + (3 * 2 + best) * 4 + 4],
        [0.4 - box[0], 0.6 - box[1], 0.5 - box[2], 0.6 - box[3]],
        rtol=1e-6,
    )
    assert layer.cost == pytest.approx(float(np.sum(d.astype(np.float64) ** 2)), rel=1e-5)


# ---------------------------------------------------------------- bad cfgs: one clear line naming file:line

NET = "[net]\nheight={h}\nwidth={w}\nchannels={c}\n"


@pytest.mark.parametrize(
    "text,message",
    [
        (NET.format(h=6, w=6, c=32) + "[reorg]\nstride=4\n", "stride=4 does not divide"),
        (NET.format(h=6, w=6, c=6) + "[reorg]\nstride=2\n", "does not divide the 6 channels"),
        (NET.format(h=6, w=6, c=8) + "[reorg]\nstride=0\n", "stride=0 must be at least 1"),
        (
            NET.format(h=6, w=6, c=3) + "[crop]\ncrop_height=7\ncrop_width=4\n",
            "does not fit in the 6 x 6 input",
        ),
        (NET.format(h=2, w=2, c=24) + "[region]\ncoords=4\nclasses=2\nnum=3\n", "needs 21 input channels"),
        (
            NET.format(h=1, w=1, c=100) + "[detection]\ncoords=4\nclasses=20\nnum=2\nside=7\n",
            "needs 1470 inputs",
        ),
        (NET.format(h=1, w=1, c=7) + "[softmax]\ntree=missing.tree\n", "tree=missing.tree"),
        (
            NET.format(h=2, w=2, c=7) + "[region]\ncoords=4\nclasses=2\nnum=1\ntree=missing.tree\n",
            "missing.tree",
        ),
        (NET.format(h=5, w=5, c=2) + "[local]\nsize=5\npad=1\n", "im2col"),
        (NET.format(h=1, w=1, c=6) + "[softmax]\ngroups=4\n", "groups=4"),
        (NET.format(h=2, w=2, c=4) + "[reorg]\nextra=2\nreverse=1\n", "cannot be combined"),
        (NET.format(h=1, w=1, c=9) + "[detection]\ncoords=4\nclasses=4\nnum=1\nside=1\nforced=1\n", "num >="),
    ],
)
def test_bad_cfgs_are_one_clear_error(tmp_path, capsys, text, message):
    path = write(tmp_path / "bad.cfg", text)
    with pytest.raises(DLServerError, match=re.escape(message)) as e:
        parse_network_cfg(path)
    assert str(e.value).startswith(f"{path}:")
    assert "\n" not in str(e.value)


def test_malformed_tree_file_names_the_file(tmp_path, capsys):
    tree = tmp_path / "bad.tree"
    tree.write_text("a -1\nb 5\n")
    path = write(tmp_path / "s.cfg", NET.format(h=1, w=1, c=2) + f"[softmax]\ntree={tree}\n")
    with pytest.raises(
        DLServerError, match=re.escape(f"{tree}:2: tree file: parent 5 is not an earlier line")
    ):
        parse_network_cfg(path)


# ---------------------------------------------------------------- Debian's Darknet as the oracle


def small_cfg(tmp_path: Path, name: str, size: int) -> Path:
    """A Debian cfg at size x size, batch 1."""
    text = (DARKNET_CFGS / f"{name}.cfg").read_text()
    text = re.sub(r"(?m)^(height|width)=\d+", rf"\1={size}", text)
    text = re.sub(r"(?m)^(batch|subdivisions)=\d+", r"\1=1", text)
    path = tmp_path / f"{name}_{size}.cfg"
    path.write_text(text)
    return path


HAND_CFG = """[net]
batch=1
subdivisions=1
height=16
width=14
channels=3

[crop]
crop_height=12
crop_width=10
flip=1

[convolutional]
filters=8
size=5
stride=1
pad=1
activation=leaky

[local]
filters=4
size=3
stride=1
pad=1
activation=leaky

[reorg]
stride=2

[reorg]
stride=2
reverse=1

[reorg]
stride=1
flatten=1

[local]
filters=6
size=2
stride=2
activation=linear

[reorg]
extra=3

[softmax]
groups=3
temperature=0.7
"""


def oracle_weights(tmp_path: Path, cfg: Path, seed: int, tweak=None) -> Path:
    """Random weights written by the guest (Darknet's format): both sides load the same file."""
    net = parse_network_cfg(str(cfg), init_rng=Random(0))
    randomise(net, seed)
    if tweak:
        tweak(net)
    path = tmp_path / f"{cfg.stem}.weights"
    save_weights(net, str(path))
    return path


def layer_table(stderr: str) -> list[str]:
    """The layer table and the default messages among it (up to the weights' loading)."""
    lines = stderr.splitlines()
    start = lines.index("layer     filters    size              input                output")
    end = next((i for i, line in enumerate(lines) if line.startswith("Loading weights")), len(lines))
    return lines[start:end]


def run_oracle(tmp_path: Path, cfg: Path, weights: Path, x: np.ndarray, boxes=None, table=None):
    """Darknet's per-layer outputs (and boxes); `table` (a list) receives its layer table."""
    exe = build_harness("darknet_detect", tmp_path)
    (tmp_path / "x.f32").write_bytes(x.astype(f32).tobytes())
    args = [str(exe), str(cfg), str(weights), str(tmp_path / "x.f32")]
    if boxes:
        args += [str(v) for v in boxes]
    # a subprocess: libdarknet sets flush-to-zero for the whole process that loads it
    run = subprocess.run(args, capture_output=True, text=True, check=True, timeout=300)
    if table is not None:
        table.extend(layer_table(run.stderr))
    layers, dets = {}, []
    for line in run.stdout.splitlines():
        if line.startswith("det "):
            dets.append(np.array(line.split()[1:], dtype=f32))
            continue
        index, count, *values = line.split()
        layers[int(index)] = np.array(values, dtype=f32)
        assert len(values) == int(count)
    return layers, dets


def last_conv_bias(value: float, gain: float = 4.0):
    """Spread the last convolution's outputs (weights times gain) and raise its biases, so that
    some boxes pass a low threshold."""

    def tweak(net):
        for layer in reversed(net.layers):
            if layer.kind in ("convolutional", "connected"):
                layer.weights[:] = floats(as_np(layer.weights) * f32(gain))
                layer.biases[:] = floats(as_np(layer.biases) + f32(value))
                return

    return tweak


def compare_layers(net, theirs, exact_kinds=()):
    assert len(theirs) == len(net.layers)
    for i, layer in enumerate(net.layers):
        ours = as_np(layer.output)[: layer.outputs]
        if layer.kind in exact_kinds:
            assert np.array_equal(ours, theirs[i]), f"layer {i} ({layer.kind})"
        else:
            # -Ofast: Darknet's exp, softmax sums and gemm reductions are vectorised / reassociated
            np.testing.assert_allclose(
                ours, theirs[i], rtol=2e-5, atol=2e-6, err_msg=f"layer {i} ({layer.kind})"
            )


def compare_dets(ours, theirs, classes):
    """Boxes as sets (glibc's and musl's qsort order ties differently): x y w h objectness probs."""
    mine = np.array([[d.x, d.y, d.w, d.h, d.objectness, *d.prob] for d in ours], dtype=f32)
    other = np.array(theirs, dtype=f32)
    assert mine.shape == other.shape == (len(ours), 5 + classes)
    key = lambda a: a[np.lexsort(a[:, :5].T[::-1])]  # noqa: E731
    np.testing.assert_allclose(key(mine), key(other), rtol=1e-4, atol=1e-5)


def predict_ours(cfg: Path, weights: Path, x: np.ndarray):
    net = parse_network_cfg(str(cfg))
    net.set_batch(1)
    load_weights(net, str(weights))
    net.predict(floats(x))
    return net


def predict_both(tmp_path: Path, capsys, cfg: Path, weights: Path, x: np.ndarray, boxes=None):
    """Our network after predicting x, Darknet's per-layer outputs and its boxes; the two layer
    tables (and default messages) are checked equal, byte for byte."""
    table: list[str] = []
    theirs, their_dets = run_oracle(tmp_path, cfg, weights, x, boxes, table)
    capsys.readouterr()
    net = predict_ours(cfg, weights, x)
    assert layer_table(capsys.readouterr().err) == table
    return net, theirs, their_dets


@needs_darknet
def test_hand_cfg_layers_match_debians_darknet(tmp_path, capsys):
    """crop (centre), local, reorg (plain, reverse, flatten, extra), softmax groups + temperature.
    (The 5x5 convolution is there for Darknet: its local layer counts its workspace in floats
    where parse_network_cfg allocates bytes, so a larger convolution workspace must cover it.)"""
    cfg = tmp_path / "hand.cfg"
    cfg.write_text(HAND_CFG)
    weights = oracle_weights(tmp_path, cfg, 11)
    x = np.random.default_rng(5).random(16 * 14 * 3).astype(f32)
    net, theirs, _ = predict_both(tmp_path, capsys, cfg, weights, x)
    compare_layers(net, theirs, exact_kinds=("crop", "convolutional", "reorg"))


@pytest.mark.parametrize(
    "name,size,thresh,gain,bias,exact",
    [
        ("yolov2-tiny", 96, 0.25, 8, 0.5, ("convolutional", "maxpool")),  # region, softmax, 80 classes
        ("yolov2-tiny-voc", 96, 0.2, 4, 0.5, ("convolutional", "maxpool")),
        (
            "yolov2",
            64,
            0.06,
            8,
            0.5,
            ("convolutional", "maxpool", "reorg", "route"),
        ),  # reorg + route + region
        ("yolov1-tiny", 128, 0.14, 1, 0.0, ("convolutional", "maxpool")),  # connected + detection
        ("yolov1", 64, 0.1, 1, 0.0, ("convolutional", "maxpool")),  # local, dropout, connected, detection
    ],
)
@needs_darknet
def test_detectors_match_debians_darknet(tmp_path, capsys, name, size, thresh, gain, bias, exact):
    cfg = small_cfg(tmp_path, name, size)
    weights = oracle_weights(tmp_path, cfg, 21, last_conv_bias(bias, gain))
    x = np.random.default_rng(6).random(size * size * 3).astype(f32)
    im_w, im_h = 200, 150
    net, theirs, their_dets = predict_both(tmp_path, capsys, cfg, weights, x, (im_w, im_h, thresh))
    compare_layers(net, theirs, exact)
    classes = net.layers[-1].classes
    dets = do_nms_sort(get_network_boxes(net, im_w, im_h, thresh), classes, 0.45)
    assert any(max(d.prob) > 0 for d in dets), "no box passes the threshold: the test would prove little"
    compare_dets(dets, their_dets, classes)


# ---------------------------------------------------------------- `detect` against `darknet detector test`


def class_lines(text: str) -> list[str]:
    return sorted(line for line in text.splitlines() if re.fullmatch(r"[\w ]+: \d+%", line))


@pytest.mark.skipif(not DARKNET_BIN.exists(), reason="Debian's darknet binary is not installed")
@pytest.mark.parametrize(
    "name,size,names,thresh,gain,bias",
    [
        ("yolov2-tiny-voc", 160, "voc.names", 0.25, 4, 0.6),
        ("yolov1-tiny", 192, "voc.names", 0.17, 1, 0.0),
        # the full-size YOLOv2 (608x608, 80 classes): some 25 s, most of it Darknet's
        pytest.param("yolov2", 608, "coco.names", 0.35, 16, 0.5, marks=pytest.mark.slow),
    ],
)
def test_detect_prints_what_darknet_detector_test_prints(
    workdir, capsys, monkeypatch, name, size, names, thresh, gain, bias
):
    monkeypatch.setenv("DL_SERVER_CLOCK", "0")
    cfg = small_cfg(workdir / "cfg", name, size)
    weights = oracle_weights(workdir / "model", cfg, 21, last_conv_bias(bias, gain))
    shutil.copy(f"/usr/share/darknet/data/{names}", workdir / "data" / names)
    (workdir / "cfg" / "coco.data").write_text(f"names=data/{names}\n")
    rng = np.random.default_rng(8)
    pixels = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    Image.fromarray(pixels, "RGB").save(workdir / "data" / "im.png")
    run = subprocess.run(
        [
            str(DARKNET_BIN),
            "detector",
            "test",
            "cfg/coco.data",
            str(cfg),
            str(weights),
            "data/im.png",
            "-thresh",
            str(thresh),
            "-out",
            "theirs",
        ],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    theirs = class_lines(run.stdout)
    assert theirs, "no class line: the test would prove little"
    args = [
        "dl-server",
        "detect",
        str(cfg),
        str(weights),
        "data/im.png",
        "-thresh",
        str(thresh),
        "-out",
        "ours",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "data/im.png: Predicted in 0.000000 seconds."
    assert class_lines(out) == theirs
    assert (workdir / "ours.jpg").exists() and (workdir / "theirs.jpg").exists()
    if name == "yolov1-tiny":
        # YOLOv1 boxes are in pixels (Darknet's quirk), so the drawn boxes are clamped to the image's
        # right and bottom edges, where only the labels' white border shows: the same JPEG bytes
        assert (workdir / "ours.jpg").read_bytes() == (workdir / "theirs.jpg").read_bytes()


def test_region_tree_forward_and_top_prediction(tmp_path, capsys):
    """tree=: a softmax per WordTree group over each (anchor, cell)'s classes; the detector
    multiplies down the tree and takes the top prediction above the hierarchy threshold."""
    tree = tmp_path / "t.tree"
    tree.write_text("animal -1\nthing -1\ndog 0\ncat 0\ncar 1\nbus 1\n")
    cfg = "[net]\nheight=2\nwidth=2\nchannels=22\n[region]\ncoords=4\nclasses=6\nnum=2\ntree={}\n"
    net = parse_network_cfg(write(tmp_path / "r.cfg", cfg.format(tree)))
    layer = net.layers[0]
    x = np.random.default_rng(4).standard_normal(88).astype(f32)
    y = as_np(net.predict(floats(x)))
    hw = 4
    X, Y = x.reshape(2, 11, hw), y.reshape(2, 11, hw)
    sig = lambda v: 1 / (1 + np.exp(-v.astype(np.float64)))  # noqa: E731
    np.testing.assert_allclose(Y[:, :2], sig(X[:, :2]), rtol=1e-6)
    np.testing.assert_allclose(Y[:, 2:4], X[:, 2:4])  # w, h raw
    np.testing.assert_allclose(Y[:, 4], sig(X[:, 4]), rtol=1e-6)
    for off, size in [(0, 2), (2, 2), (4, 2)]:
        e = np.exp(X[:, 5 + off : 5 + off + size].astype(np.float64))
        np.testing.assert_allclose(
            Y[:, 5 + off : 5 + off + size], e / e.sum(axis=1, keepdims=True), rtol=1e-6
        )
    dets = get_network_boxes(net, 2, 2, 0.0, 0.5)  # a square image: no letterbox correction
    assert len(dets) == 8
    for d, (a, cell) in zip(dets, [(a, c) for a in range(2) for c in range(hw)]):
        cls = Y[a, 5:, cell].astype(np.float64)
        p = cls.copy()
        for j, parent in enumerate(layer.tree.parent):
            if parent >= 0:
                p[j] *= p[parent]
        top = int(np.argmax(cls[:2]))  # root group; go down while p*max > 0.5
        if cls[top] > 0.5:
            child = 2 + 2 * top
            below = child + int(np.argmax(p[child : child + 2]))
            if cls[top] * p[below] > 0.5:  # Darknet's p*max, max already multiplied down
                top = below
        assert np.nonzero(d.prob)[0].tolist() == [top]
        assert d.prob[top] == pytest.approx(Y[a, 4, cell], rel=1e-6)


@pytest.mark.component
def test_region_and_detection_detect_in_component_equals_native(component, workdir, capsys, monkeypatch):
    """`detect` with a [region] head (reorg + route) and a [detection] head: the same lines and
    image in dl-server.wasm."""
    monkeypatch.setenv("DL_SERVER_CLOCK", "0")
    (workdir / "data" / "voc.names").write_text("".join(f"c{i}\n" for i in range(20)))
    (workdir / "cfg" / "coco.data").write_text("classes=20\nnames=data/voc.names\n")
    pixels = np.random.default_rng(9).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    Image.fromarray(pixels, "RGB").save(workdir / "data" / "im.png")
    for name, size, thresh, gain, bias in [
        ("yolov2-voc", 64, 0.1, 8, 0.5),
        ("yolov1-tiny", 128, 0.14, 1, 0.0),
    ]:
        text = (DARKNET_CFGS / f"{name}.cfg").read_text() if DARKNET_CFGS.exists() else None
        if text is None:
            pytest.skip("Debian's cfgs are not installed")
        cfg = small_cfg(workdir / "cfg", name, size)
        cfg_rel = f"cfg/{cfg.name}"
        weights = oracle_weights(workdir / "model", cfg, 21, last_conv_bias(bias, gain))
        args = [
            "detect",
            cfg_rel,
            f"model/{weights.name}",
            "data/im.png",
            "-thresh",
            str(thresh),
            "-out",
            "native",
        ]
        assert main(["dl-server", *args]) == 0
        native = capsys.readouterr().out
        assert re.search(r"^c\d+: \d+%$", native, re.MULTILINE), native
        args[-1] = "wasm"
        run = run_wasmtime(workdir, *args)
        assert run.returncode == 0, run.stderr
        seconds = re.compile(r"Predicted in [0-9.]+ seconds")  # the component's clock runs
        assert seconds.sub("", run.stdout) == seconds.sub("", native)
        assert (workdir / "wasm.jpg").read_bytes() == (workdir / "native.jpg").read_bytes()


# ---------------------------------------------------------------- training deltas against Debian's Darknet

REGION_TRAIN_CFG = """[net]
batch=1
subdivisions=1
height=16
width=16
channels=3

[convolutional]
filters=8
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[maxpool]
size=2
stride=2

[convolutional]
filters=16
size=1
stride=1
pad=1
activation=linear

[region]
anchors=0.6,0.9, 2.0,1.5
classes=3
coords=4
num=2
softmax={softmax}
rescore={rescore}
bias_match={bias_match}
thresh=.3
object_scale=5
noobject_scale=1
class_scale=1
coord_scale=1
"""

DETECTION_TRAIN_CFG = """[net]
batch=1
subdivisions=1
height=16
width=16
channels=3

[convolutional]
filters=4
size=3
stride=2
pad=1
activation=leaky

[connected]
output={outputs}
activation=linear

[detection]
classes=3
coords=4
rescore=1
side=2
num=2
softmax={softmax}
sqrt=1
object_scale=1
noobject_scale=.5
class_scale=1
coord_scale=5
"""


def region_truth() -> np.ndarray:
    t = np.zeros(30 * 5, f32)
    t[:10] = [0.3, 0.4, 0.2, 0.3, 1, 0.8, 0.7, 0.5, 0.4, 2]
    return t


def detection_truth() -> np.ndarray:
    t = np.zeros(4 * 8, f32)
    t[8 * 1 : 8 * 2] = [1, 0, 0, 1, 0.3, 0.6, 0.25, 0.36]
    t[8 * 2 : 8 * 3] = [1, 1, 0, 0, 0.7, 0.2, 0.5, 0.3]
    return t


def train_forward_ours(cfg: Path, weights: Path, x: np.ndarray, truth: np.ndarray):
    net = parse_network_cfg(str(cfg))
    net.set_batch(1)
    load_weights(net, str(weights))
    net.prepare_training(Random(0))
    net.truth = floats(truth)  # type: ignore[assignment]
    net.forward(floats(x), train=True)
    deltas = [as_np(layer.delta).copy() if layer.delta is not None else None for layer in net.layers]
    for i in range(len(net.layers) - 1, -1, -1):
        prev = net.layers[i - 1] if i else None
        net.layers[i].backward(net, prev.output if prev else floats(x), prev.delta if prev else None)
    return net, deltas


def run_train_oracle(tmp_path, cfg, weights, x, truth):
    (tmp_path / "t.f32").write_bytes(truth.astype(f32).tobytes())
    exe = build_harness("darknet_detect", tmp_path)
    (tmp_path / "x.f32").write_bytes(x.astype(f32).tobytes())
    run = subprocess.run(
        [str(exe), str(cfg), str(weights), str(tmp_path / "x.f32"), str(tmp_path / "t.f32")],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    out = {"lines": [], "out": {}, "delta": {}, "back": {}}
    for line in run.stdout.splitlines():
        word, *rest = line.split()
        if word == "cost":
            out["cost"] = float(rest[0])
        elif word in ("out", "delta", "back"):
            out[word][int(rest[0])] = np.array(rest[2:], dtype=f32)
        else:
            out["lines"].append(line)
    return out


@needs_darknet
@pytest.mark.parametrize(
    "softmax,rescore,bias_match,seen", [(1, 1, 1, 0), (0, 0, 0, 20000), (1, 0, 1, 20000)]
)
def test_region_training_deltas_match_debians_darknet(tmp_path, capsys, softmax, rescore, bias_match, seen):
    cfg = tmp_path / "region.cfg"
    cfg.write_text(REGION_TRAIN_CFG.format(softmax=softmax, rescore=rescore, bias_match=bias_match))

    def set_seen(net):
        net.seen = seen

    weights = oracle_weights(tmp_path, cfg, 41, set_seen)
    x = np.random.default_rng(7).random(16 * 16 * 3).astype(f32)
    truth = region_truth()
    theirs = run_train_oracle(tmp_path, cfg, weights, x, truth)
    capsys.readouterr()
    net, deltas = train_forward_ours(cfg, weights, x, truth)
    out = capsys.readouterr().out
    region = net.layers[-1]
    np.testing.assert_allclose(
        as_np(region.output), theirs_output(tmp_path, cfg, weights, x), rtol=2e-5, atol=2e-6
    )
    np.testing.assert_allclose(deltas[-1], theirs["delta"][len(net.layers) - 1], rtol=1e-4, atol=1e-5)
    assert region.cost == pytest.approx(theirs["cost"], rel=1e-4)
    assert_same_line("Region Avg IOU", out, theirs["lines"])
    # Darknet's CPU backward of [region] sends nothing back
    for i in range(len(net.layers) - 1):
        assert not theirs["back"][i].any()
        assert not as_np(net.layers[i].delta).any()


def assert_same_line(start: str, ours: str, theirs: list[str]) -> None:
    """The layer's printed line: the same numbers to the printed digits, give or take the last one."""
    mine = [line for line in ours.splitlines() if line.startswith(start)]
    other = [line for line in theirs if line.startswith(start)]
    assert len(mine) == len(other) == 1, (mine, other)
    num = re.compile(r"-?[0-9.]+|nan")
    assert num.sub("#", mine[0]) == num.sub("#", other[0])
    values = [[float(v) for v in num.findall(line)] for line in (mine[0], other[0])]
    np.testing.assert_allclose(values[0], values[1], rtol=1e-4, atol=2e-6)


def theirs_output(tmp_path, cfg, weights, x):
    layers, _ = run_oracle(tmp_path, cfg, weights, x)
    return layers[max(layers)]


@needs_darknet
@pytest.mark.parametrize("softmax", [0, 1])
def test_detection_training_deltas_match_debians_darknet(tmp_path, capsys, softmax):
    cfg = tmp_path / "det.cfg"
    cfg.write_text(DETECTION_TRAIN_CFG.format(outputs=2 * 2 * (5 * 2 + 3), softmax=softmax))
    weights = oracle_weights(tmp_path, cfg, 43)
    x = np.random.default_rng(8).random(16 * 16 * 3).astype(f32)
    truth = detection_truth()
    theirs = run_train_oracle(tmp_path, cfg, weights, x, truth)
    capsys.readouterr()
    net, deltas = train_forward_ours(cfg, weights, x, truth)
    assert_same_line("Detection Avg IOU", capsys.readouterr().out, theirs["lines"])
    last = len(net.layers) - 1
    np.testing.assert_allclose(deltas[last], theirs["delta"][last], rtol=1e-4, atol=1e-5)
    assert net.layers[-1].cost == pytest.approx(theirs["cost"], rel=1e-4)
    # backward: the detection delta into the connected layer, then into the convolution
    for i in range(last):
        np.testing.assert_allclose(
            as_np(net.layers[i].delta), theirs["back"][i], rtol=1e-4, atol=1e-5, err_msg=f"layer {i}"
        )


CROP_TRAIN_CFG = """[net]
batch=1
subdivisions=1
height=12
width=10
channels=3

[crop]
crop_height=8
crop_width=6
flip=1

[convolutional]
filters=4
size=3
stride=1
pad=1
activation=leaky

[connected]
output=5
activation=linear

[softmax]
"""


@needs_darknet
def test_crop_training_draws_match_debians_darknet(tmp_path, capsys):
    """In training the crop's flip and offsets come from rand() after the weight initialisation's draws."""
    cfg = tmp_path / "crop.cfg"
    cfg.write_text(CROP_TRAIN_CFG)
    weights = oracle_weights(tmp_path, cfg, 45)
    x = np.random.default_rng(9).random(12 * 10 * 3).astype(f32)
    truth = np.array([0, 0, 1, 0, 0], f32)
    theirs = run_train_oracle(tmp_path, cfg, weights, x, truth)
    net = parse_network_cfg(str(cfg))
    net.set_batch(1)
    rng = Random(0)  # the harness's srand(0), then the draws of Darknet's random init
    for layer in net.layers:
        layer.skip_init_weights(rng)
    load_weights(net, str(weights))
    net.prepare_training(rng)
    net.truth = floats(truth)
    net.forward(floats(x), train=True)
    capsys.readouterr()
    crop = as_np(net.layers[0].output)
    assert np.array_equal(crop, theirs["out"][0])
    centre = x.reshape(3, 12, 10)[:, 2:10, 2:8].ravel() * f32(2) - f32(1)
    assert not np.array_equal(crop, centre)  # this seed draws another window (or a flip)
    np.testing.assert_allclose(as_np(net.layers[-1].output), theirs["out"][3], rtol=2e-5, atol=1e-6)
    # Darknet's crop layer has no delta: nothing reaches the layers before it
    assert net.layers[0].delta is None and not theirs["back"][0].any()


@needs_darknet
@pytest.mark.skipif(not TREE_9K.exists(), reason="Debian's 9k.tree is not installed")
def test_softmax_9k_tree_matches_debians_darknet(tmp_path, capsys):
    """darknet9000's hierarchical softmax (WordTree of 9418 classes in 3 layers of groups)."""
    cfg = tmp_path / "tree.cfg"
    cfg.write_text(f"[net]\nheight=1\nwidth=1\nchannels=9418\n\n[softmax]\ntree={TREE_9K}\n")
    weights = tmp_path / "tree.weights"
    weights.write_bytes(np.array([0, 2, 0, 0, 0], np.int32).tobytes())
    x = (3 * np.random.default_rng(10).standard_normal(9418)).astype(f32)
    theirs, _ = run_oracle(tmp_path, cfg, weights, x)
    net = predict_ours(cfg, weights, x)
    capsys.readouterr()
    compare_layers(net, theirs)


@pytest.mark.slow
@needs_darknet
def test_yolo9000_matches_debians_darknet_but_for_its_nan_tree_softmax(tmp_path, capsys):
    """yolo9000 at 64x64 (tree=9k.tree, map=coco9k.map, 9418 classes): every layer before the region
    and the region's boxes and objectness are Darknet's floats; Darknet's CPU tree softmax divides by
    the region's temperature, which is 0 (NaN), where ours gives each WordTree group a softmax.
    (Some 10 s and 1 GB: marked slow.)"""
    cfg = small_cfg(tmp_path, "yolo9000", 64)
    weights = oracle_weights(tmp_path, cfg, 21)
    x = np.random.default_rng(6).random(64 * 64 * 3).astype(f32)
    theirs, _ = run_oracle(tmp_path, cfg, weights, x)
    net = predict_ours(cfg, weights, x)
    capsys.readouterr()
    for i, layer in enumerate(net.layers[:-1]):
        assert np.array_equal(as_np(layer.output)[: layer.outputs], theirs[i]), f"layer {i} ({layer.kind})"
    r = net.layers[-1]
    hw, per = r.w * r.h, r.coords + 1 + r.classes
    ours = as_np(r.output).reshape(r.n, per, hw)
    other = theirs[len(net.layers) - 1].reshape(r.n, per, hw)
    # Darknet's tree softmax runs from the wrong base with stride n*w*h: it overwrites (with NaN)
    # some box entries too; those it leaves are ours
    kept = np.isfinite(other[:, :5])
    assert kept.sum() > kept.size // 2
    np.testing.assert_allclose(ours[:, :5][kept], other[:, :5][kept], rtol=2e-6, atol=1e-7)
    assert np.isnan(other[:, 5:]).any() and np.isfinite(ours).all()
    for size, offset in zip(r.tree.group_size, r.tree.group_offset):
        np.testing.assert_allclose(ours[:, 5 + offset : 5 + offset + size].sum(axis=1), 1, rtol=1e-4)
    dets = get_network_boxes(net, 64, 64, 0.1)
    assert len(dets) == r.w * r.h * r.n and all(np.count_nonzero(d.prob) <= 1 for d in dets)


@needs_darknet
def test_vgg16_with_its_crop_matches_debians_darknet(tmp_path, capsys):
    """vgg-16 (crop, 13 convolutions, connected, dropout, softmax) with a 32x32 crop of a 40x40 input."""
    text = (DARKNET_CFGS / "vgg-16.cfg").read_text()
    text = re.sub(r"(?m)^(height|width)=\d+", r"\1=40", text)
    text = re.sub(r"(?m)^(crop_height|crop_width)=\d+", r"\1=32", text)
    text = re.sub(r"(?m)^(batch|subdivisions)=\d+", r"\1=1", text)
    text = re.sub(r"(?m)^output=4096", "output=256", text)  # smaller connected layers
    cfg = tmp_path / "vgg-16_40.cfg"
    cfg.write_text(text)
    weights = oracle_weights(tmp_path, cfg, 51)
    x = np.random.default_rng(11).random(40 * 40 * 3).astype(f32)
    net, theirs, _ = predict_both(tmp_path, capsys, cfg, weights, x)
    assert net.layers[0].kind == "crop"
    compare_layers(net, theirs, exact_kinds=("crop", "convolutional", "maxpool"))
