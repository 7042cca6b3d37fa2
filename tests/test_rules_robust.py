"""Robust rules of `aggregation darknet|onnx -method` (dlserver.rules, averaging): Krum,
MultiKrum, Bulyan, FedMedian, FedTrimmedAvg against Flower 1.42's strategies on the same
arrays; geomed (not in Flower) against a direct Weiszfeld iteration."""

import numpy as np
import pytest

from test_rules_common import (
    assert_f32_close,
    assert_refused,
    clients,
    darknet_inputs,
    flower,
    flower_aggregate,
    ours_darknet,
    ours_onnx,
    run,
)

CASES = [  # (n, f, outliers, duplicates, quantized)
    (5, 1, 1, 0, False),  # the smallest n for f = 1 (Krum: n >= 2f + 3)
    (3, 0, 0, 0, False),
    (8, 2, 2, 1, False),
    (10, 2, 2, 2, True),
]


@pytest.mark.parametrize("n, f, outliers, duplicates, quantized", CASES)
def test_krum_is_flowers(tmp_path, monkeypatch, capsys, n, f, outliers, duplicates, quantized):
    monkeypatch.chdir(tmp_path)
    flower()
    from flwr.serverapp.strategy import Krum

    rng = np.random.default_rng(n * 10 + f)
    models = clients(rng, n, outliers, duplicates, quantized)
    theirs = flower_aggregate(Krum(num_malicious_nodes=f), models)
    ours, stdout = ours_darknet(capsys, tmp_path, models, f"krum:{f}")
    np.testing.assert_array_equal(ours, theirs)
    assert f"krum f={f}: selected c" in stdout
    onnx_ours, _ = ours_onnx(capsys, tmp_path, models, f"krum:{f}", raw="alternate")
    np.testing.assert_array_equal(onnx_ours, theirs)


@pytest.mark.parametrize("n, f, outliers, duplicates, quantized", CASES)
@pytest.mark.parametrize("weighted", [False, True])
def test_multikrum_is_flowers(tmp_path, monkeypatch, capsys, n, f, outliers, duplicates, quantized, weighted):
    monkeypatch.chdir(tmp_path)
    flower()
    from flwr.serverapp.strategy import MultiKrum

    rng = np.random.default_rng(n * 10 + f + 1)
    models = clients(rng, n, outliers, duplicates, quantized)
    m = n - f
    examples = [int(e) for e in rng.integers(10, 500, size=n)] if weighted else None
    theirs = flower_aggregate(MultiKrum(num_malicious_nodes=f, num_nodes_to_select=m), models, examples)
    flags = ["-weights", ",".join(map(str, examples))] if weighted else []
    ours, _ = ours_darknet(capsys, tmp_path, models, f"multikrum:{f}:{m}", *flags)
    np.testing.assert_array_equal(ours, theirs)
    onnx_ours, _ = ours_onnx(capsys, tmp_path, models, f"multikrum:{f}:{m}", *flags, raw="mixed")
    np.testing.assert_array_equal(onnx_ours, theirs)


@pytest.mark.parametrize(
    "n, f, outliers, duplicates",
    [(7, 1, 1, 0), (3, 0, 0, 0), (11, 2, 2, 1), (12, 2, 1, 2)],  # 7 = 4f + 3: the smallest n
)
def test_bulyan_is_flowers(tmp_path, monkeypatch, capsys, n, f, outliers, duplicates):
    monkeypatch.chdir(tmp_path)
    flower()
    from flwr.serverapp.strategy import Bulyan

    rng = np.random.default_rng(n * 10 + f + 2)
    models = clients(rng, n, outliers, duplicates)
    theirs = flower_aggregate(Bulyan(num_malicious_nodes=f), models)
    ours, stdout = ours_darknet(capsys, tmp_path, models, f"bulyan:{f}")
    assert_f32_close(ours, theirs, models)
    assert f"bulyan f={f}: selected" in stdout
    onnx_ours, _ = ours_onnx(capsys, tmp_path, models, f"bulyan:{f}", raw=False)
    np.testing.assert_array_equal(onnx_ours, ours)


