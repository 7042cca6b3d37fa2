"""LeNet from the seed: layer table, weights round trip, forward against numpy, predict."""

from array import array

import numpy as np
import pytest

from conftest import EXPECTED, PREDICT_ARGS, ROOT, seed_file
from dlserver.commands.classifier import load_network, top_k
from dlserver.errors import DLServerError
from dlserver.main import main
from dlserver.network import parse_network_cfg
from dlserver.weights import load_weights, weights_bytes

LENET_TABLE = """\
layer     filters    size              input                output
    0 conv      6  5 x 5 / 1    28 x  28 x   3   ->    28 x  28 x   6  0.001 BFLOPs
    1 max          2 x 2 / 2    28 x  28 x   6   ->    14 x  14 x   6
    2 conv      6  5 x 5 / 1    14 x  14 x   6   ->    14 x  14 x   6  0.000 BFLOPs
    3 max          2 x 2 / 2    14 x  14 x   6   ->     7 x   7 x   6
    4 connected                             294  ->   120
    5 dropout       p = 0.80                120  ->   120
    6 connected                             120  ->    84
    7 dropout       p = 0.80                 84  ->    84
    8 connected                              84  ->    10
    9 softmax                                          10
   10 cost                                             10
"""
CFG = str(ROOT / "cfg" / "mnist_lenet.cfg")


def test_layer_table_is_darknets(capsys):
    parse_network_cfg(CFG)
    assert capsys.readouterr().err == LENET_TABLE


@pytest.mark.parametrize(
    "name", ["mnist_lenet.weights", "mnist_lenet_1.weights", "mnist_lenet_2.weights", "mnist_lenet_3.weights"]
)
def test_weights_round_trip_byte_for_byte(name):
    path = seed_file(f"model/{name}")
    net = load_network(CFG, str(path))
    assert weights_bytes(net) == path.read_bytes()
    assert net.seen in (60000, 120000, 180000, 200000)


def test_truncated_and_overlong_weights_are_errors(tmp_path):
    data = seed_file("model/mnist_lenet.weights").read_bytes()
    net = parse_network_cfg(CFG)
    for content, problem in (
        (data[:-4], "truncated"),
        (data + b"\0\0\0\0", "too long"),
        (data[:10], "shorter than the 16-byte header"),
    ):
        bad = tmp_path / "bad.weights"
        bad.write_bytes(content)
        with pytest.raises(DLServerError, match=problem):
            load_weights(net, str(bad))


def _numpy_lenet(net, x):
    """Reference forward of LeNet in float32 numpy (inference)."""

    def conv(layer, a):
        w = np.frombuffer(layer.weights, np.float32).reshape(layer.n, layer.c, layer.size, layer.size)
        p = layer.pad
        a = np.pad(a, ((0, 0), (0, 0), (p, p), (p, p)))
        out = np.zeros((a.shape[0], layer.n, layer.out_h, layer.out_w), np.float32)
        for ky in range(layer.size):
            for kx in range(layer.size):
                patch = a[:, :, ky : ky + layer.out_h, kx : kx + layer.out_w]
                out += np.einsum("bchw,fc->bfhw", patch, w[:, :, ky, kx])
        out += np.frombuffer(layer.biases, np.float32)[None, :, None, None]
        return np.maximum(out, 0)

    def pool(a):
        b, c, h, w = a.shape
        return a.reshape(b, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))

    def fc(layer, a, relu):
        w = np.frombuffer(layer.weights, np.float32).reshape(layer.outputs, layer.inputs)
        out = a.reshape(a.shape[0], -1) @ w.T + np.frombuffer(layer.biases, np.float32)
        return np.maximum(out, 0) if relu else out

    L = net.layers
    a = pool(conv(L[0], x))
    a = pool(conv(L[2], a))
    a = fc(L[4], a, True)
    a = fc(L[6], a, True)
    a = fc(L[8], a, False)
    e = np.exp(a - a.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_forward_matches_numpy_reference():
    net = load_network(CFG, str(seed_file("model/mnist_lenet.weights")))
    rng = np.random.default_rng(0)
    x = rng.random((5, 3, 28, 28), dtype=np.float32)
    net.set_batch(5)
    ours = np.frombuffer(net.predict(array("f", x.ravel())), np.float32)
    ref = _numpy_lenet(net, x).ravel()
    np.testing.assert_allclose(ours[: ref.size], ref, rtol=1e-4, atol=1e-6)


def test_batched_forward_equals_one_by_one():
    net = load_network(CFG, str(seed_file("model/mnist_lenet.weights")))
    rng = np.random.default_rng(1)
    x = rng.random((4, 3 * 28 * 28), dtype=np.float32)
    net.set_batch(4)
    batched = net.predict(array("f", x.ravel())).tobytes()
    net.set_batch(1)
    single = b"".join(net.predict(array("f", row)).tobytes() for row in x)
    assert batched == single


def test_top_k_is_stable_descending():
    assert top_k([0.1, 0.5, 0.5, 0.2], 3) == [1, 2, 3]
    assert top_k([3.0, 1.0, 2.0], 1) == [0]


def test_predict_prints_the_originals_output(prediction_one, capsys):
    expected = EXPECTED / "predict_t_00000_c5.stdout"
    if not expected.exists():
        pytest.skip("seed expected output absent")
    assert main(["dl-server"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines(keepends=True)
    assert lines[:6] == [f"argv[{i}] = '{a}'\n" for i, a in enumerate(PREDICT_ARGS, 1)]
    assert "".join(lines[6:]) == expected.read_text()
    assert err.endswith(
        "Loading weights from model/mnist_lenet.weights...Done!\n"
        "data/mnist/images_client1/t_00000_c5.png: Predicted.\n"
    )
