"""Differential privacy inside the sandbox (`-method dpfixed|dpadaptive`, dlserver.rules):
with the noise off, the clipped mean equals Flower 1.42's DifferentialPrivacyServerSide*Clipping
around FedAvg; with the noise on, its empirical std is the target's within 5%; the noise is
secret (os.urandom) unless -seed makes it reproducible, and then the output says so."""

import math

import numpy as np
import pytest

from test_rules_common import (
    assert_f32_close,
    assert_refused,
    clients,
    darknet_inputs,
    flat_of,
    flower,
    ours_darknet,
    reply,
    split,
)


def flower_global(strategy, flat):
    from flwr.app import Array, ArrayRecord

    strategy.current_arrays = ArrayRecord(
        {f"t{i}": Array(np.ascontiguousarray(a)) for i, a in enumerate(split(flat))}
    )


def spread_clients(rng, glob, n):
    """Updates of norms 0.5 .. 8 (the clip norms below cut some, not all)."""
    out = []
    for i in range(n):
        u = rng.normal(size=glob.size)
        out.append((glob + u / np.linalg.norm(u) * (0.5 + 1.5 * i)).astype(np.float32))
    return out


@pytest.mark.parametrize("n, clip, weighted", [(4, 3.0, False), (6, 1.0, True), (3, 100.0, False)])
def test_fixed_clipping_without_noise_is_flowers(tmp_path, monkeypatch, capsys, n, clip, weighted):
    monkeypatch.chdir(tmp_path)
    flower()
    from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg

    rng = np.random.default_rng(n)
    glob = rng.normal(size=clients(rng, 1)[0].size).astype(np.float32)
    models = spread_clients(rng, glob, n)
    examples = [int(e) for e in rng.integers(1, 50, size=n)] if weighted else [1] * n
    strategy = DifferentialPrivacyServerSideFixedClipping(FedAvg(), 0.0, clip, n)
    flower_global(strategy, glob)
    arrays, _ = strategy.aggregate_train(1, [reply(m, e) for m, e in zip(models, examples)])
    theirs = flat_of(arrays)
    flags = ["-weights", ",".join(map(str, examples))] if weighted else []
    ours, out = ours_darknet(capsys, tmp_path, models, f"dpfixed:0:{clip}", *flags, glob=glob)
    assert_f32_close(ours, theirs, [glob, *models], ulps=4)
    clipped = sum(np.linalg.norm(m.astype(np.float64) - glob) > clip for m in models)
    assert (
        f"dpfixed: round 1, noise multiplier 0, clip {clip:g}, clipped {clipped} of {n}, noise std 0" in out
    )


def test_adaptive_clipping_without_noise(tmp_path, monkeypatch, capsys):
    """Round 1 clips with C0 as Flower's wrapper does; the next clip follows Andrew et al.'s rule
    C' = C exp(-lr (unclipped fraction - quantile)) and round 2 clips with C' from the state."""
    monkeypatch.chdir(tmp_path)
    flower()
    from flwr.serverapp.strategy import DifferentialPrivacyServerSideAdaptiveClipping, FedAvg

    n, c0, quantile, lr = 5, 2.0, 0.5, 0.2
    rng = np.random.default_rng(11)
    glob = rng.normal(size=clients(rng, 1)[0].size).astype(np.float32)
    clip = c0
    for rnd in (1, 2):
        models = spread_clients(rng, glob, n)
        strategy = DifferentialPrivacyServerSideAdaptiveClipping(
            FedAvg(), 0.0, n, initial_clipping_norm=clip, target_clipped_quantile=quantile, clip_norm_lr=lr
        )
        flower_global(strategy, glob)
        arrays, _ = strategy.aggregate_train(rnd, [reply(m) for m in models])
        theirs = flat_of(arrays)
        state = ["-state", f"s{rnd - 1}"] if rnd > 1 else []
        ours, out = ours_darknet(
            capsys,
            tmp_path,
            models,
            f"dpadaptive:0:{c0}:{quantile}:{lr}",
            *state,
            "-state-out",
            f"s{rnd}",
            glob=glob,
        )
        assert_f32_close(ours, theirs, [glob, *models], ulps=4)
        unclipped = sum(np.linalg.norm(m.astype(np.float64) - glob) <= clip for m in models)
        assert f"clip {clip:g}, clipped {n - unclipped} of {n}" in out
        clip = clip * math.exp(-lr * (unclipped / n - quantile))
        assert f"dpadaptive: next clip {clip:g}" in out
        glob = ours


def noise_of(tmp_path, capsys, method, seed, n=4):
    """The noise the rule adds: clients equal to the global model, so the mean is the global."""
    rng = np.random.default_rng(0)
    glob = rng.normal(size=clients(rng, 1)[0].size).astype(np.float32)
    models = [glob.copy() for _ in range(n)]
    flags = ["-seed", str(seed)] if seed is not None else []
    if method.startswith("dpadaptive"):
        flags += ["-state-out", "s1"]
        (tmp_path / "s1").unlink(missing_ok=True)
    ours, out = ours_darknet(capsys, tmp_path, models, method, *flags, glob=glob)
    return ours.astype(np.float64) - glob, out


