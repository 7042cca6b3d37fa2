"""Issue 15, the rest of Darknet's layers: every activation, [deconvolutional], [l2norm],
[normalization], [logistic], [activation], every [cost] type, [maxpool]'s forms and [iseg]
(docs/darknet-contract.md §4). Kernels against numpy references of Darknet's formulas,
backward passes against finite differences, bad cfgs as clear errors, and Debian's Darknet as
the oracle on hand-made cfgs (skipped where libdarknet.so or gcc is missing)."""

import subprocess
from array import array
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import (
    TRAIN_BAND_ARGS,
    assert_component_trains_as_native,
    train_then_predict_band,
    write_band_dataset,
)
from darknet_oracle import DARKNET_CFGS, build_harness, needs_darknet
from dlserver import kernels
from dlserver.errors import DLServerError
from dlserver.kernels import Activation
from dlserver.layers.base import ACTIVATIONS, WeightedLayer
from dlserver.network import parse_network_cfg
from dlserver.rng import Random
from dlserver.weights import load_weights, save_weights

f32 = np.float32
f64 = np.float64


# activations.c get_activation's names, in its order
DARKNET_ACTIVATIONS = [
    "logistic", "loggy", "relu", "elu", "selu", "relie", "plse",
    "hardtan", "lhtan", "linear", "ramp", "leaky", "tanh", "stair",
]  # fmt: skip


def floats(values) -> array:
    return array("f", np.asarray(values, dtype=f32).ravel().tolist())


def as_np(buf, n=None) -> np.ndarray:
    out = np.frombuffer(buf, dtype=f32).copy()
    return out if n is None else out[:n]


# ---------------------------------------------------------------- activations: Darknet's formulas
# x is float32; `d(...)` marks where Darknet's expression is double (a double constant or exp);
# every function returns float32 as the C inline function does.


def _b(v):  # a C comparison: 0 or 1
    return v.astype(f32)


def ref_act(name: str, x: np.ndarray) -> np.ndarray:
    x = x.astype(f32)
    xd = x.astype(f64)
    with np.errstate(all="ignore"):
        if name == "linear":
            return x
        if name == "relu":
            return (x * _b(x > 0)).astype(f32)
        if name == "leaky":
            return np.where(x > 0, x, (0.1 * xd).astype(f32))
        if name == "logistic":
            return (1.0 / (1.0 + np.exp(-xd))).astype(f32)
        if name == "relie":
            return np.where(x > 0, x, (0.01 * xd).astype(f32))
        if name == "ramp":
            return ((x * _b(x > 0)).astype(f64) + 0.1 * xd).astype(f32)
        if name == "tanh":
            x2 = (f32(2) * x).astype(f64)
            return ((np.exp(x2) - 1) / (np.exp(x2) + 1)).astype(f32)
        if name == "plse":
            lo = (0.01 * (x + f32(4)).astype(f64)).astype(f32)
            hi = (0.01 * (x - f32(4)).astype(f64) + 1).astype(f32)
            mid = (0.125 * xd + 0.5).astype(f32)
            return np.where(x < -4, lo, np.where(x > 4, hi, mid))
        if name == "elu":
            return ((x * _b(x >= 0)).astype(f64) + (x < 0) * (np.exp(xd) - 1)).astype(f32)
        if name == "loggy":
            return (2.0 / (1.0 + np.exp(-xd)) - 1).astype(f32)
        if name == "stair":
            fl = np.floor(xd)
            n = np.where((fl >= -(2.0**31)) & (fl < 2.0**31), np.nan_to_num(fl), -(2.0**31)).astype(np.int64)
            even = np.fmod(n, 2) == 0
            odd_val = ((x - n.astype(f32)).astype(f64) + np.floor(xd / 2.0)).astype(f32)
            return np.where(even, np.floor(xd / 2.0).astype(f32), odd_val)
        if name == "hardtan":
            return np.where(x < -1, f32(-1), np.where(x > 1, f32(1), x))
        if name == "lhtan":
            lo = (0.001 * xd).astype(f32)
            hi = (0.001 * (x - f32(1)).astype(f64) + 1).astype(f32)
            return np.where(x < 0, lo, np.where(x > 1, hi, x))
        if name == "selu":
            pos = (x >= 0) * 1.0507 * xd
            neg = (x < 0) * 1.0507 * 1.6732 * (np.exp(xd) - 1)
            return (pos + neg).astype(f32)
    raise AssertionError(name)


