"""Batch normalisation in training (convolutional, connected, [batchnorm]) and convolutional
groups (issue 15, docs/darknet-contract.md §4): kernels against numpy references of Darknet's
loops, finite-difference checks of the backward, one training step against Debian's Darknet
(tests/oracle/darknet_train_step.c), per-layer forward against Darknet on resnext50 and a
hand-made cfg, a BN net that learns, reloads and predicts the same, and bad cfgs."""

import re
import subprocess
from array import array
from pathlib import Path

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
from dlserver.network import parse_network_cfg
from dlserver.rng import Random
from dlserver.weights import load_weights, weights_bytes

f32 = np.float32


def floats(values) -> array:
    return array("f", np.asarray(values, dtype=f32).ravel().tolist())


def as_np(buf) -> np.ndarray:
    return np.frombuffer(buf, dtype=f32).copy()


def parse_layer_lines(stdout: str) -> dict:
    """Per-layer outputs printed by a harness: "index count v0 v1 ..."."""
    theirs = {}
    for line in stdout.splitlines():
        if line.startswith("loss"):
            continue
        index, count, *values = line.split()
        assert len(values) == int(count)
        theirs[int(index)] = np.array(values, dtype=f32)
    return theirs


def set_rolling_variance(net, value=1.0) -> None:
    for layer in net.layers:
        if getattr(layer, "rolling_variance", None) is not None:
            kernels.fill(len(layer.rolling_variance), value, layer.rolling_variance)


# ---------------------------------------------------------------- cfgs

TRAIN_CFG = """[net]
batch={batch}
subdivisions=1
height=6
width=6
channels=2
learning_rate=0.1
momentum=0.9
decay=0.0005
max_batches=100

[convolutional]
batch_normalize=1
filters=4
size=3
stride=1
pad=1
activation=leaky

[batchnorm]

[convolutional]
batch_normalize=1
filters=6
size=3
stride=2
pad=1
groups=2
activation=leaky

[convolutional]
filters=4
size=1
stride=1
groups=2
activation=relu

[connected]
batch_normalize=1
output=5
activation=leaky

[softmax]
"""


def train_cfg(path: Path, batch: int = 3) -> str:
    path.write_text(TRAIN_CFG.format(batch=batch))
    return str(path)