@pytest.mark.parametrize(
    "n, outliers, duplicates, quantized", [(1, 0, 0, False), (4, 1, 1, True), (9, 2, 0, True)]
)
def test_median_is_fedmedian(tmp_path, monkeypatch, capsys, n, outliers, duplicates, quantized):
    monkeypatch.chdir(tmp_path)
    flower()
    from flwr.serverapp.strategy import FedMedian

    rng = np.random.default_rng(n + 3)
    models = clients(rng, n, outliers, duplicates, quantized)
    theirs = flower_aggregate(FedMedian(), models)
    ours, _ = ours_darknet(capsys, tmp_path, models, "median")
    assert_f32_close(ours, theirs, models, ulps=1)
    onnx_ours, _ = ours_onnx(capsys, tmp_path, models, "median", raw="mixed")
    assert_f32_close(onnx_ours, theirs, models, ulps=1)


@pytest.mark.parametrize("n, beta", [(5, 0.2), (4, 0.0), (10, 0.3), (9, 0.49)])
def test_trimmed_is_fedtrimmedavg(tmp_path, monkeypatch, capsys, n, beta):
    monkeypatch.chdir(tmp_path)
    flower()
    from flwr.serverapp.strategy import FedTrimmedAvg

    rng = np.random.default_rng(n + 4)
    models = clients(rng, n, outliers=int(beta * n), duplicates=1, quantized=True)
    theirs = flower_aggregate(FedTrimmedAvg(beta=beta), models)
    ours, _ = ours_darknet(capsys, tmp_path, models, f"trimmed:{beta}")
    assert_f32_close(ours, theirs, models, ulps=2 * n)
    onnx_ours, _ = ours_onnx(capsys, tmp_path, models, f"trimmed:{beta}", raw=False)
    assert_f32_close(onnx_ours, theirs, models, ulps=2 * n)


def weiszfeld(models, weights, iterations=2000):
    """The geometric median by Weiszfeld's iteration directly on the vectors (float64)."""
    x = np.stack(models).astype(np.float64)
    w = np.asarray(weights, np.float64)
    z = (w[:, None] * x).sum(0) / w.sum()
    for _ in range(iterations):
        d = np.maximum(np.linalg.norm(x - z, axis=1), 1e-12)
        z_new = ((w / d)[:, None] * x).sum(0) / (w / d).sum()
        if np.linalg.norm(z_new - z) < 1e-12 * np.linalg.norm(z):
            return z_new
        z = z_new
    return z


@pytest.mark.parametrize("n, outliers, weights", [(3, 1, None), (6, 2, None), (7, 3, [1, 2, 3, 1, 2, 3, 1])])
def test_geomed_is_the_geometric_median(tmp_path, monkeypatch, capsys, n, outliers, weights):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(n + 5)
    models = clients(rng, n, outliers)
    flags = ["-weights", ",".join(map(str, weights))] if weights else []
    ours, stdout = ours_darknet(capsys, tmp_path, models, "geomed", *flags)
    expected = weiszfeld(models, weights or [1] * n)
    scale = np.abs(np.stack(models[: n - outliers])).max()
    np.testing.assert_allclose(ours, expected, atol=1e-5 * scale, rtol=0)
    assert "Weiszfeld iterations" in stdout
    # the outliers barely move it, unlike the mean
    honest_mean = np.mean(models[: n - outliers], axis=0)
    assert np.linalg.norm(ours - honest_mean) < 0.2 * np.linalg.norm(np.mean(models, axis=0) - honest_mean)