def ref_grad(name: str, y: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        return _ref_grad(name, y)


def _ref_grad(name: str, y: np.ndarray) -> np.ndarray:
    y = y.astype(f32)
    yd = y.astype(f64)
    if name == "linear":
        return np.ones_like(y)
    if name == "relu":
        return _b(y > 0)
    if name == "leaky":
        return np.where(y > 0, f32(1), f32(0.1))
    if name == "logistic":
        return ((f32(1) - y) * y).astype(f32)
    if name == "relie":
        return np.where(y > 0, f32(1), f32(0.01))
    if name == "ramp":
        return ((y > 0) + 0.1).astype(f32)
    if name == "tanh":
        return (f32(1) - y * y).astype(f32)
    if name == "plse":
        return np.where((y < 0) | (y > 1), f32(0.01), f32(0.125))
    if name == "elu":
        return (_b(y >= 0) + _b(y < 0) * (y + f32(1))).astype(f32)
    if name == "loggy":
        t = ((yd + 1.0) / 2.0).astype(f32)
        return (f32(2) * (f32(1) - t) * t).astype(f32)
    if name == "stair":
        return np.where(np.floor(yd) == yd, f32(0), f32(1))
    if name == "hardtan":
        return np.where((y > -1) & (y < 1), f32(1), f32(0))
    if name == "lhtan":
        return np.where((y > 0) & (y < 1), f32(1), f32(0.001))
    if name == "selu":
        return ((y >= 0) * 1.0507 + (y < 0) * (yd + 1.0507 * 1.6732)).astype(f32)
    raise AssertionError(name)


EXP_ACTS = {"logistic", "tanh", "elu", "loggy", "selu"}  # libm exp vs numpy's: 1 ulp allowed
BREAKPOINTS = [-4.0, -1.0, 0.0, -0.0, 1.0, 4.0, 0.5, -0.5, 2.0, 3.0, -3.0, 2.5, -2.5, 1e-30, -1e-30]


def _activation_inputs() -> np.ndarray:
    rng = np.random.default_rng(11)
    return np.concatenate(
        [
            np.array(BREAKPOINTS, f32),
            np.nextafter(np.array(BREAKPOINTS, f32), f32(np.inf)),
            np.nextafter(np.array(BREAKPOINTS, f32), f32(-np.inf)),
            (rng.standard_normal(400) * 3).astype(f32),
            (rng.standard_normal(100) * 40).astype(f32),
            np.array([100.0, -100.0, 400.0, -400.0, 1e20, -1e20, 3e9, -3e9], f32),
        ]
    ).astype(f32)


def test_every_darknet_activation_is_known():
    darknet = DARKNET_ACTIVATIONS
    assert sorted(ACTIVATIONS) == sorted(darknet)
    assert len(set(ACTIVATIONS.values())) == 14 == len(Activation)
    # the codes the existing kernels know stay what they were
    assert (Activation.LINEAR, Activation.RELU, Activation.LEAKY, Activation.LOGISTIC) == (0, 1, 2, 3)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_and_gradient_match_darknets_formulas(name):
    x = _activation_inputs()
    buf = floats(x)
    kernels.activate(buf, len(x), ACTIVATIONS[name])
    ours, want = as_np(buf), ref_act(name, x)
    if name in EXP_ACTS:
        np.testing.assert_array_max_ulp(ours, want, maxulp=1)
        assert np.array_equal(np.isnan(ours), np.isnan(want))
    else:
        assert ours.tobytes() == want.tobytes(), name
    # the gradient on the activated outputs and on the breakpoints themselves
    for y in (want, x):
        rng = np.random.default_rng(12)
        d0 = rng.standard_normal(len(y)).astype(f32)
        delta = floats(d0)
        kernels.gradient(floats(y), len(y), ACTIVATIONS[name], delta)
        expect = (d0 * ref_grad(name, y)).astype(f32)
        assert as_np(delta).tobytes() == expect.tobytes(), name


def test_activation_breakpoint_gradients_are_darknets():
    """Darknet's own choices at the kinks (its *_gradient functions, on the output)."""

    def g(name, y):
        d = floats([1.0])
        kernels.gradient(floats([y]), 1, ACTIVATIONS[name], d)
        return d[0]

    assert g("relu", 0.0) == 0.0 and g("leaky", 0.0) == f32(0.1) and g("relie", 0.0) == f32(0.01)
    assert g("elu", 0.0) == 1.0 and g("ramp", 0.0) == f32(0.1) and g("ramp", 1e-9) == f32(1.1)
    assert g("hardtan", 1.0) == 0.0 and g("hardtan", -1.0) == 0.0 and g("hardtan", 0.999) == 1.0
    assert g("lhtan", 0.0) == f32(0.001) and g("lhtan", 1.0) == f32(0.001) and g("lhtan", 0.5) == 1.0
    assert g("plse", 0.0) == 0.125 and g("plse", 1.0) == 0.125 and g("plse", 1.01) == f32(0.01)
    assert g("stair", 2.0) == 0.0 and g("stair", 2.5) == 1.0
    assert g("selu", 0.0) == f32(1.0507)


def test_activation_values_darknet_would_give():
    def a(name, x):
        b = floats([x])
        kernels.activate(b, 1, ACTIVATIONS[name])
        return b[0]

    assert a("stair", 2.5) == 1.0 and a("stair", 3.5) == 1.5 and a("stair", -1.5) == -1.0
    assert a("hardtan", 7.0) == 1.0 and a("plse", -8.0) == f32(-0.04) and a("ramp", -1.0) == f32(-0.1)
    assert np.isnan(a("tanh", 400.0))  # (exp(800) - 1)/(exp(800) + 1) = inf/inf, as Darknet
    assert a("tanh", 300.0) == 1.0 and a("tanh", -400.0) == -1.0


# ---------------------------------------------------------------- Debian's Darknet as the oracle


@pytest.fixture(scope="module")
def oracle_exe(tmp_path_factory):
    """tests/oracle/darknet_train.c built against libdarknet.so."""
    return build_harness("darknet_train", tmp_path_factory.mktemp("oracle"))


def run_oracle(exe: Path, tmp_path: Path, cfg: Path, x: np.ndarray, truth, train: bool):
    """Darknet's per-layer results: {tag: {layer index: values}}, its COST, and its weights file."""
    weights = tmp_path / (cfg.stem + ".weights")
    (tmp_path / "x.f32").write_bytes(x.astype(f32).tobytes())
    truth_path = "-"
    if truth is not None:
        truth_path = str(tmp_path / "t.f32")
        Path(truth_path).write_bytes(np.asarray(truth, f32).tobytes())
    # a subprocess: libdarknet sets flush-to-zero for the whole process that loads it
    run = subprocess.run(
        [str(exe), str(cfg), str(weights), str(tmp_path / "x.f32"), truth_path, "1" if train else "0"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    theirs: dict = {}
    cost = None
    for line in run.stdout.splitlines():
        tag, *rest = line.split()
        if tag == "COST":
            cost = f32(rest[0])
            continue
        index, count, *values = rest
        assert len(values) == int(count)
        theirs.setdefault(tag, {})[int(index)] = np.array(values, dtype=f32)
    return theirs, cost, weights, run.stderr


def guest_step(cfg: Path, weights: Path, x: np.ndarray, truth, train: bool):
    """The guest on the same cfg and weights: the same tags as run_oracle."""
    from dlserver.schedule import learning_rate

    net = parse_network_cfg(str(cfg))
    load_weights(net, str(weights))
    ours: dict = {}
    cost = None
    if not train:
        net.predict(floats(x))
    else:
        net.prepare_training(Random(0))
        net.seen += net.batch
        net.truth = floats(truth)  # type: ignore[assignment]
        current: Any = floats(x)
        for layer in net.layers:
            layer.clear_delta()
            layer.forward(net, current, True)
            current = layer.output
        for i in range(len(net.layers) - 1, -1, -1):
            layer = net.layers[i]
            prev = net.layers[i - 1] if i else None
            layer.backward(net, prev.output if prev else floats(x), prev.delta if prev else None)
        costs = [layer.cost for layer in net.layers if layer.has_cost]
        cost = f32(sum(costs) / len(costs)) if costs else None
    for i, layer in enumerate(net.layers):
        n = layer.batch * layer.outputs
        ours.setdefault("O", {})[i] = as_np(layer.output, n)
        if train:
            ours.setdefault("D", {})[i] = as_np(layer.delta, n)
            if isinstance(layer, WeightedLayer):
                ours.setdefault("WU", {})[i] = as_np(layer.weight_updates)
                ours.setdefault("BU", {})[i] = as_np(layer.bias_updates)
    if train:
        rate = learning_rate(net)
        for layer in net.layers:
            layer.update(net, rate)
        for i, layer in enumerate(net.layers):
            if isinstance(layer, WeightedLayer):
                ours.setdefault("W", {})[i] = as_np(layer.weights)
                ours.setdefault("B", {})[i] = as_np(layer.biases)
    return ours, cost, net


def _acts_cfg() -> str:
    """A convolution with each of Darknet's 14 activations (the fused stride-1 kernels), a strided
    one (im2col + gemm), then [activation] and [logistic] (no connected layer: its reassociated
    dot products would blur the deltas of everything below it)."""
    names = DARKNET_ACTIVATIONS
    text = "[net]\nbatch=2\nheight=5\nwidth=4\nchannels=3\nlearning_rate=0.1\nmomentum=0.9\ndecay=0.001\n\n"
    for name in names:
        text += f"[convolutional]\nfilters=3\nsize=3\nstride=1\npad=1\nactivation={name}\n\n"
    text += "[convolutional]\nfilters=4\nsize=3\nstride=2\npad=1\nactivation=selu\n\n"
    text += "[activation]\nactivation=loggy\n\n[logistic]\n"
    return text


MISC_CFG = """[net]
batch=2
height=6
width=5
channels=3
learning_rate=0.05

[convolutional]
filters=4
size=3
stride=1
pad=1
activation=ramp

[deconvolutional]
filters=3
size=4
stride=2
padding=1
activation=tanh

[lrn]
size=3
alpha=0.1
beta=0.75
kappa=2

[l2norm]

[maxpool]
size=3
stride=2

[activation]
activation=selu

[connected]
output=7
activation=elu

[logistic]

[cost]
type=smooth
"""

DECONV_CFG = """[net]
batch={batch}
height=5
width=6
channels=2
learning_rate=0.1
momentum=0.9
decay=0.0005

[deconv]
filters=3
size=3
stride=1
pad=1
{bn}
activation=leaky

[deconvolutional]
filters=2
size=2
stride=3
activation=linear

[deconvolutional]
filters=4
size=5
stride=2
padding=3
{bn}
activation=relu

[deconvolutional]
filters=1
size=1
stride=1
activation=logistic
"""

# every maxpool form: stride 1 with sizes 5/9/13 (yolov3-spp), default padding size-1 on odd
# and even inputs, explicit padding 0 and odd, a window larger than the input by less than a
# stride (C's division gives one output), stride larger than size; first a convolution (Darknet's
# maxpool backward writes into the network's delta, which the first layer does not have)
POOL_CFG = """[net]
batch=2
height=13
width=11
channels=2

[convolutional]
filters=2
size=1
stride=1
activation=linear

[maxpool]
size=5
stride=1

[maxpool]
size=9
stride=1

[maxpool]
size=13
stride=1

[maxpool]
size=3
stride=2

[maxpool]
size=2
stride=2

[maxpool]
size=3
stride=1
padding=0

[maxpool]
stride=2

{extra}[maxpool]
size=2
stride=3
padding=1

[softmax]
"""
# windows wholly outside the image (index -1: Darknet's backward would write delta[-1]): inference only
POOL_EXTRA = "[maxpool]\nsize=1\nstride=1\npadding=3\n\n[maxpool]\nsize=3\nstride=2\npadding=0\n\n"

COST_CFG = """[net]
batch=2
height=3
width=4
channels=2
learning_rate=0.1

[convolutional]
filters=3
size=3
stride=1
pad=1
activation=leaky

[cost]
type={type}
scale=0.5
"""


def _oracle_case(oracle_exe, tmp_path, text, train, seed=1, truth_fn=None, exact=frozenset()):
    cfg = tmp_path / "case.cfg"
    cfg.write_text(text)
    net = parse_network_cfg(str(cfg))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(net.batch * net.inputs).astype(f32)
    truth = None
    if train:
        n = net.batch * net.outputs
        truth = truth_fn(rng, n) if truth_fn else rng.random(n).astype(f32)
    theirs, their_cost, weights, err = run_oracle(oracle_exe, tmp_path, cfg, x, truth, train)
    ours, our_cost, _ = guest_step(cfg, weights, x, truth, train)
    return theirs, ours, their_cost, our_cost, err


def _table(stderr: str) -> list[str]:
    """The layer table of a parse's stderr (Darknet's ends where it saves the weights)."""
    lines = stderr.splitlines()
    start = lines.index("layer     filters    size              input                output")
    table = []
    for line in lines[start:]:
        if line.startswith(("Saving weights", "Loading weights")):
            break
        table.append(line)
    return table


def _assert_same_table(text: str, tmp_path, capsys, darknet_stderr: str) -> None:
    """Our layer table (and default-value messages) equals Darknet's, line for line."""
    capsys.readouterr()
    (tmp_path / "table.cfg").write_text(text)
    parse_network_cfg(str(tmp_path / "table.cfg"))
    assert _table(capsys.readouterr().err) == _table(darknet_stderr)


def _equal(got, want):
    """The same values (NaN equal NaN; -0 equals 0: -Ofast does not keep the sign of zeros)."""
    return got.shape == want.shape and bool(np.all((got == want) | (np.isnan(got) & np.isnan(want))))


@pytest.mark.parametrize("train", [False, True])
def test_activations_match_debians_darknet(oracle_exe, tmp_path, capsys, train):
    theirs, ours, tc, oc, err = _oracle_case(oracle_exe, tmp_path, _acts_cfg(), train)
    _assert_same_table(_acts_cfg(), tmp_path, capsys, err)
    for tag, layers in theirs.items():
        for i, want in layers.items():
            got = ours[tag][i]
            if tag in ("O", "D"):  # every activation and its gradient: Darknet's floats exactly
                assert _equal(got, want), f"{tag} {i}"
            else:  # -Ofast: the gradient sums (gemm NT, backward_bias) are reassociated
                np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=f"{tag} {i}")
    if train:
        assert oc == pytest.approx(tc, rel=1e-5)


@pytest.mark.parametrize("train", [False, True])
def test_new_layers_match_debians_darknet(oracle_exe, tmp_path, capsys, train):
    """conv (ramp), deconv, lrn, l2norm, maxpool, activation, connected, logistic, cost smooth."""
    theirs, ours, tc, oc, err = _oracle_case(oracle_exe, tmp_path, MISC_CFG, train)
    _assert_same_table(MISC_CFG, tmp_path, capsys, err)
    for tag, layers in theirs.items():
        for i, want in layers.items():
            got = ours[tag][i]
            if tag == "O" and i <= 2:  # conv, deconv (gemm TN + col2im), lrn: exact
                assert _equal(got, want), f"{tag} {i}"
            else:  # l2norm's x/sum is a reciprocal product under -Ofast; sums reassociated
                np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=f"{tag} {i}")
    if train:
        assert oc == pytest.approx(tc, rel=1e-5)


@pytest.mark.parametrize("bn", [0, 1])
def test_deconvolutional_matches_debians_darknet(oracle_exe, tmp_path, capsys, bn):
    """Inference with and without batch norm (the harness perturbs scales and rolling statistics)
    and, without, one training step (gradients and the SGD update): the same floats."""
    text = DECONV_CFG.format(batch=1 if bn else 2, bn="batch_normalize=1" if bn else "")
    for train in (False,) if bn else (False, True):
        theirs, ours, _, _, err = _oracle_case(oracle_exe, tmp_path, text, train)
        for tag, layers in theirs.items():
            for i, want in layers.items():
                assert _equal(ours[tag][i], want), f"train={train} {tag} {i}"
    _assert_same_table(text, tmp_path, capsys, err)


@pytest.mark.parametrize("train", [False, True])
def test_maxpool_forms_match_debians_darknet(oracle_exe, tmp_path, capsys, train):
    text = POOL_CFG.format(extra="" if train else POOL_EXTRA)
    theirs, ours, _, _, err = _oracle_case(oracle_exe, tmp_path, text, train)
    _assert_same_table(text, tmp_path, capsys, err)
    last = max(theirs["O"])
    for tag, layers in theirs.items():
        for i, want in layers.items():
            if tag == "O" and i == last:  # softmax: libmvec expf
                np.testing.assert_allclose(ours[tag][i], want, rtol=1e-5)
            elif tag != "WU":
                assert _equal(ours[tag][i], want), f"{tag} {i}"


def _cost_truth(rng, n):
    t = (rng.standard_normal(n) * 2).astype(f32)
    t[::5] = -1234  # masked: SECRET_NUM
    return t


@pytest.mark.parametrize("kind", ["sse", "masked", "smooth", "L1", "seg", "wgan"])
def test_cost_types_match_debians_darknet(oracle_exe, tmp_path, capsys, kind):
    theirs, ours, tc, oc, err = _oracle_case(
        oracle_exe, tmp_path, COST_CFG.format(type=kind), True, truth_fn=_cost_truth
    )
    _assert_same_table(COST_CFG.format(type=kind), tmp_path, capsys, err)
    for i in (0, 1):  # masked changes the conv output in place, as Darknet
        assert _equal(ours["O"][i], theirs["O"][i]) and _equal(ours["D"][i], theirs["D"][i]), i
    np.testing.assert_allclose(ours["WU"][0], theirs["WU"][0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ours["W"][0], theirs["W"][0], rtol=1e-4, atol=1e-6)
    assert oc == pytest.approx(tc, rel=1e-5)  # sum_array: reassociated by -Ofast


# ---------------------------------------------------------------- backward: finite differences


def _one_layer_net(tmp_path, section: str, h=4, w=5, c=3, batch=2, seed=0):
    cfg = tmp_path / "one.cfg"
    cfg.write_text(f"[net]\nbatch={batch}\nheight={h}\nwidth={w}\nchannels={c}\n\n{section}\n")
    net = parse_network_cfg(str(cfg), init_rng=Random(seed))
    net.prepare_training(Random(0))
    return net, net.layers[0]


def _fd_input_gradient(net, layer, x, g, eps=1e-2, picks=None):
    """(analytic, numeric): prev_delta from backward with delta = g, and the central differences
    of f(x) = g . forward(x) (in float64 over the float32 outputs)."""

    def f(values):
        layer.forward(net, floats(values), True)
        return float(np.dot(g.astype(f64), as_np(layer.output, len(g)).astype(f64)))

    layer.clear_delta()
    layer.forward(net, floats(x), True)
    layer.delta[:] = floats(g)
    prev = floats(np.zeros(len(x)))
    layer.backward(net, floats(x), prev)
    analytic = as_np(prev)
    picks = range(len(x)) if picks is None else picks
    numeric = np.zeros(len(x))
    for i in picks:
        up, down = x.copy(), x.copy()
        up[i] += f32(eps)
        down[i] -= f32(eps)
        numeric[i] = (f(up) - f(down)) / (f64(up[i]) - f64(down[i]))
    return analytic, numeric


SMOOTH_ACTS = sorted(set(ACTIVATIONS) - {"stair"})  # stair: Darknet's gradient is 1 where its slope is 0


@pytest.mark.parametrize("name", SMOOTH_ACTS)
def test_activation_layer_backward_is_the_derivative(tmp_path, capsys, name):
    net, layer = _one_layer_net(tmp_path, f"[activation]\nactivation={name}")
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(net.batch * net.inputs) * 2.5).astype(f32)
    # keep away from the kinks (0, +-1, +-4), where a central difference straddles two slopes
    x = np.where(np.min(np.abs(x[:, None] - np.array([0, 1, -1, 4, -4])), axis=1) < 0.05, f32(0.5), x)
    g = rng.standard_normal(len(x)).astype(f32)
    analytic, numeric = _fd_input_gradient(net, layer, x, g, eps=1e-3)
    np.testing.assert_allclose(analytic, numeric, rtol=2e-2, atol=2e-3)
    capsys.readouterr()


def test_activation_layer_backward_overwrites_as_darknet(tmp_path, capsys):
    net, layer = _one_layer_net(tmp_path, "[activation]\nactivation=leaky")
    x = np.linspace(-2, 2, net.batch * net.inputs).astype(f32)
    layer.forward(net, floats(x), True)
    layer.delta[:] = floats(np.ones(len(x)))
    prev = floats(np.full(len(x), 5.0))  # Darknet copies delta into it: the 5s are gone
    layer.backward(net, floats(x), prev)
    assert as_np(prev).tobytes() == np.where(x > 0, f32(1), f32(0.1)).astype(f32).tobytes()
    capsys.readouterr()


@pytest.mark.parametrize(
    "section",
    [
        "[deconvolutional]\nfilters=2\nsize=3\nstride=2\npad=1\nactivation=tanh",
        "[deconv]\nfilters=3\nsize=2\nstride=1\nactivation=logistic",
        "[deconv]\nfilters=2\nsize=4\nstride=3\npadding=2\nactivation=elu",
    ],
)
def test_deconvolutional_backward_is_the_gradient(tmp_path, capsys, section):
    net, layer = _one_layer_net(tmp_path, section)
    rng = np.random.default_rng(4)
    layer.weights[:] = floats(rng.standard_normal(len(layer.weights)) * 0.5)
    layer.biases[:] = floats(rng.standard_normal(len(layer.biases)) * 0.1)
    x = rng.standard_normal(net.batch * net.inputs).astype(f32)
    g = rng.standard_normal(net.batch * layer.outputs).astype(f32)
    analytic, numeric = _fd_input_gradient(net, layer, x, g, eps=1e-2)
    np.testing.assert_allclose(analytic, numeric, rtol=2e-2, atol=2e-3)
    # weights and biases: d(g . out)/dW is what backward accumulated in weight_updates
    W = as_np(layer.weights)
    want_w = as_np(layer.weight_updates)
    want_b = as_np(layer.bias_updates)

    def f():
        layer.forward(net, floats(x), True)
        return float(np.dot(g.astype(f64), as_np(layer.output, len(g)).astype(f64)))

    for i in rng.choice(len(W), 12, replace=False):
        for sign, store in ((1, "up"), (-1, "down")):
            layer.weights[i] = float(W[i] + sign * f32(1e-2))
            if store == "up":
                up = f()
            else:
                down = f()
        layer.weights[i] = float(W[i])
        assert want_w[i] == pytest.approx((up - down) / 2e-2, rel=2e-2, abs=2e-3), i
    for i in range(len(want_b)):
        b = layer.biases[i]
        layer.biases[i] = b + 1e-2
        up = f()
        layer.biases[i] = b - 1e-2
        down = f()
        layer.biases[i] = b
        assert want_b[i] == pytest.approx((up - down) / 2e-2, rel=2e-2, abs=2e-3), i
    capsys.readouterr()


def _cost_of(net, layer, x, t):
    net.truth = floats(t)
    layer.forward(net, floats(x), True)
    return layer.cost


def _fd_cost(net, layer, x, t, eps=1e-3):
    out = np.zeros(len(x))
    for i in range(len(x)):
        up, down = x.copy(), x.copy()
        up[i] += f32(eps)
        down[i] -= f32(eps)
        out[i] = (_cost_of(net, layer, up, t) - _cost_of(net, layer, down, t)) / (f64(up[i]) - f64(down[i]))
    return out


def test_logistic_layer_delta_is_minus_the_cost_gradient(tmp_path, capsys):
    net, layer = _one_layer_net(tmp_path, "[logistic]", h=1, w=1, c=6)
    rng = np.random.default_rng(5)
    x = rng.standard_normal(net.batch * net.inputs).astype(f32)
    t = rng.random(len(x)).astype(f32)
    numeric = _fd_cost(net, layer, x, t)
    _cost_of(net, layer, x, t)
    # d/dx of -t log p - (1-t) log(1-p), p = logistic(x), is p - t; Darknet's delta is t - p
    np.testing.assert_allclose(as_np(layer.delta), -numeric, rtol=1e-2, atol=1e-3)
    p = 1 / (1 + np.exp(-x.astype(f64)))
    want = np.sum(-t * np.log(p) - (1 - t) * np.log(1 - p))
    assert layer.cost == pytest.approx(want, rel=1e-5)
    prev = floats(np.ones(len(x)))
    layer.backward(net, floats(x), prev)
    assert as_np(prev).tobytes() == (f32(1) + as_np(layer.delta)).astype(f32).tobytes()
    capsys.readouterr()


@pytest.mark.parametrize(
    "kind, factor", [("sse", 0.5), ("seg", 0.5), ("wgan", 0.5), ("L1", 1.0), ("smooth", 0.5)]
)
def test_cost_delta_is_minus_the_cost_gradient(tmp_path, capsys, kind, factor):
    """delta = -factor * d cost / dx (Darknet's delta for sse is t - x, the cost sum (t - x)^2);
    for smooth inside |t - x| < 1, where it is sse."""
    net, layer = _one_layer_net(tmp_path, f"[cost]\ntype={kind}\nscale=0.25", h=2, w=2, c=3)
    rng = np.random.default_rng(6)
    x = rng.standard_normal(net.batch * net.inputs).astype(f32)
    t = (x + rng.uniform(0.1, 0.9, len(x)) * rng.choice([-1, 1], len(x))).astype(f32)
    numeric = _fd_cost(net, layer, x, t)
    _cost_of(net, layer, x, t)
    np.testing.assert_allclose(as_np(layer.delta), -factor * numeric, rtol=1e-2, atol=1e-3)
    prev = floats(np.zeros(len(x)))
    layer.backward(net, floats(x), prev)
    assert as_np(prev).tobytes() == (f32(0.25) * as_np(layer.delta)).astype(f32).tobytes()
    capsys.readouterr()


def test_cost_smooth_outside_is_darknets_sign_and_masked_masks(tmp_path, capsys):
    net, layer = _one_layer_net(tmp_path, "[cost]\ntype=smooth", h=1, w=1, c=4, batch=1)
    x = np.array([0.0, 0.0, 5.0, 0.0], f32)
    t = np.array([3.0, -3.0, 1.0, 0.5], f32)
    cost = _cost_of(net, layer, x, t)
    # |d| >= 1: err 2|d| - 1 and delta = (d < 0) ? 1 : -1 (Darknet's, pointing away from t)
    assert as_np(layer.output).tolist() == [5.0, 5.0, 7.0, 0.25] and cost == 17.25
    assert as_np(layer.delta).tolist() == [-1.0, 1.0, 1.0, 0.5]
    net, layer = _one_layer_net(tmp_path, "[cost]\ntype=masked", h=1, w=1, c=3, batch=1)
    xs = floats([1.0, 2.0, 3.0])
    net.truth = floats([0.0, -1234.0, 1.0])
    layer.forward(net, xs, True)
    assert list(xs) == [1.0, -1234.0, 3.0]  # the input itself is masked, as Darknet
    assert as_np(layer.delta).tolist() == [-1.0, 0.0, -2.0] and layer.cost == 5.0
    capsys.readouterr()


def test_l2norm_and_lrn_backward_are_darknets(tmp_path, capsys):
    """Darknet's own backward passes, not the derivative: l2norm adds delta through unchanged,
    lrn sets prev_delta = norms^-beta * delta (its "approximate" backward)."""
    rng = np.random.default_rng(7)
    net, layer = _one_layer_net(tmp_path, "[l2norm]", c=4)
    x = rng.standard_normal(net.batch * net.inputs).astype(f32)
    layer.forward(net, floats(x), True)
    xs = x.reshape(net.batch, 4, -1)
    norm = np.sqrt(np.sum((xs * xs).astype(f32), axis=1, dtype=f32)).astype(f32)
    np.testing.assert_allclose(as_np(layer.output), (xs / norm[:, None, :]).ravel(), rtol=1e-6)
    d = rng.standard_normal(len(x)).astype(f32)
    layer.delta[:] = floats(d)
    prev = floats(np.ones(len(x)))
    layer.backward(net, floats(x), prev)
    assert as_np(prev).tobytes() == (f32(1) + d).astype(f32).tobytes()

    net, layer = _one_layer_net(tmp_path, "[lrn]\nsize=3\nalpha=0.05\nbeta=0.75\nkappa=1.5", c=5)
    x = rng.standard_normal(net.batch * net.inputs).astype(f32)
    layer.forward(net, floats(x), True)
    sq = (x * x).astype(f32).reshape(net.batch, 5, -1)
    a = f32(0.05)
    norms = np.zeros_like(sq)
    for b in range(net.batch):  # Darknet's running window, written out
        row = np.full(sq.shape[2], f32(1.5), f32)
        row = (row + (a * sq[b, 0]).astype(f32)).astype(f32)  # k < size/2 = 1: channel 0 only
        norms[b, 0] = row
        for k in range(1, 5):
            row = row.copy()
            if k - 2 >= 0:
                row = (row + (-a * sq[b, k - 2]).astype(f32)).astype(f32)
            if k + 1 < 5:
                row = (row + (a * sq[b, k + 1]).astype(f32)).astype(f32)
            norms[b, k] = row
    scale = np.power(norms.astype(f64), -0.75).astype(f32).ravel()
    assert as_np(layer.norms).tobytes() == norms.ravel().tobytes()
    # in closed form: every channel's window sum, less channel size/2 (=1), which Darknet's first
    # window leaves out and its running sum later subtracts anyway
    padded = np.pad(sq.astype(f64), ((0, 0), (1, 1), (0, 0)))
    window = padded[:, :-2] + padded[:, 1:-1] + padded[:, 2:]
    closed = 1.5 + 0.05 * (window - sq[:, 1:2].astype(f64))
    np.testing.assert_allclose(norms, closed, rtol=1e-5)
    assert as_np(layer.output).tobytes() == (scale * x).astype(f32).tobytes()
    d = rng.standard_normal(len(x)).astype(f32)
    layer.delta[:] = floats(d)
    prev = floats(np.full(len(x), 9.0))
    layer.backward(net, floats(x), prev)
    assert as_np(prev).tobytes() == (scale * d).astype(f32).tobytes()
    capsys.readouterr()


# ---------------------------------------------------------------- bad cfgs, refusals

IMAGE_NET = "[net]\nheight=8\nwidth=8\nchannels=4\n"
VECTOR_NET = "[net]\ninputs=12\n"  # no height, width, channels: not an image


@pytest.mark.parametrize(
    "text, line, message",
    [
        (VECTOR_NET + "[l2norm]\n", 3, "layer before l2norm layer must output an image"),
        (VECTOR_NET + "[lrn]\n", 3, "layer before normalization layer must output an image"),
        (IMAGE_NET + "[lrn]\nsize=4\n", 5, "normalization size=4: must be odd and at least 1"),
        (IMAGE_NET + "[normalization]\nsize=0\n", 5, "normalization size=0: must be odd"),
        (IMAGE_NET + "[normalization]\nsize=-3\n", 5, "normalization size=-3"),
        (IMAGE_NET + "[lrn]\nsize=11\n", 5, "normalization size=11: the window is wider than the 4 channels"),
        (IMAGE_NET + "[deconv]\nstride=0\n", 5, "deconvolutional needs filters, size, stride >= 1"),
        (IMAGE_NET + "[deconvolutional]\nfilters=0\n", 5, "deconvolutional needs filters"),
        (IMAGE_NET + "[deconv]\nsize=-2\n", 5, "deconvolutional needs filters, size"),
        (IMAGE_NET + "[deconv]\nsize=2\npadding=-1\n", 5, "padding >= 0"),
        (IMAGE_NET + "[deconv]\nsize=1\npadding=5\n", 5, "deconvolutional padding=5 leaves no output"),
        (IMAGE_NET + "[deconv]\nstride=1000000000\nfilters=9\n", 5, "deconvolutional layer too large"),
        (VECTOR_NET + "[deconv]\n", 3, "layer before deconvolutional layer must output an image"),
        (IMAGE_NET + "[deconv]\nactivation=swish\n", 5, "activation 'swish' is unknown"),
        (IMAGE_NET + "[activation]\nactivation=gelu\n", 5, "activation 'gelu' is unknown"),
        (IMAGE_NET + "[cost]\ntype=hinge\n", 5, "cost type 'hinge' is unknown"),
        (IMAGE_NET + "[cost]\ntype=l1\n", 5, "cost type 'l1' is unknown"),  # Darknet's name is L1
        (IMAGE_NET + "[maxpool]\nsize=0\n", 5, "maxpool needs size, stride >= 1"),
        (IMAGE_NET + "[maxpool]\nsize=12\nstride=1\npadding=0\n", 5, "does not fit"),
        (IMAGE_NET + "[iseg]\n", 5, "layer [iseg] is not supported"),
    ],
)
def test_bad_cfgs_are_one_clear_error(tmp_path, capsys, text, line, message):
    cfg = tmp_path / "bad.cfg"
    cfg.write_text(text)
    with pytest.raises(DLServerError) as info:
        parse_network_cfg(str(cfg))
    assert str(info.value).startswith(f"{cfg}:{line}: ") and message in str(info.value), str(info.value)
    assert "\n" not in str(info.value)
    capsys.readouterr()


def test_maxpool_window_beyond_input_by_less_than_a_stride_gives_one_output(tmp_path, capsys):
    """make_maxpool_layer divides in C: (2 + 0 - 3)/2 + 1 = 1 (Python's // would give 0)."""
    cfg = tmp_path / "p.cfg"
    cfg.write_text("[net]\nheight=2\nwidth=2\nchannels=1\n[maxpool]\nsize=3\nstride=2\npadding=0\n")
    net = parse_network_cfg(str(cfg))
    assert (net.layers[0].out_w, net.layers[0].out_h) == (1, 1)
    assert list(net.predict(floats([1, 4, 3, 2]))) == [4.0]
    capsys.readouterr()


def test_deconvolutional_training_with_batch_norm_is_refused(tmp_path, capsys):
    cfg = tmp_path / "d.cfg"
    cfg.write_text(IMAGE_NET + "[deconv]\nfilters=2\nbatch_normalize=1\n")
    net = parse_network_cfg(str(cfg))
    message = rf"^{cfg}:5: training a deconvolutional layer with batch_normalize=1 is not supported yet"
    with pytest.raises(DLServerError, match=message):
        net.prepare_training(Random(0))
    capsys.readouterr()


def _strided_without_crop(tmp_path) -> Path:
    """Debian's strided.cfg (20 convolutions and 2 connected layers with activation=ramp) at
    batch 1, 64x64, without its leading [crop] (another part of issue 15 builds that layer)."""
    import re

    text = (DARKNET_CFGS / "strided.cfg").read_text()
    text = re.sub(r"\[crop\][^\[]*", "", text, count=1)
    text = re.sub(r"(?m)^(height|width)=\d+", r"\1=64", text)
    text = re.sub(r"(?m)^(batch|subdivisions)=\d+", r"\1=1", text)
    path = tmp_path / "strided_nocrop.cfg"
    path.write_text(text)
    return path


@pytest.mark.skipif(not (DARKNET_CFGS / "strided.cfg").exists(), reason="Debian's cfgs are not installed")
def test_strided_gets_past_its_ramp_activation(tmp_path, capsys):
    """What stops strided.cfg now (if anything) is its [crop], not activation=ramp; without the
    crop it builds and predicts."""
    try:
        parse_network_cfg(str(DARKNET_CFGS / "strided.cfg"))
    except DLServerError as error:
        # at its training batch without weights, past the buffer budget (DL_SERVER_MAX_BUFFER_BYTES)
        assert "activation" not in str(error), str(error)
        assert "[crop]" in str(error) or "DL_SERVER_MAX_BUFFER_BYTES" in str(error), str(error)
    net = parse_network_cfg(str(_strided_without_crop(tmp_path)), init_rng=Random(0))
    assert sum(getattr(layer, "activation", None) == Activation.RAMP for layer in net.layers) == 22
    out = net.predict(floats(np.random.default_rng(8).random(net.inputs)))
    assert np.all(np.isfinite(as_np(out, net.outputs)))
    capsys.readouterr()


@pytest.mark.skipif(not (DARKNET_CFGS / "strided.cfg").exists(), reason="Debian's cfgs are not installed")
def test_strided_matches_debians_darknet(oracle_exe, tmp_path, capsys):
    cfg = _strided_without_crop(tmp_path)
    x = np.random.default_rng(9).random(64 * 64 * 3).astype(f32)
    theirs, _, weights, _ = run_oracle(oracle_exe, tmp_path, cfg, x, None, False)
    ours, _, net = guest_step(cfg, weights, x, None, False)
    for i, layer in enumerate(net.layers):
        if layer.kind in ("convolutional", "maxpool"):  # im2col + gemm NN, ramp: the same floats
            assert _equal(ours["O"][i], theirs["O"][i]), i
        else:  # connected (gemm NT) and softmax: -Ofast
            np.testing.assert_allclose(ours["O"][i], theirs["O"][i], rtol=1e-4, atol=1e-5, err_msg=str(i))
    capsys.readouterr()


# ---------------------------------------------------------------- weights files


@needs_darknet
@pytest.mark.parametrize("bn", [0, 1])
def test_deconvolutional_weights_files_are_darknets(oracle_exe, tmp_path, capsys, bn):
    """Our .weights equals Darknet's byte for byte (load theirs, save ours), and our random init
    draws Darknet's weights (f32(.02) * rand_normal(), scaled by out_w*out_h/(w*h))."""
    text = DECONV_CFG.format(batch=1, bn="batch_normalize=1" if bn else "")
    cfg = tmp_path / "d.cfg"
    cfg.write_text(text)
    x = np.zeros(5 * 6 * 2, f32)
    _, _, weights, _ = run_oracle(oracle_exe, tmp_path, cfg, x, None, False)
    net = parse_network_cfg(str(cfg))
    load_weights(net, str(weights))
    save_weights(net, str(tmp_path / "ours.weights"))
    assert (tmp_path / "ours.weights").read_bytes() == weights.read_bytes()
    fresh = parse_network_cfg(str(cfg), init_rng=Random(0))
    for theirs, ours in zip(net.layers, fresh.layers, strict=True):
        assert as_np(ours.weights).tobytes() == as_np(theirs.weights).tobytes()
    capsys.readouterr()


# ---------------------------------------------------------------- training a classifier, native and in wasm

TRAIN_CFG = """[net]
batch=4
subdivisions=1
height=8
width=8
channels=3
learning_rate=0.05
momentum=0.9
decay=0.0005
max_batches=8
policy=constant

[convolutional]
filters=4
size=3
stride=2
pad=1
activation=elu

[deconvolutional]
filters=3
size=4
stride=2
padding=1
activation=tanh

[lrn]
size=3
alpha=0.01

[maxpool]
size=3
stride=2

[convolutional]
filters=4
size=3
stride=1
pad=1
activation=selu

[l2norm]

[activation]
activation=loggy

[connected]
output=3
activation=ramp

[softmax]

[cost]
type=L1
scale=0.1
"""


@pytest.fixture
def patterns(workdir):
    """24 8x8 RGB images of 3 classes (a bright band per class), a dataset file and TRAIN_CFG."""
    write_band_dataset(workdir)
    (workdir / "cfg" / "p.cfg").write_text(TRAIN_CFG)
    return workdir


def test_classifier_with_the_new_layers_trains_and_predicts(patterns, capsys, monkeypatch):
    monkeypatch.setenv("DL_SERVER_CLOCK", "0")
    err = train_then_predict_band(capsys, batches=8)
    assert "deconv" in err and "Local Response Normalization Layer" in err and "Activation Layer" in err


@pytest.mark.component
def test_new_layers_training_in_component_equals_native(component, patterns, capsys, monkeypatch):
    """The same seeded training run in dl-server.wasm writes the same weights and lines."""
    monkeypatch.setenv("DL_SERVER_CLOCK", "0")
    assert_component_trains_as_native(patterns, capsys, TRAIN_BAND_ARGS, "model/p.weights")
