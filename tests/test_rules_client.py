"""The client's side (`classifier train -prox MU GLOBAL.weights`, `-clip C`; dlserver.client_rules):
one FedProx step moves the weights by -lr * mu * (w - w_global) more than plain SGD, mu = 0
changes no byte, and the clipped update equals Flower 1.42's compute_clip_model_update."""

import shutil

import numpy as np
import pytest

from test_rules_common import assert_f32_close, flower
from test_training import lenet_cfg, tiny, train

__all__ = ["tiny"]  # the fixture, used by name

LR = 0.01  # mnist_lenet.cfg's learning_rate (policy constant below)


@pytest.fixture
def start(tiny, capsys):
    """A one-step cfg and a trained starting model (model/w0.weights)."""
    (tiny / "cfg" / "tiny.cfg").write_text(
        lenet_cfg(max_batches=3, policy="constant").replace("output= 10", "output= 4")
    )
    assert train(capsys, "-seed", "1")[0] == 0
    shutil.copy(tiny / "model" / "tiny.weights", tiny / "model" / "w0.weights")
    (tiny / "cfg" / "tiny.cfg").write_text(
        lenet_cfg(max_batches=1, policy="constant").replace("output= 10", "output= 4")
    )
    return tiny


def floats(path):
    data = path.read_bytes()
    return data[:20], np.frombuffer(data[20:], np.float32).astype(np.float64)


def one_step(capsys, tiny, name, *flags):
    status, out, err = train(capsys, "model/w0.weights", "-clear", "-seed", "3", *flags)
    assert status == 0, err
    shutil.copy(tiny / "model" / "tiny.weights", tiny / "model" / name)
    return floats(tiny / "model" / name)[1], out


def test_prox_step_is_the_analytic_one(start, capsys):
    header, w0 = floats(start / "model" / "w0.weights")
    g = w0 + np.random.default_rng(5).normal(scale=0.05, size=w0.size)
    (start / "model" / "g.weights").write_bytes(header + g.astype(np.float32).tobytes())
    g = g.astype(np.float32).astype(np.float64)
    plain, _ = one_step(capsys, start, "plain.weights")
    for mu in (0.1, 1.0):
        prox, _ = one_step(capsys, start, f"prox{mu}.weights", "-prox", str(mu), "model/g.weights")
        expected = -LR * mu * (w0 - g)
        np.testing.assert_allclose(prox - plain, expected, rtol=1e-3, atol=2e-7 * np.abs(w0).max())
        assert np.abs(prox - plain).max() > 1e-4  # the term is not lost in rounding


def test_prox_zero_changes_no_byte(start, capsys):
    one_step(capsys, start, "plain.weights")
    one_step(capsys, start, "zero.weights", "-prox", "0", "model/w0.weights")
    assert (start / "model" / "plain.weights").read_bytes() == (start / "model" / "zero.weights").read_bytes()


def test_client_clipping_is_flowers(start, capsys):
    flower()
    from flwr.supercore.differential_privacy import compute_clip_model_update

    _, w0 = floats(start / "model" / "w0.weights")
    plain, _ = one_step(capsys, start, "plain.weights")
    norm = float(np.linalg.norm(plain - w0))
    clip = norm / 3
    clipped, out = one_step(capsys, start, "clipped.weights", "-clip", repr(clip))
    theirs = [plain.astype(np.float32)]
    compute_clip_model_update(theirs, [w0.astype(np.float32)], clip)
    assert_f32_close(clipped.astype(np.float32), theirs[0], [w0, plain], ulps=4)
    assert abs(np.linalg.norm(clipped - w0) - clip) < 1e-4 * clip
    assert f"client clipping: update norm {norm:g}, clip {clip:g}, scaled by" in out
    # a clip above the norm keeps the trained weights
    same, _ = one_step(capsys, start, "same.weights", "-clip", repr(norm * 2))
    np.testing.assert_allclose(same, plain, rtol=0, atol=1e-6 * np.abs(plain).max())


@pytest.mark.parametrize(
    "flags, message",
    [
        (["model/w0.weights", "-clip", "-1"], "-clip -1: the clip norm must be a number > 0"),
        (["model/w0.weights", "-prox", "x", "model/w0.weights"], "-prox x: MU must be a number >= 0"),
        (["model/w0.weights", "-prox", "-0.5", "model/w0.weights"], "-prox -0.5: MU must be a number >= 0"),
        (["-clip", "1"], "-clip needs the weights training starts from"),
        (["model/w0.weights", "-prox", "0.1", "model/nowhere.weights"], "model/nowhere.weights"),
    ],
)
def test_bad_flags_one_line_no_output(start, capsys, flags, message):
    (start / "model" / "tiny.weights").unlink()
    status, out, err = train(capsys, *flags)
    assert status != 0
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and message in errors[0], err
    assert not (start / "model" / "tiny.weights").exists()