def test_geomed_of_one_coordinate_is_the_median(tmp_path, monkeypatch, capsys):
    """In one dimension (all models equal but one coordinate) the geometric median is the median."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(9)
    base = rng.normal(size=clients(rng, 1)[0].size).astype(np.float32)
    models = []
    for v in [0.0, 1.0, 5.0, 100.0, -3.0]:
        m = base.copy()
        m[7] = v
        models.append(m)
    ours, _ = ours_darknet(capsys, tmp_path, models, "geomed")
    assert abs(ours[7] - 1.0) < 1e-5
    np.testing.assert_allclose(np.delete(ours, 7), np.delete(base, 7), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "method, n, flags, message",
    [
        ("krum:2", 6, [], "-method krum:2: krum needs n >= 2F + 3 = 7 models, got 6"),
        ("multikrum:1:6", 5, [], "-method multikrum:1:6: M (models selected) must be an integer in 1..5"),
        ("bulyan:1", 6, [], "-method bulyan:1: bulyan needs n >= 4F + 3 = 7 models, got 6"),
        (
            "bulyan:1",
            7,
            ["-weights", "1,1,1,1,1,1,1"],
            "-weights applies to the mean, not to -method bulyan:1",
        ),
        ("krum:-1", 5, [], "-method krum:-1: F (the number of Byzantine clients) must be an integer >= 0"),
        ("krum:0.5", 5, [], "-method krum:0.5: F (the number of Byzantine clients) must be an integer >= 0"),
        ("krum", 5, [], "-method krum: expected krum:F with numbers"),
        ("geomed:3", 5, [], "-method geomed:3: expected geomed with numbers"),
        ("trimmed:0.5", 5, [], "-method trimmed:0.5: the trimmed fraction must be in [0, 0.5)"),
        ("trimmed:-0.1", 5, [], "-method trimmed:-0.1: the trimmed fraction must be in [0, 0.5)"),
        ("krum:1", 5, ["-seed", "3"], "-seed applies to the dp rules, not to -method krum"),
        ("krum:1", 5, ["-global", "c1.weights"], "-global applies to the optimisers and dp rules"),
        ("median", 5, ["-state-out", "s"], "-state and -state-out apply to the optimisers and dpadaptive"),
    ],
)
def test_bad_parameters_one_line_no_output(tmp_path, monkeypatch, capsys, method, n, flags, message):
    monkeypatch.chdir(tmp_path)
    paths = darknet_inputs(tmp_path, clients(np.random.default_rng(0), n))
    args = ["darknet", "rule.cfg", "out.weights", *paths, "-method", method, *flags]
    assert_refused(capsys, tmp_path, args, message, ["out.weights", "s"])


def test_onnx_whole_model_rules_refuse_differing_integer_tensors(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    import onnx
    from onnx import numpy_helper

    from test_rules_common import onnx_model

    rng = np.random.default_rng(1)
    models = clients(rng, 5)
    for i, m in enumerate(models):
        onnx_model(m, tmp_path / f"c{i + 1}.onnx", True)
    third = onnx.load(str(tmp_path / "c3.onnx"))
    third.graph.initializer[-1].CopyFrom(numpy_helper.from_array(np.array([2, -1], np.int64), "shape"))
    onnx.save(third, str(tmp_path / "c3.onnx"))
    status, out, err = run(
        capsys, "onnx", "out.onnx", *[f"c{i + 1}.onnx" for i in range(5)], "-method", "krum:1"
    )
    assert status != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith(
        "c3.onnx: initializer 4 'shape' differs from c1.onnx's; whole-model rules combine float"
        " tensors only and need every other initializer equal"
    ), err
    assert not (tmp_path / "out.onnx").exists()


def test_onnx_float16_tensors_take_part(tmp_path, monkeypatch, capsys):
    """FLOAT16 initializers are widened, combined with the rest and rounded back: Krum's
    choice comes back bit for bit, the geometric median lands between the models."""
    monkeypatch.chdir(tmp_path)
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(2)
    halves = [rng.normal(size=(4, 4)).astype(np.float16) for _ in range(5)]
    halves[4] = (halves[4] * 100).astype(np.float16)
    for i, h in enumerate(halves):
        tensors = [numpy_helper.from_array(h, "h"), numpy_helper.from_array(h.astype(np.float32) * 2, "f")]
        graph = helper.make_graph(
            [helper.make_node("Identity", ["X"], ["Y"])],
            "f16",
            [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1])],
            tensors,
        )
        onnx.save(
            helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]),
            str(tmp_path / f"c{i}.onnx"),
        )
    paths = [f"c{i}.onnx" for i in range(5)]
    status, out, err = run(capsys, "onnx", "krum.onnx", *paths, "-method", "krum:1")
    assert status == 0, err
    chosen = int(out.split("selected c")[1].split()[0]) - 1
    got = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "krum.onnx")).graph.initializer}
    assert got["h"].dtype == np.float16 and got["h"].tobytes() == halves[chosen].tobytes()
    assert chosen != 4
    status, _, err = run(capsys, "onnx", "geo.onnx", *paths, "-method", "geomed")
    assert status == 0, err
    geo = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "geo.onnx")).graph.initializer}
    assert geo["h"].dtype == np.float16 and np.abs(geo["h"]).max() < 10
