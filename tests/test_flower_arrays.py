"""dlserver_tools.darknet_arrays: Darknet .weights <-> named float32 arrays driven by the cfg.

The oracle is the file itself: decoding splits it exactly (the cfg's tensors must add up to
its length) and encoding gives back the same bytes; the guest loads what we encode."""

import struct
from pathlib import Path

import numpy as np
import pytest

from dlserver import buffers
from dlserver.network import parse_network_cfg
from dlserver_tools import darknet_arrays as da

REPO = Path(__file__).resolve().parent.parent
SEED = REPO.parent.parent / "shared" / "seed" / "files" / "model" / "seed_mnist_lenet.weights"
LENET = REPO / "cfg" / "mnist_lenet.cfg"
YOLO_CFG = REPO / "cfg" / "yolov3-tiny.cfg"
YOLO = REPO / "model" / "yolov3-tiny.weights"


def random_weights(cfg: da.Sections, seen: int = 12345, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    n = sum(k for _, k in da.tensor_shapes(cfg))
    return struct.pack("<iiiQ", 0, 2, 0, seen) + rng.standard_normal(n).astype("<f4").tobytes()


def lenet_files() -> list[Path]:
    return [p for p in (SEED, REPO / "model" / "seed_mnist_lenet.weights") if p.is_file()]


def test_lenet_tensors_in_file_order():
    tensors = da.tensor_shapes(da.read_cfg(LENET))
    # 28x28x3 -> conv 6@5x5 (pad 2) -> maxpool -> 14x14 -> conv -> maxpool -> 7x7x6 = 294 inputs
    assert tensors[:4] == [
        ("000.convolutional.biases", 6),
        ("000.convolutional.weights", 6 * 3 * 25),
        ("002.convolutional.biases", 6),
        ("002.convolutional.weights", 6 * 6 * 25),
    ]
    assert ("004.connected.weights", 120 * 294) in tensors
    assert sum(n for _, n in tensors) == 47776


@pytest.mark.parametrize("seen", [0, 7, 2**40 + 3])
def test_round_trip_is_exact_and_carries_seen(seen):
    cfg = da.read_cfg(LENET)
    data = random_weights(cfg, seen)
    header, arrays = da.decode(cfg, data)
    assert da.seen(header) == seen
    assert all(a.dtype == np.float32 for a in arrays.values())
    assert da.encode(cfg, header, arrays) == data


def test_seed_lenet_round_trip():
    files = lenet_files()
    if not files:
        pytest.skip("no seed LeNet weights here")
    cfg = da.read_cfg(LENET)
    for path in files:
        data = path.read_bytes()
        header, arrays = da.decode(cfg, data, str(path))
        assert da.encode(cfg, header, arrays) == data


def test_yolov3_tiny_round_trip():
    if not YOLO.is_file():
        pytest.skip("model/yolov3-tiny.weights missing (make yolo_detection)")
    cfg = da.read_cfg(YOLO_CFG)
    data = YOLO.read_bytes()
    header, arrays = da.decode(cfg, data, str(YOLO))
    assert sum(a.size for a in arrays.values()) == 8858734
    assert (
        arrays["000.convolutional.scales"].size == 16
    )  # batch-normalised: biases, scales, mean, var, weights
    assert list(arrays)[:5] == [f"000.convolutional.{t}" for t in da.BN_CONV_ORDER]
    assert da.encode(cfg, header, arrays) == data


def test_wrong_length_and_wrong_arrays_are_refused():
    cfg = da.read_cfg(LENET)
    data = random_weights(cfg)
    with pytest.raises(da.ArraysError, match=r"client\.weights: 191100 bytes .* needs 191104"):
        da.decode(cfg, data[:-4], "client.weights")
    header, arrays = da.decode(cfg, data)
    short = dict(arrays, **{"004.connected.weights": arrays["004.connected.weights"][:-1]})
    with pytest.raises(da.ArraysError, match=r"client 2: 004.connected.weights is float32\[35279\]"):
        da.encode(cfg, header, short, "client 2")
    extra = dict(arrays, bogus=np.zeros(1, np.float32))
    with pytest.raises(da.ArraysError, match="unexpected bogus"):
        da.encode(cfg, header, extra)
    doubles = {k: v.astype(np.float64) for k, v in arrays.items()}
    with pytest.raises(da.ArraysError, match="float64"):
        da.check_arrays(cfg, doubles)
    with pytest.raises(da.ArraysError, match=r"\[attention\]: not supported"):
        da.tensor_shapes(da.parse_cfg("[net]\nheight=1\nwidth=1\nchannels=1\n[attention]\noutput=4\n"))


DARKNET_CFGS = sorted(Path("/usr/share/darknet/cfg").glob("*.cfg"))


@pytest.mark.parametrize(
    "cfg",
    [REPO / "cfg" / "mnist_resnet.cfg", YOLO_CFG, LENET] + DARKNET_CFGS,  # recurrent and crop ones too
    ids=lambda p: p.name,
)
def test_tensors_are_the_guests_parameter_arrays(cfg, capsys, monkeypatch):
    """The guest's network (built natively from the same cfg) is the oracle: the same arrays,
    in the same order, of the same sizes, as its weights files hold them."""
    monkeypatch.setattr(buffers, "_budget", buffers.LIMIT_BYTES)  # no weights file: all of it
    monkeypatch.chdir(cfg.parent)  # darknet9000's tree file
    ours = [n for _, n in da.tensor_shapes(da.read_cfg(cfg))]
    net = parse_network_cfg(str(cfg), batch=1)
    capsys.readouterr()  # the layer table
    assert ours == [len(a) for layer in net.layers for a in layer.parameter_arrays()]