def train_batch(net, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random(net.batch * net.inputs).astype(f32)
    t = np.zeros((net.batch, net.outputs), f32)
    t[np.arange(net.batch), rng.integers(0, net.outputs, net.batch)] = 1
    return x, t.ravel()


def parameter_arrays(net) -> list:
    return [
        (i, k, as_np(a)) for i, layer in enumerate(net.layers) for k, a in enumerate(layer.parameter_arrays())
    ]


def read_weights(net, path: Path) -> list:
    """The arrays of a weights file laid out as net's parameter_arrays."""
    data = path.read_bytes()[20:]
    out, offset = [], 0
    for i, k, a in parameter_arrays(net):
        out.append((i, k, np.frombuffer(data, f32, len(a), offset)))
        offset += 4 * len(a)
    assert offset == len(data)
    return out


# ---------------------------------------------------------------- kernels against Darknet's loops


def ref_forward_train(out, rmean, rvar, scales, biases, batch, n, size):
    """forward_batchnorm_layer (train) in float32, Darknet's loops one float operation at a time."""
    out = out.reshape(batch, n, size).copy()
    M = batch * size
    mean_scale, var_scale = f32(1.0 / M), f32(1.0 / (M - 1))
    mean, var = np.zeros(n, f32), np.zeros(n, f32)
    for f in range(n):
        s = f32(0)
        for b in range(batch):
            for p in range(size):
                s = f32(s + out[b, f, p])
        mean[f] = f32(s * mean_scale)
        v = f32(0)
        for b in range(batch):
            for p in range(size):
                d = np.float64(f32(out[b, f, p] - mean[f]))
                v = f32(np.float64(v) + d * d)
        var[f] = f32(v * var_scale)
    rmean = f32(rmean * f32(0.99)) + f32(f32(0.01) * mean)
    rvar = f32(rvar * f32(0.99)) + f32(f32(0.01) * var)
    x = out.copy()
    den = np.sqrt(var.astype(np.float64)) + np.float64(f32(0.000001))
    norm = ((out - mean[None, :, None]).astype(np.float64) / den[None, :, None]).astype(f32)
    y = f32(norm * scales[None, :, None]) + biases[None, :, None]
    return y.ravel(), x.ravel(), norm.ravel(), mean, var, rmean.astype(f32), rvar.astype(f32)


def ref_backward(x, x_norm, delta, mean, var, scales, batch, n, size):
    """backward_batchnorm_layer (train) in float32/float64 as Darknet's C expressions."""
    x, x_norm = x.reshape(batch, n, size), x_norm.reshape(batch, n, size)
    d = delta.reshape(batch, n, size).copy()
    M = batch * size
    bias_upd, scale_upd = np.zeros(n, f32), np.zeros(n, f32)
    for f in range(n):
        for b in range(batch):
            s = f32(0)
            for p in range(size):
                s = f32(s + d[b, f, p])
            bias_upd[f] = f32(bias_upd[f] + s)
        s = f32(0)
        for b in range(batch):
            for p in range(size):
                s = f32(s + f32(d[b, f, p] * x_norm[b, f, p]))
        scale_upd[f] = s
    d = f32(d * scales[None, :, None])
    mean_delta, var_delta = np.zeros(n, f32), np.zeros(n, f32)
    for f in range(n):
        md = vd = f32(0)
        for b in range(batch):
            for p in range(size):
                md = f32(md + d[b, f, p])
        for b in range(batch):
            for p in range(size):
                vd = f32(vd + f32(d[b, f, p] * f32(x[b, f, p] - mean[f])))
        s = np.float64(f32(var[f] + f32(0.00001)))
        mean_delta[f] = f32(np.float64(md) * (-1.0 / np.sqrt(s)))
        var_delta[f] = f32(np.float64(vd) * (-0.5 * s**-1.5))
    out = np.zeros_like(d)
    for b in range(batch):
        for f in range(n):
            s = np.float64(f32(var[f] + f32(0.00001)))
            mterm = np.float64(f32(mean_delta[f] / f32(M)))
            for p in range(size):
                dx = np.float64(f32(x[b, f, p] - mean[f]))
                a = np.float64(d[b, f, p]) / np.sqrt(s) + np.float64(var_delta[f]) * 2.0 * dx / M
                out[b, f, p] = f32(a + mterm)
    return out.ravel(), scale_upd, bias_upd, mean_delta, var_delta


@pytest.mark.parametrize("batch,n,size", [(2, 3, 5), (4, 2, 1), (1, 2, 9)])
def test_batchnorm_kernels_match_darknets_loops(batch, n, size):
    rng = np.random.default_rng(batch * 10 + size)
    out0 = (rng.standard_normal(batch * n * size) * 3 + 1).astype(f32)
    rmean0, rvar0 = rng.standard_normal(n).astype(f32), rng.random(n).astype(f32) + 0.5
    scales, biases = (rng.random(n) + 0.5).astype(f32), rng.standard_normal(n).astype(f32)
    out, x, xn = floats(out0), floats(np.zeros_like(out0)), floats(np.zeros_like(out0))
    mean, var, rmean, rvar = floats(np.zeros(n)), floats(np.zeros(n)), floats(rmean0), floats(rvar0)
    kernels.batchnorm_forward_train(
        out, x, xn, mean, var, rmean, rvar, floats(scales), floats(biases), batch, n, size
    )
    want = ref_forward_train(out0, rmean0, rvar0, scales, biases, batch, n, size)
    for got, w, name in zip(
        (out, x, xn, mean, var, rmean, rvar), want, ["y", "x", "x_norm", "mean", "var", "rmean", "rvar"]
    ):
        assert as_np(got).tobytes() == w.tobytes(), name
    delta0 = rng.standard_normal(batch * n * size).astype(f32)
    delta = floats(delta0)
    supd, bupd, md, vd = (floats(np.zeros(n)) for _ in range(4))
    kernels.batchnorm_backward(x, xn, delta, mean, var, floats(scales), supd, bupd, md, vd, batch, n, size)
    want = ref_backward(as_np(x), as_np(xn), delta0, as_np(mean), as_np(var), scales, batch, n, size)
    for got, w, name in zip(
        (delta, supd, bupd, md, vd), want, ["delta", "scale_upd", "bias_upd", "mean_delta", "var_delta"]
    ):
        assert as_np(got).tobytes() == w.tobytes(), name
    with pytest.raises(ValueError):
        kernels.batchnorm_backward(
            x, xn, floats(delta0[:-1]), mean, var, floats(scales), supd, bupd, md, vd, batch, n, size
        )
    with pytest.raises(ValueError):
        kernels.batchnorm_forward_train(
            out, x, xn, mean, var, rmean, rvar, floats(scales), floats(biases), batch, n + 1, size
        )


def test_batchnorm_backward_is_the_gradient_of_darknets_normalisation():
    """Central differences (float64) of L = sum(w * y), y = scales*(x - mean)/sqrt(var_M + .00001)
    + biases with var_M the variance over M (not M - 1): the function whose gradient Darknet's
    backward computes. (Its forward divides by sqrt(var_{M-1}) + .000001 instead: a forward
    statistic and a backward formula that differ by M/(M-1), which we keep as Darknet.)
    delta = w in, delta = dL/dx out; scale_updates = dL/dscales, bias_updates = dL/dbiases."""
    batch, n, size = 3, 2, 4
    rng = np.random.default_rng(7)
    x0 = rng.standard_normal((batch, n, size))
    w = rng.standard_normal((batch, n, size))
    scales, biases = rng.random(n) + 0.5, rng.standard_normal(n)

    def loss(x, sc=scales, bi=biases):
        mean = x.mean(axis=(0, 2), keepdims=True)
        var = ((x - mean) ** 2).mean(axis=(0, 2), keepdims=True)
        y = sc[None, :, None] * (x - mean) / np.sqrt(var + 0.00001) + bi[None, :, None]
        return float((w * y).sum())

    out, x, xn = floats(x0), floats(np.zeros(x0.size)), floats(np.zeros(x0.size))
    mean, var = floats(np.zeros(n)), floats(np.zeros(n))
    kernels.batchnorm_forward_train(out, x, xn, mean, var, floats(np.zeros(n)), floats(np.ones(n)),
                                    floats(scales), floats(biases), batch, n, size)  # fmt: skip
    # the kernel's variance is over M - 1: give backward the variance over M that the check's
    # function uses (both in the kernel's float32)
    M = batch * size
    var_m = floats(as_np(var) * f32((M - 1) / M))
    delta = floats(w)
    supd, bupd, md, vd = (floats(np.zeros(n)) for _ in range(4))
    kernels.batchnorm_backward(x, xn, delta, mean, var_m, floats(scales), supd, bupd, md, vd, batch, n, size)
    x64 = as_np(x).astype(np.float64).reshape(batch, n, size)
    h = 1e-5
    grad = np.zeros_like(x64)
    for i in np.ndindex(x64.shape):
        e = np.zeros_like(x64)
        e[i] = h
        grad[i] = (loss(x64 + e) - loss(x64 - e)) / (2 * h)
    np.testing.assert_allclose(as_np(delta).reshape(grad.shape), grad, rtol=2e-3, atol=2e-4)
    # x_norm here is (x - mean)/(sqrt(var_{M-1}) + 1e-6): the scale gradient Darknet accumulates
    gs = np.array(
        [
            (loss(x64, scales + h * np.eye(n)[f]) - loss(x64, scales - h * np.eye(n)[f])) / (2 * h)
            for f in range(n)
        ]
    )
    gb = np.array(
        [
            (loss(x64, scales, biases + h * np.eye(n)[f]) - loss(x64, scales, biases - h * np.eye(n)[f]))
            / (2 * h)
            for f in range(n)
        ]
    )
    np.testing.assert_allclose(as_np(bupd), gb, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(as_np(supd), gs, rtol=1e-1)  # x_norm uses var_{M-1}: M/(M-1) off
    np.testing.assert_allclose(as_np(supd), gs * np.sqrt((M - 1) / M), rtol=1e-3)


GROUPS_CFG = """[net]
batch=2
subdivisions=1
height=5
width=4
channels=4

[convolutional]
filters=6
size={size}
stride={stride}
pad=1
groups=2
activation=linear
"""


@pytest.mark.parametrize("size,stride", [(3, 1), (3, 2), (1, 1)])
def test_grouped_convolution_backward_is_its_gradient(tmp_path, capsys, size, stride):
    """L = sum(w * out) of a groups=2 convolution is linear in the input and in the weights, so
    central differences of the guest's own float32 forward give the gradients: backward's input
    delta and weight updates must match them; and each group sees only its own channels."""
    (tmp_path / "g.cfg").write_text(GROUPS_CFG.format(size=size, stride=stride))
    net = parse_network_cfg(str(tmp_path / "g.cfg"), init_rng=Random(3))
    capsys.readouterr()
    layer = net.layers[0]
    assert len(layer.weights) == 6 * 2 * size * size
    net.prepare_training(Random(0))
    rng = np.random.default_rng(size + stride)
    x0 = rng.standard_normal(2 * net.inputs).astype(f32)
    w = rng.standard_normal(2 * layer.outputs)

    def loss(x, weights=None):
        if weights is not None:
            layer.weights[:] = floats(weights)
        layer.forward(net, floats(x), False)
        return float(np.dot(as_np(layer.output).astype(np.float64), w))

    W0 = as_np(layer.weights)
    loss(x0, W0)
    layer.delta[:] = floats(w)
    prev = floats(np.zeros(len(x0)))
    layer.backward(net, floats(x0), prev)
    h = 0.5  # exact up to rounding: L is linear
    gx = np.array([(loss(x0 + h * e) - loss(x0 - h * e)) / (2 * h) for e in np.eye(len(x0), dtype=f32)])
    np.testing.assert_allclose(as_np(prev), gx, rtol=1e-4, atol=1e-4)
    eye = np.eye(len(W0), dtype=f32)
    gw = np.array([(loss(x0, W0 + h * e) - loss(x0, W0 - h * e)) / (2 * h) for e in eye])
    np.testing.assert_allclose(as_np(layer.weight_updates), gw, rtol=1e-4, atol=1e-4)
    # group 0's filters (outputs 0-2) do not see channels 2-3, nor group 1's see channels 0-1
    layer.weights[:] = floats(W0)
    x1 = x0.copy().reshape(2, 4, -1)
    x1[:, 2:] = 0
    layer.forward(net, floats(x1), False)
    before = as_np(layer.output).reshape(2, 6, -1)
    x1[:, 2:] = 7
    layer.forward(net, floats(x1), False)
    after = as_np(layer.output).reshape(2, 6, -1)
    assert np.array_equal(before[:, :3], after[:, :3]) and not np.array_equal(before[:, 3:], after[:, 3:])


# ---------------------------------------------------------------- Debian's Darknet: one training step


@pytest.mark.parametrize("steps", [1, 2])
@needs_darknet
def test_training_steps_match_debians_darknet(tmp_path, capsys, steps):
    """conv BN + [batchnorm] + conv BN groups=2 + conv groups=2 + connected BN + softmax, batch 3:
    Darknet's train_network and ours from the same random init; every parameter array after
    (weights, biases, scales, rolling mean and variance) agrees to rtol 1e-5. Two steps also
    carry the momentum of the scale, bias and weight updates."""
    exe = build_harness("darknet_train_step", tmp_path)
    cfg = train_cfg(tmp_path / "bn.cfg")
    net = parse_network_cfg(cfg, init_rng=Random(0))
    set_rolling_variance(net)
    x, t = train_batch(net)
    (tmp_path / "x.f32").write_bytes(x.tobytes())
    (tmp_path / "t.f32").write_bytes(t.tobytes())
    before, after = tmp_path / "before.weights", tmp_path / "after.weights"
    run = subprocess.run([str(exe), cfg, str(before), str(after), str(tmp_path / "x.f32"),
                          str(tmp_path / "t.f32"), str(steps)],
                         capture_output=True, text=True, check=True, timeout=60)  # fmt: skip
    # the same random init (musl rand after srand(0)) gives the same weights file
    assert weights_bytes(net)[20:] == before.read_bytes()[20:]
    their_losses = [float(line.split()[1]) for line in run.stdout.splitlines() if line.startswith("loss")]
    # the layer table, line for line ([batchnorm], groups)
    table = [line for line in capsys.readouterr().err.splitlines() if line[:5].strip().isdigit()]
    assert len(table) == len(net.layers)
    assert table == [line for line in run.stderr.splitlines() if line[:5].strip().isdigit()]

    net.prepare_training(Random(0))
    losses = [net.train_step(floats(x), floats(t)) for _ in range(steps)]
    capsys.readouterr()
    # train_network: the network cost / batch
    np.testing.assert_allclose(np.array(losses) / net.batch, their_losses, rtol=1e-5)
    theirs = read_weights(net, after)
    for (i, k, ours), (_, _, want) in zip(parameter_arrays(net), theirs, strict=True):
        np.testing.assert_allclose(ours, want, rtol=1e-5, atol=1e-7, err_msg=f"layer {i} array {k}")
    # the outputs of the last forward pass (training mode)
    outputs = parse_layer_lines(run.stdout)
    for i, layer in enumerate(net.layers):
        np.testing.assert_allclose(
            as_np(layer.output), outputs[i], rtol=1e-5, atol=1e-6, err_msg=f"layer {i}"
        )
    # the rolling statistics moved from (0, 1) as Darknet's: .99*old + .01*batch statistic
    for layer in net.layers:
        if getattr(layer, "rolling_mean", None) is not None:
            assert np.any(as_np(layer.rolling_mean) != 0) and np.any(as_np(layer.rolling_variance) != 1)


@needs_darknet
def test_trained_bn_net_predicts_as_debians_darknet(tmp_path, capsys):
    """Darknet trains 3 steps (rolling statistics and scales away from 0 and 1) and predicts the
    batch of 3; its weights loaded into our network, our inference (rolling statistics,
    [batchnorm], groups) gives the same floats until the connected layer (whose sums -Ofast
    reassociates), then agrees to rtol 1e-5."""
    exe = build_harness("darknet_train_step", tmp_path)
    cfg = train_cfg(tmp_path / "bn.cfg")
    net = parse_network_cfg(cfg, init_rng=Random(0))
    set_rolling_variance(net)
    x, t = train_batch(net, seed=4)
    (tmp_path / "x.f32").write_bytes(x.tobytes())
    (tmp_path / "t.f32").write_bytes(t.tobytes())
    after = tmp_path / "after.weights"
    run = subprocess.run([str(exe), cfg, str(tmp_path / "b.weights"), str(after), str(tmp_path / "x.f32"),
                          str(tmp_path / "t.f32"), "-3"],
                         capture_output=True, text=True, check=True, timeout=60)  # fmt: skip
    theirs = parse_layer_lines(run.stdout)
    # their trained weights in our network: inference must then agree to the float
    load_weights(net, str(after))
    net.predict(floats(x))
    capsys.readouterr()
    last_exact = next(i for i, layer in enumerate(net.layers) if layer.kind == "connected")
    for i, layer in enumerate(net.layers):
        ours = as_np(layer.output)
        if i < last_exact:
            assert np.array_equal(ours, theirs[i]), f"layer {i} ({layer.kind})"
        else:
            np.testing.assert_allclose(ours, theirs[i], rtol=1e-5, atol=1e-7, err_msg=f"layer {i}")


def _oracle_cfg(tmp_path: Path, name: str) -> Path:
    """A Debian cfg at 64x64 to stay fast."""
    text = (DARKNET_CFGS / f"{name}.cfg").read_text()
    text = re.sub(r"(?m)^(height|width)=\d+", r"\1=64", text)
    path = tmp_path / f"{name}_64.cfg"
    path.write_text(text)
    return path


@needs_darknet
def test_resnext50_layers_match_debians_darknet(tmp_path, capsys):
    """resnext50 (groups=32, batch-normalised convolutions, shortcuts) at 64x64 with Darknet's
    random init: every layer's output equals Darknet's to the float until the avgpool (-Ofast)."""
    exe = build_harness("darknet_layers", tmp_path)
    cfg = _oracle_cfg(tmp_path, "resnext50")
    assert "groups=32" in cfg.read_text()
    weights = tmp_path / "resnext50.weights"
    x = np.random.default_rng(5).random(64 * 64 * 3).astype(f32)
    (tmp_path / "x.f32").write_bytes(x.tobytes())
    run = subprocess.run([str(exe), str(cfg), str(weights), str(tmp_path / "x.f32")],
                         capture_output=True, text=True, check=True, timeout=300)  # fmt: skip
    theirs = parse_layer_lines(run.stdout)
    net = parse_network_cfg(str(cfg))
    net.set_batch(1)
    load_weights(net, str(weights))
    net.predict(floats(x))
    capsys.readouterr()
    assert len(theirs) == len(net.layers)
    assert any(getattr(layer, "groups", 1) == 32 for layer in net.layers)
    exact_until = next(i for i, layer in enumerate(net.layers) if layer.kind == "avgpool")
    for i, layer in enumerate(net.layers):
        ours = as_np(layer.output)[: layer.outputs]
        if i < exact_until:
            assert np.array_equal(ours, theirs[i]), f"layer {i} ({layer.kind})"
        else:
            np.testing.assert_allclose(ours, theirs[i], rtol=1e-5, atol=1e-7, err_msg=f"layer {i}")


# ---------------------------------------------------------------- a BN net learns, saves, reloads


def test_loss_falls_on_a_bn_net_and_reloaded_weights_predict_the_same(tmp_path, capsys):
    """20 steps on one batch of the BN cfg: the loss falls; the saved weights (scales, rolling
    statistics) loaded into a fresh network predict exactly what the trained network predicts."""
    cfg = train_cfg(tmp_path / "bn.cfg", batch=4)
    net = parse_network_cfg(cfg, init_rng=Random(1))
    set_rolling_variance(net)
    net.prepare_training(Random(1))
    x, t = train_batch(net, seed=2)
    losses = [net.train_step(floats(x), floats(t)) for _ in range(20)]
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.5 * losses[0], losses
    for layer in net.layers:  # the rolling statistics learnt
        if getattr(layer, "rolling_mean", None) is not None:
            assert np.all(as_np(layer.rolling_mean) != 0)
    (tmp_path / "bn.weights").write_bytes(weights_bytes(net))
    want = as_np(net.predict(floats(x)))
    fresh = parse_network_cfg(cfg)
    load_weights(fresh, str(tmp_path / "bn.weights"))
    assert as_np(fresh.predict(floats(x))).tobytes() == want.tobytes()
    assert weights_bytes(fresh) == weights_bytes(net)
    # inference uses the rolling statistics, not the batch's: one image alone predicts the same
    fresh.set_batch(1)
    one = as_np(fresh.predict(floats(x[: fresh.inputs])))
    assert one.tobytes() == want[: fresh.outputs].tobytes()
    capsys.readouterr()


def test_weights_records_are_darknets(tmp_path, capsys):
    """Sizes and order: conv BN biases, scales, rolling mean, rolling variance, weights
    (n*(c/groups)*k*k); [batchnorm] scales, rolling mean, rolling variance; connected BN
    biases, weights, scales, rolling mean, rolling variance."""
    net = parse_network_cfg(train_cfg(tmp_path / "bn.cfg"))
    sizes = [[len(a) for a in layer.parameter_arrays()] for layer in net.layers]
    assert sizes == [
        [4, 4, 4, 4, 4 * 2 * 9],
        [4, 4, 4],
        [6, 6, 6, 6, 6 * 2 * 9],  # groups=2: 4 input channels, 2 per group
        [4, 4 * 3],  # groups=2, 1x1: 6 channels, 3 per group
        [5, 180, 5, 5, 5],
        [],
    ]
    err = capsys.readouterr().err.splitlines()
    assert "    1 Batch Normalization Layer: 6 x 6 x 4 image" in err
    # Darknet's BFLOPs of a grouped convolution count c/groups inputs per filter
    assert "    2 conv      6  3 x 3 / 2     6 x   6 x   4   ->     3 x   3 x   6  0.000 BFLOPs" in err


def test_connected_make_builds_what_the_cfg_builds(tmp_path, capsys):
    """ConnectedLayer.make (explicit values, for layers built inside layers) equals the cfg's."""
    from dlserver.kernels import Activation
    from dlserver.layers.connected import ConnectedLayer

    net = parse_network_cfg(train_cfg(tmp_path / "bn.cfg"), init_rng=Random(0))
    capsys.readouterr()
    cfg_layer = net.layers[4]
    made = ConnectedLayer.make(net.batch, 36, 5, Activation.LEAKY, batch_normalize=1)
    assert (made.inputs, made.outputs, made.batch_normalize, made.activation) == (36, 5, 1, Activation.LEAKY)
    for mine, theirs in zip(made.parameter_arrays(), cfg_layer.parameter_arrays(), strict=True):
        mine[:] = theirs
    x = floats(np.random.default_rng(0).standard_normal(net.batch * 36))
    made.forward(net, x, False)
    cfg_layer.forward(net, x, False)
    assert made.output.tobytes() == cfg_layer.output.tobytes()
    made.prepare_training()
    made.forward(net, x, True)
    assert made.describe() == cfg_layer.describe()
    with pytest.raises(DLServerError, match="rnn.cfg:3: connected output=0"):
        ConnectedLayer.make(1, 12, 0, where="rnn.cfg:3")


# ---------------------------------------------------------------- bad cfgs


@pytest.mark.parametrize(
    "old,new,message",
    [
        (
            "groups=2\nactivation=leaky",
            "groups=3\nactivation=leaky",
            "groups=3 does not divide the 4 input channels and 6 filters",
        ),
        (
            "filters=6\nsize=3\nstride=2\npad=1\ngroups=2",
            "filters=5\nsize=3\nstride=2\npad=1\ngroups=2",
            "groups=2 does not divide the 4 input channels and 5 filters",
        ),
        ("groups=2\nactivation=leaky", "groups=0\nactivation=leaky", "groups=0: must be at least 1"),
        ("groups=2\nactivation=leaky", "groups=-2\nactivation=leaky", "groups=-2: must be at least 1"),
    ],
)
def test_bad_groups_are_one_clear_error(tmp_path, capsys, old, new, message):
    text = TRAIN_CFG.format(batch=2)
    assert old in text
    (tmp_path / "bad.cfg").write_text(text.replace(old, new, 1))
    with pytest.raises(DLServerError) as info:
        parse_network_cfg(str(tmp_path / "bad.cfg"))
    # the [convolutional] section of layer 2 starts on line 22
    assert str(info.value) == f"{tmp_path / 'bad.cfg'}:22: convolutional {message}"


def test_batchnorm_after_a_flat_layer_is_fine_and_its_input_must_exist(tmp_path, capsys):
    """[batchnorm] after a connected layer normalises 1x1xoutputs (as Darknet's w x h x c)."""
    text = TRAIN_CFG.format(batch=2).replace("[softmax]", "[batchnorm]\n\n[softmax]")
    (tmp_path / "a.cfg").write_text(text)
    net = parse_network_cfg(str(tmp_path / "a.cfg"))
    assert [len(a) for a in net.layers[5].parameter_arrays()] == [5, 5, 5]
    capsys.readouterr()


# ---------------------------------------------------------------- the component


@pytest.fixture
def bn_patterns(workdir):
    """24 8x8 RGB images of 3 classes (a bright band per class), a dataset file and a BN cfg
    with [batchnorm], groups and a connected BN layer."""
    write_band_dataset(workdir)
    text = TRAIN_CFG.format(batch=4).replace("max_batches=100", "max_batches=12")
    text = text.replace("height=6\nwidth=6\nchannels=2", "height=8\nwidth=8\nchannels=3")
    (workdir / "cfg" / "p.cfg").write_text(text.replace("output=5", "output=3"))
    return workdir


def test_bn_classifier_trains_and_predicts(bn_patterns, capsys, monkeypatch):
    monkeypatch.setenv("DL_SERVER_CLOCK", "0")
    assert "Batch Normalization Layer" in train_then_predict_band(capsys, batches=12)


@pytest.mark.component
def test_bn_training_in_component_equals_native(component, bn_patterns, capsys, monkeypatch):
    """The same seeded training of the BN cfg in dl-server.wasm writes the same weights and lines
    (batch statistics, sqrt and pow of wasi-libc against the native build's libm)."""
    monkeypatch.setenv("DL_SERVER_CLOCK", "0")
    assert_component_trains_as_native(bn_patterns, capsys, TRAIN_BAND_ARGS, "model/p.weights")
