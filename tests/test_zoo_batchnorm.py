"""Batch normalisation in training (convolutional, connected, [batchnorm]) and convolutional
groups (issue 15, docs/darknet-contract.md §4): kernels against numpy references of Darknet's
loops, finite-difference checks of the backward, one training step against Debian's Darknet
(tests/oracle/darknet_train_step.c), per-layer forward against Darknet on resnext50 and a
hand-made cfg, a BN net that learns, reloads and predicts the same, and bad cfgs."""

import re
import shutil
import subprocess
import struct
from array import array
from pathlib import Path

import numpy as np
import pytest

from dlserver import kernels
from dlserver.errors import DLServerError
from dlserver.network import parse_network_cfg
from dlserver.rng import Random
from dlserver.weights import load_weights, weights_bytes

f32 = np.float32
LIBDARKNET = Path("/usr/lib/darknet/libdarknet.so")
DARKNET_INCLUDE = Path("/usr/lib/darknet/include")
DARKNET_CFGS = Path("/usr/share/darknet/cfg")
ORACLE = Path(__file__).parent / "oracle"
needs_darknet = [
    pytest.mark.skipif(not LIBDARKNET.exists(), reason="Debian's darknet package is not installed"),
    pytest.mark.skipif(shutil.which("gcc") is None, reason="no gcc to build the oracle harness"),
]


def floats(values) -> array:
    return array("f", np.asarray(values, dtype=f32).ravel().tolist())


def as_np(buf) -> np.ndarray:
    return np.frombuffer(buf, dtype=f32).copy()


def build_harness(tmp_path: Path, name: str) -> Path:
    exe = tmp_path / name
    subprocess.run(
        ["gcc", "-O2", "-o", str(exe), str(ORACLE / f"{name}.c"), f"-I{DARKNET_INCLUDE}",
         f"-L{LIBDARKNET.parent}", "-ldarknet", f"-Wl,-rpath,{LIBDARKNET.parent}", "-lm"],
        check=True,
    )  # fmt: skip
    return exe


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
    return [(i, k, as_np(a)) for i, layer in enumerate(net.layers) for k, a in enumerate(layer.parameter_arrays())]


def read_weights(net, path: Path) -> list:
    """The arrays of a weights file laid out as net's parameter_arrays."""
    data = path.read_bytes()[20:]
    out, offset = [], 0
    for i, k, a in parameter_arrays(net):
        out.append((i, k, np.frombuffer(data, f32, len(a), offset)))
        offset += 4 * len(a)
    assert offset == len(data)
    return out


# ---------------------------------------------------------------- Debian's Darknet: one training step


@pytest.mark.parametrize("steps", [1, 2])
@needs_darknet[0]
@needs_darknet[1]
def test_training_steps_match_debians_darknet(tmp_path, capsys, steps):
    """conv BN + [batchnorm] + conv BN groups=2 + conv groups=2 + connected BN + softmax, batch 3:
    Darknet's train_network and ours from the same random init; every parameter array after
    (weights, biases, scales, rolling mean and variance) agrees to rtol 1e-5. Two steps also
    carry the momentum of the scale, bias and weight updates."""
    exe = build_harness(tmp_path, "darknet_train_step")
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
        np.testing.assert_allclose(as_np(layer.output), outputs[i], rtol=1e-5, atol=1e-6, err_msg=f"layer {i}")
    # the rolling statistics moved from (0, 1) as Darknet's: .99*old + .01*batch statistic
    for i, layer in enumerate(net.layers):
        if getattr(layer, "rolling_mean", None) is not None:
            assert np.any(as_np(layer.rolling_mean) != 0) and np.any(as_np(layer.rolling_variance) != 1)