@pytest.mark.parametrize(
    "method, target",
    [
        ("dpfixed:1.0:2.0", 1.0 * 2.0 / 4),
        ("dpfixed:0.3:0.5", 0.3 * 0.5 / 4),
        # z' = (z^-2 - (2 sigma_b)^-2)^-1/2 with sigma_b = 1.0: the count takes part of the budget
        ("dpadaptive:1.0:2.0:0.5:0.2:1.0", (1.0 - 0.25) ** -0.5 * 2.0 / 4),
    ],
)
def test_noise_std_is_the_target(tmp_path, monkeypatch, capsys, method, target):
    monkeypatch.chdir(tmp_path)
    noise = np.concatenate([noise_of(tmp_path, capsys, method, seed)[0] for seed in range(6)])
    assert abs(noise.std() / target - 1) < 0.05
    assert abs(noise.mean()) < 0.05 * target
    # Gaussian: about 68.3% within one std
    assert abs(np.mean(np.abs(noise) < target) - 0.6827) < 0.02


def test_seeded_noise_is_reproducible_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    a, out = noise_of(tmp_path, capsys, "dpfixed:1:1", 5)
    b, _ = noise_of(tmp_path, capsys, "dpfixed:1:1", 5)
    c, _ = noise_of(tmp_path, capsys, "dpfixed:1:1", 6)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert "dpfixed: noise seeded with -seed 5: reproducible, NOT private" in out
    assert "dpfixed: round 1, noise multiplier 1, clip 1, clipped 0 of 4, noise std 0.25" in out


def test_unseeded_noise_comes_from_the_secure_source(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    a, out = noise_of(tmp_path, capsys, "dpfixed:1:1", None)
    b, _ = noise_of(tmp_path, capsys, "dpfixed:1:1", None)
    assert not np.array_equal(a, b)
    assert "NOT private" not in out


@pytest.mark.parametrize(
    "method, flags, message",
    [
        ("dpfixed:1:-1", [], "-method dpfixed:1:-1: the clip norm must be > 0"),
        ("dpfixed:-1:1", [], "-method dpfixed:-1:1: the noise multiplier must be >= 0"),
        ("dpfixed:1", [], "-method dpfixed:1: expected dpfixed:NOISE_MULTIPLIER:CLIP with numbers"),
        ("dpadaptive:1:1:1.5:0.2", ["-state-out", "s"], "QUANTILE must be in [0, 1]"),
        ("dpadaptive:1:1:0.5:0.2", ["-state-out", "s"], "the noise multiplier must be < 2 * COUNT_STD = 0.4"),
        ("dpadaptive:0:1:0.5:0.2", ["-state", "missing", "-state-out", "s"], "missing: state file not found"),
        ("dpfixed:1:1", ["-seed", "x"], "-seed x: not an integer"),
    ],
)
def test_bad_parameters_one_line_no_output(tmp_path, monkeypatch, capsys, method, flags, message):
    monkeypatch.chdir(tmp_path)
    models = clients(np.random.default_rng(2), 4)
    paths = darknet_inputs(tmp_path, models, glob=models[0])
    args = ["darknet", "rule.cfg", "out.weights", *paths, "-method", method, "-global", "g.weights", *flags]
    assert_refused(capsys, tmp_path, args, message, ["out.weights", "s"])


def test_adaptive_clip_grows_when_every_update_is_clipped(tmp_path, monkeypatch, capsys):
    """Andrew et al.: too many clipped updates raise the clip. Flower 1.42's wrapper counts the
    clipped ones and lowers it (1 -> exp(-0.1) here); ours goes to exp(+0.1)."""
    monkeypatch.chdir(tmp_path)
    flower()
    from flwr.serverapp.strategy import DifferentialPrivacyServerSideAdaptiveClipping, FedAvg

    glob = np.zeros(clients(np.random.default_rng(0), 1)[0].size, np.float32)
    models = [np.ones_like(glob) for _ in range(4)]
    strategy = DifferentialPrivacyServerSideAdaptiveClipping(
        FedAvg(), 0.0, 4, initial_clipping_norm=1.0, target_clipped_quantile=0.5, clip_norm_lr=0.2
    )
    flower_global(strategy, glob)
    strategy.aggregate_train(1, [reply(m) for m in models])
    assert strategy.clipping_norm == pytest.approx(math.exp(-0.1))
    _, out = ours_darknet(capsys, tmp_path, models, "dpadaptive:0:1:0.5:0.2", "-state-out", "s1", glob=glob)
    assert f"dpadaptive: next clip {math.exp(0.1):g}" in out
