"""The arrays codec (dlserver_tools.darknet_arrays) on recurrent layers (rnn, gru, lstm, crnn,
with and without batch_normalize) and crop: the guest's own network, built natively from the
same cfg with every parameter moved off its init, is the oracle. The file the guest saves must
decode into exactly the guest's parameter arrays, value for value and in its order, under the
names of Darknet's sublayers, and encode back to the same bytes."""

from array import array

import numpy as np
import pytest

from dlserver import buffers
from dlserver.network import parse_network_cfg
from dlserver.weights import weights_bytes
from dlserver_tools import darknet_arrays as da

NET = "[net]\nbatch=2\nsubdivisions=1\n{size}\ntime_steps=3\nlearning_rate=0.1\nmax_batches=10\n\n"
LAYERS = {
    "rnn": "[rnn]\noutput=4\nactivation=leaky\n{bn}\n[rnn]\noutput=6\nshortcut=1\n{bn}",
    "gru": "[gru]\noutput=4\n{bn}\n[gru]\noutput=6\ntanh=1\n{bn}",
    "lstm": "[lstm]\noutput=4\n{bn}\n[lstm]\noutput=6\n{bn}",
    # a non-square image: crnn swaps height and width (parse_crnn), the crop then cuts it
    "crnn": "[crnn]\noutput_filters=3\nhidden_filters=4\nactivation=leaky\n{bn}\n"
    "[crop]\ncrop_height=3\ncrop_width=2\n\n[crnn]\noutput_filters=2\nhidden_filters=3\nshortcut=1\n{bn}",
}
SUBLAYERS = {
    "rnn": ["input", "self", "output"],
    "gru": ["wz", "wr", "wh", "uz", "ur", "uh"],
    "lstm": ["wi", "wf", "wo", "wg", "ui", "uf", "uo", "ug"],
    "crnn": ["input", "self", "output"],
}
HEAD = "\n[connected]\noutput=3\nactivation=linear\n\n[softmax]\n"


def cfg_text(kind: str, bn: int) -> str:
    size = "height=4\nwidth=5\nchannels=2" if kind == "crnn" else "inputs=5"
    return NET.format(size=size) + LAYERS[kind].format(bn=f"batch_normalize={bn}\n") + HEAD


@pytest.mark.parametrize("bn", [0, 1], ids=["plain", "batch_normalize"])
@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_recurrent_layers_decode_into_the_guests_arrays(tmp_path, capsys, monkeypatch, kind, bn):
    monkeypatch.setattr(buffers, "_budget", buffers.LIMIT_BYTES)
    path = tmp_path / f"{kind}.cfg"
    path.write_text(cfg_text(kind, bn))
    net = parse_network_cfg(str(path), batch=1)
    capsys.readouterr()
    rng = np.random.default_rng(5)
    guest = []
    for layer in net.layers:
        for a in layer.parameter_arrays():
            a[:] = array("f", rng.normal(0, 1, len(a)).astype(np.float32))
            guest.append(np.frombuffer(a, dtype=np.float32))
    data = weights_bytes(net)
    cfg = da.read_cfg(path)
    header, arrays = da.decode(cfg, data, str(path))
    assert len(arrays) == len(guest)
    for (name, ours), theirs in zip(arrays.items(), guest):
        np.testing.assert_array_equal(ours, theirs, err_msg=name)
    assert da.encode(cfg, header, arrays) == data
    subs = SUBLAYERS[kind]
    per_sub = 5 if bn else 2
    first = [n.split(".", 3)[2:] for n in arrays if n.startswith("000.")]
    assert [s for s, _ in first[::per_sub]] == subs
    if bn:
        tensors = [t for _, t in first[:per_sub]]
        expected = da.BN_CONV_ORDER if kind == "crnn" else ("biases", "weights", *da.BN_CONV_ORDER[1:4])
        assert tensors == list(expected)


def test_crop_changes_the_shape_the_next_layer_sees():
    """A 3x2 crop of a 4x5x2 image: the connected layer after it has 3*2*2 inputs per output."""
    text = "[net]\nheight=4\nwidth=5\nchannels=2\n\n[crop]\ncrop_height=3\ncrop_width=2\n\n"
    text += "[connected]\noutput=7\n"
    assert da.tensor_shapes(da.parse_cfg(text)) == [
        ("001.connected.biases", 7),
        ("001.connected.weights", 84),
    ]


def test_an_unknown_layer_is_refused_by_name():
    with pytest.raises(da.ArraysError, match=r"layer 0 is \[attention\]: not supported by the arrays codec"):
        da.tensor_shapes(da.parse_cfg("[net]\ninputs=4\n\n[attention]\noutput=2\n"))
