"""[avgpool] and [shortcut] (issue 15, docs/darknet-contract.md §4.14-4.15): kernels and layers
against numpy, a small residual classifier that trains and predicts, and Debian's Darknet as
the oracle (skipped where libdarknet.so or gcc is missing)."""

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
from dlserver.network import parse_network_cfg
from dlserver.weights import load_weights

f32 = np.float32


def floats(values) -> array:
    return array("f", np.asarray(values, dtype=f32).ravel().tolist())


def as_np(buf) -> np.ndarray:
    return np.frombuffer(buf, dtype=f32).copy()


# ---------------------------------------------------------------- numpy references (Darknet's loops)


def ref_avgpool(x: np.ndarray, planes: int, n: int) -> np.ndarray:
    out = np.zeros(planes, f32)
    for p in range(planes):
        s = f32(0)
        for i in range(n):
            s = f32(s + x[p * n + i])
        out[p] = f32(s / f32(n))
    return out


def ref_shortcut(batch, w1, h1, c1, add, w2, h2, c2, s1, s2, out):
    out = out.copy()
    stride, sample = max(1, w1 // w2), max(1, w2 // w1)
    for b in range(batch):
        for k in range(min(c1, c2)):
            for j in range(min(h1, h2)):
                for i in range(min(w1, w2)):
                    o = i * sample + w2 * (j * sample + h2 * (k + c2 * b))
                    a = i * stride + w1 * (j * stride + h1 * (k + c1 * b))
                    out[o] = f32(f32(f32(s1) * out[o]) + f32(f32(s2) * add[a]))
    return out


# ---------------------------------------------------------------- kernels


def test_avgpool_kernels_match_numpy():
    rng = np.random.default_rng(1)
    planes, n = 6, 49
    x = rng.standard_normal(planes * n).astype(f32)
    out = floats(np.zeros(planes))
    kernels.avgpool_forward(floats(x), planes, n, out)
    assert as_np(out).tobytes() == ref_avgpool(x, planes, n).tobytes()
    d = rng.standard_normal(planes).astype(f32)
    prev0 = rng.standard_normal(planes * n).astype(f32)
    prev = floats(prev0)
    kernels.avgpool_backward(floats(d), planes, n, prev)
    want = prev0 + np.repeat(d / f32(n), n)
    assert as_np(prev).tobytes() == want.astype(f32).tobytes()
    with pytest.raises(ValueError):
        kernels.avgpool_forward(floats(x[:-1]), planes, n, out)


@pytest.mark.parametrize(
    "w1,h1,c1,w2,h2,c2,s1,s2",
    [
        (5, 4, 3, 5, 4, 3, 1.0, 1.0),  # same shape (resnet's identity shortcut)
        (8, 8, 4, 4, 4, 6, 1.0, 1.0),  # source larger: read every 2nd cell, fewer channels
        (3, 3, 6, 6, 6, 4, 0.5, 2.0),  # source smaller: written every 2nd cell; alpha, beta
    ],
)
def test_shortcut_kernel_matches_numpy(w1, h1, c1, w2, h2, c2, s1, s2):
    rng = np.random.default_rng(2)
    batch = 2
    add = rng.standard_normal(batch * w1 * h1 * c1).astype(f32)
    out0 = rng.standard_normal(batch * w2 * h2 * c2).astype(f32)
    out = floats(out0)
    kernels.shortcut(batch, w1, h1, c1, floats(add), w2, h2, c2, s1, s2, out)
    want = ref_shortcut(batch, w1, h1, c1, add, w2, h2, c2, s1, s2, out0)
    assert as_np(out).tobytes() == want.tobytes()
    with pytest.raises(ValueError):
        kernels.shortcut(batch, w1, h1, c1, floats(add[:-1]), w2, h2, c2, s1, s2, out)


# ---------------------------------------------------------------- layers in a network

RESIDUAL_CFG = """[net]
batch={batch}
subdivisions=1
height=8
width=8
channels=2
learning_rate=0.05
momentum=0.9
decay=0.0005
max_batches={max_batches}
policy=constant

[convolutional]
filters=4
size=3
stride=1
pad=1
activation=leaky

[convolutional]
filters=4
size=3
stride=1
pad=1
activation=leaky

[shortcut]
from=-2
activation=leaky

[convolutional]
filters=6
size=3
stride=2
pad=1
activation=leaky

[shortcut]
from=-2
{last_shortcut}

[convolutional]
filters={classes}
size=1
stride=1
pad=1
activation=linear

[avgpool]

[softmax]
"""


def residual_cfg(path: Path, batch=2, max_batches=10, classes=3, last_shortcut="activation=linear") -> str:
    path.write_text(
        RESIDUAL_CFG.format(
            batch=batch, max_batches=max_batches, classes=classes, last_shortcut=last_shortcut
        )
    )
    return str(path)


def test_layer_table_lines_are_darknets(tmp_path, capsys):
    parse_network_cfg(residual_cfg(tmp_path / "r.cfg", last_shortcut=""))
    err = capsys.readouterr().err.splitlines()
    assert err[3] == "    2 res    0                   8 x   8 x   4   ->     8 x   8 x   4"
    # as Darknet: the default message of an option read after the line comes after it
    assert err[5:7] == [
        "    4 res    2                   8 x   8 x   4   ->     4 x   4 x   6",
        "activation: Using default 'linear'",
    ]
    assert err[8] == "    6 avg                        4 x   4 x   3   ->     3"


def test_layers_forward_and_backward_match_numpy(tmp_path, capsys):
    from dlserver.rng import Random

    net = parse_network_cfg(residual_cfg(tmp_path / "r.cfg", batch=2), init_rng=Random(0))
    net.prepare_training(Random(0))
    rng = np.random.default_rng(3)
    x = rng.standard_normal(2 * net.inputs).astype(f32)
    net.forward(floats(x), train=True)
    L = net.layers
    leaky = lambda v: np.where(v > 0, v, (0.1 * v.astype(np.float64)).astype(f32)).astype(f32)  # noqa: E731
    out0, out1, out3 = as_np(L[0].output), as_np(L[1].output), as_np(L[3].output)
    # shortcut 2: leaky(conv1 + conv0), same shapes
    assert as_np(L[2].output).tobytes() == leaky(out1 + out0).tobytes()
    # shortcut 4: conv3 (4x4x6) + every 2nd cell of shortcut 2 (8x8x4) on 4 channels, linear
    s2 = as_np(L[2].output)
    want4 = ref_shortcut(2, 8, 8, 4, s2, 4, 4, 6, 1.0, 1.0, out3)
    assert as_np(L[4].output).tobytes() == want4.tobytes()
    # avgpool 6: mean of each 4x4 plane of conv 5
    assert as_np(L[6].output).tobytes() == ref_avgpool(as_np(L[5].output), 2 * 3, 16).tobytes()

    # backward of avgpool and the strided shortcut, with fresh deltas
    for layer in L:
        kernels.fill(len(layer.delta), 0.0, layer.delta)
    d6 = rng.standard_normal(len(L[6].delta)).astype(f32)
    L[6].delta[:] = floats(d6)
    L[6].backward(net, L[5].output, L[5].delta)
    assert as_np(L[5].delta).tobytes() == np.repeat(d6 / f32(16), 16).astype(f32).tobytes()
    d4 = rng.standard_normal(len(L[4].delta)).astype(f32)
    L[4].delta[:] = floats(d4)
    L[4].backward(net, L[3].output, L[3].delta)
    assert as_np(L[3].delta).tobytes() == d4.tobytes()  # linear: prev += 1*delta
    want2 = ref_shortcut(2, 4, 4, 6, d4, 8, 8, 4, 1.0, 1.0, np.zeros(len(L[2].delta), f32))
    assert as_np(L[2].delta).tobytes() == want2.tobytes()
    # leaky shortcut 2: delta *= leaky'(out), then into layer 1 (previous) and layer 0 (from)
    L[2].backward(net, L[1].output, L[1].delta)
    g = np.where(as_np(L[2].output) > 0, want2, f32(0.1) * want2).astype(f32)
    assert as_np(L[2].delta).tobytes() == g.tobytes()
    assert as_np(L[1].delta).tobytes() == g.tobytes() and as_np(L[0].delta).tobytes() == g.tobytes()


def test_bad_shortcut_sources_are_clear_errors(tmp_path):
    from dlserver.errors import DLServerError

    text = Path(residual_cfg(tmp_path / "r.cfg")).read_text()
    for bad, message in [("from=5", "not an earlier layer"), ("from=x", "not a layer index"), ("", "from=")]:
        (tmp_path / "bad.cfg").write_text(
            text.replace("from=-2\nactivation=leaky", bad + "\nactivation=leaky", 1)
        )
        with pytest.raises(DLServerError, match=message):
            parse_network_cfg(str(tmp_path / "bad.cfg"))


@pytest.fixture
def patterns(workdir):
    """24 8x8 RGB images of 3 classes (a bright band per class), a dataset file and the residual cfg."""
    write_band_dataset(workdir)
    text = RESIDUAL_CFG.format(batch=4, max_batches=12, classes=3, last_shortcut="activation=linear")
    (workdir / "cfg" / "p.cfg").write_text(text.replace("channels=2", "channels=3"))
    return workdir


def test_residual_classifier_trains_and_predicts(patterns, capsys, monkeypatch):
    monkeypatch.setenv("DL_SERVER_CLOCK", "0")
    err = train_then_predict_band(capsys, batches=12)
    assert "res    2" in err and "avg " in err


@pytest.mark.component
def test_residual_training_in_component_equals_native(component, patterns, capsys, monkeypatch):
    """The same seeded training run in dl-server.wasm writes the same weights and lines."""
    monkeypatch.setenv("DL_SERVER_CLOCK", "0")
    assert_component_trains_as_native(patterns, capsys, TRAIN_BAND_ARGS, "model/p.weights")


# ---------------------------------------------------------------- Debian's Darknet as the oracle


def _oracle_cfg(tmp_path: Path, name: str) -> Path:
    """A Debian cfg at 64x64 to stay fast."""
    text = (DARKNET_CFGS / f"{name}.cfg").read_text()
    text = re.sub(r"(?m)^(height|width)=\d+", r"\1=64", text)
    path = tmp_path / f"{name}_64.cfg"
    path.write_text(text)
    return path


@needs_darknet
# resnet18: shortcuts of equal and of different sizes, leaky; darknet53: from=-3, linear
@pytest.mark.parametrize("name", ["resnet18", "darknet53"])
def test_layers_match_debians_darknet(tmp_path, capsys, name):
    exe = build_harness("darknet_layers", tmp_path)
    cfg = _oracle_cfg(tmp_path, name)
    assert "[shortcut]" in cfg.read_text() and "[avgpool]" in cfg.read_text()
    weights = tmp_path / f"{name}.weights"
    rng = np.random.default_rng(5)
    x = rng.random(64 * 64 * 3).astype(f32)
    (tmp_path / "x.f32").write_bytes(x.tobytes())
    # a subprocess: libdarknet sets flush-to-zero for the whole process that loads it
    run = subprocess.run([str(exe), str(cfg), str(weights), str(tmp_path / "x.f32")],
                         capture_output=True, text=True, check=True, timeout=120)  # fmt: skip
    theirs = {}
    for line in run.stdout.splitlines():
        index, count, *values = line.split()
        theirs[int(index)] = np.array(values, dtype=f32)
        assert len(values) == int(count)

    net = parse_network_cfg(str(cfg))
    net.set_batch(1)
    load_weights(net, str(weights))
    net.predict(floats(x))
    capsys.readouterr()
    assert len(theirs) == len(net.layers)
    exact_until = next(i for i, layer in enumerate(net.layers) if layer.kind == "avgpool")
    for i, layer in enumerate(net.layers):
        ours = as_np(layer.output)[: layer.outputs]
        if i < exact_until:
            # conv (im2col + gemm in source order), BN, leaky, shortcut: the same floats
            assert np.array_equal(ours, theirs[i]), f"layer {i} ({layer.kind})"
        else:
            # -Ofast: Darknet's avgpool sum and softmax exp are reassociated / vectorised
            np.testing.assert_allclose(ours, theirs[i], rtol=1e-5, atol=1e-7, err_msg=f"layer {i}")
