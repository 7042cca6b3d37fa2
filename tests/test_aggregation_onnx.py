"""`aggregation onnx` (docs/darknet-contract.md §8.2): averaging ONNX initializers whatever their storage."""

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import seed_file
from dlserver.main import main

SEED_MODELS = ["model/mnist_model_c1.onnx", "model/mnist_model_c2.onnx", "model/mnist_model_c3.onnx"]


@pytest.fixture
def tmp_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(capsys, *args):
    status = main(["dl-server", "aggregation", *args])
    out, err = capsys.readouterr()
    return status, out, err


def make_model(tensors, path, extra_nodes=()):
    """A model whose graph just passes X through and carries `tensors` as initializers."""
    node = helper.make_node("Identity", ["X"], ["Y"])
    graph = helper.make_graph(
        [node, *extra_nodes],
        "agg",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1])],
        list(tensors),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, str(path))
    return model


def initializers(path):
    m = onnx.load(str(path))
    return {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}, m


def float_tensor(name, values, raw):
    values = np.asarray(values, dtype=np.float32)
    if raw:
        return numpy_helper.from_array(values, name)
    return helper.make_tensor(name, TensorProto.FLOAT, values.shape, values.ravel().tolist())


def dyadic(rng, shape):
    """float32 values with few mantissa bits, so sums of small multiples are exact."""
    return (rng.integers(-1000, 1000, size=shape) / 64).astype(np.float32)


# The seed's case ------------------------------------------------------------------------------


def test_seed_models_average_like_the_original(tmp_cwd, capsys):
    paths = [str(seed_file(p)) for p in SEED_MODELS]
    status, out, err = run(capsys, "onnx", "out.onnx", *paths)
    assert status == 0, err
    assert out == (
        "model c1 loaded\nmodel c2 loaded\nmodel c3 loaded\nsave aggregation model to 'out.onnx' done!\n"
    )
    got, model = initializers(tmp_cwd / "out.onnx")
    onnx.checker.check_model(model)
    src, src_model = initializers(paths[0])
    assert list(got) == list(src)
    for name, x in src.items():
        if x.dtype == np.float32:
            expected = ((x + x) + x) / np.float32(3)
            np.testing.assert_array_equal(got[name], expected)
            mean = np.mean(np.stack([x, x, x]), axis=0, dtype=np.float32)
            assert np.all(np.abs(got[name] - mean) <= np.spacing(np.abs(mean)))  # within 1 ulp
        else:
            np.testing.assert_array_equal(got[name], x)
    # The storage is kept: float_data stays float_data, int64_data stays int64_data.
    for a, b in zip(src_model.graph.initializer, model.graph.initializer):
        assert a.HasField("raw_data") == b.HasField("raw_data")
        assert len(a.float_data) == len(b.float_data) and list(a.int64_data) == list(b.int64_data)
    assert len((tmp_cwd / "out.onnx").read_bytes()) == len(Path(paths[0]).read_bytes())


def test_single_model_is_copied_byte_for_byte(tmp_cwd, capsys):
    path = seed_file(SEED_MODELS[0])
    status, out, err = run(capsys, "onnx", "copy.onnx", str(path))
    assert status == 0, err
    assert out == "model c1 loaded\nsave aggregation model to 'copy.onnx' done!\n"
    assert (tmp_cwd / "copy.onnx").read_bytes() == path.read_bytes()


def test_single_raw_model_is_copied_byte_for_byte(tmp_cwd, capsys):
    rng = np.random.default_rng(1)
    make_model([float_tensor("w", rng.standard_normal((3, 4)), raw=True)], tmp_cwd / "m.onnx")
    assert run(capsys, "onnx", "o.onnx", "m.onnx")[0] == 0
    assert (tmp_cwd / "o.onnx").read_bytes() == (tmp_cwd / "m.onnx").read_bytes()


# Storage ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "storages",
    [(True, True, True), (False, True, False), (True, False, True)],
    ids=["raw", "mixed-float_data-first", "mixed-raw-first"],
)
def test_scaled_copies_average_to_exactly_2x(tmp_cwd, capsys, storages):
    rng = np.random.default_rng(2)
    w, b = dyadic(rng, (8, 5)), dyadic(rng, (8,))
    for k, raw in enumerate(storages, 1):
        make_model([float_tensor("w", k * w, raw), float_tensor("b", k * b, raw)], tmp_cwd / f"m{k}.onnx")
    status, out, err = run(capsys, "onnx", "avg.onnx", "m1.onnx", "m2.onnx", "m3.onnx")
    assert status == 0, err
    got, model = initializers(tmp_cwd / "avg.onnx")
    onnx.checker.check_model(model)
    np.testing.assert_array_equal(got["w"], 2 * w)
    np.testing.assert_array_equal(got["b"], 2 * b)
    src = onnx.load(str(tmp_cwd / "m1.onnx"))
    for a, t in zip(src.graph.initializer, model.graph.initializer):
        assert a.HasField("raw_data") == t.HasField("raw_data") == storages[0]
    # Everything but the values is m1's: rebuild m1 with the averaged values and compare bytes.
    for t in src.graph.initializer:
        arr = got[t.name]
        if t.HasField("raw_data"):
            t.raw_data = arr.tobytes()
        else:
            t.float_data[:] = arr.ravel().tolist()
    assert (tmp_cwd / "avg.onnx").read_bytes() == src.SerializeToString()


def test_float_mean_divides_like_the_original(tmp_cwd, capsys):
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((4, 7)).astype(np.float32) for _ in range(3)]
    for k, x in enumerate(xs, 1):
        make_model([float_tensor("w", x, raw=k != 2)], tmp_cwd / f"m{k}.onnx")
    assert run(capsys, "onnx", "avg.onnx", "m1.onnx", "m2.onnx", "m3.onnx")[0] == 0
    got, _ = initializers(tmp_cwd / "avg.onnx")
    expected = ((xs[0] + xs[1]) + xs[2]) / np.float32(3)  # division, not * f32(1/3)
    np.testing.assert_array_equal(got["w"], expected)


def _typed_tensors(k):
    """Tensors of each storage type with values depending on the model number k."""
    base = np.array([-7, -1, 0, 3, 100], dtype=np.int64)
    h = np.array([0.5, -1.25, 3.0, 1e-3], dtype=np.float16) * k
    return [
        numpy_helper.from_array((base * k).astype(np.int64), "i64_raw"),
        helper.make_tensor("i64_typed", TensorProto.INT64, [5], (base * k + 2**40).tolist()),
        helper.make_tensor("i32_typed", TensorProto.INT32, [5], (base * k).tolist()),
        numpy_helper.from_array(np.array([1, 2, 250, 0], dtype=np.uint8) // k, "u8_raw"),
        helper.make_tensor("u8_typed", TensorProto.UINT8, [4], [k, 2 * k, 250 // k, 0]),
        helper.make_tensor("i8_typed", TensorProto.INT8, [3], [-k, k, -100]),
        helper.make_tensor("bool_typed", TensorProto.BOOL, [3], [True, k != 2, False]),
        helper.make_tensor("u64_typed", TensorProto.UINT64, [2], [2**64 - k, k]),
        helper.make_tensor("f16_typed", TensorProto.FLOAT16, [4], h.tolist()),
        numpy_helper.from_array(h, "f16_raw"),
        helper.make_tensor("bf16_typed", TensorProto.BFLOAT16, [3], [1.5 * k, -0.25 * k, 3.0]),
        helper.make_tensor("f64_typed", TensorProto.DOUBLE, [3], [0.1 * k, -1.0 / k, 1e300]),
        numpy_helper.from_array(np.array([0.1 * k, 2.0], dtype=np.float64), "f64_raw"),
        helper.make_tensor("str", TensorProto.STRING, [1], [f"model {k}".encode()]),
    ]


def test_every_storage_type_is_averaged(tmp_cwd, capsys):
    models = [make_model(_typed_tensors(k), tmp_cwd / f"m{k}.onnx") for k in (1, 2, 3)]
    status, out, err = run(capsys, "onnx", "avg.onnx", "m1.onnx", "m2.onnx", "m3.onnx")
    assert status == 0, err
    got, model = initializers(tmp_cwd / "avg.onnx")
    onnx.checker.check_model(model)
    src = [{t.name: numpy_helper.to_array(t) for t in m.graph.initializer} for m in models]
    for name in got:
        xs = [s[name] for s in src]
        if name == "str":
            assert [str(v) for v in got[name].tolist()] == ["model 1"]
        elif xs[0].dtype.kind in "iub":
            sums = [sum(int(x.ravel()[i]) for x in xs) for i in range(xs[0].size)]
            expected = [abs(s) // 3 * (1 if s >= 0 else -1) for s in sums]  # C division
            assert [int(v) for v in got[name].ravel().tolist()] == expected, name
        elif name.startswith("f64"):
            np.testing.assert_array_equal(got[name], ((xs[0] + xs[1]) + xs[2]) / 3.0)
        else:  # 16-bit floats: float32 mean, rounded to nearest even
            f = [x.astype(np.float32) for x in xs]
            expected = ((f[0] + f[1]) + f[2]) / np.float32(3)
            np.testing.assert_array_equal(
                got[name].astype(np.float32), expected.astype(xs[0].dtype).astype(np.float32)
            )
    # Storage kept: f16 in int32_data stays there, raw stays raw.
    by_name = {t.name: t for t in model.graph.initializer}
    assert len(by_name["f16_typed"].int32_data) == 4 and not by_name["f16_typed"].raw_data
    assert by_name["f16_raw"].raw_data and len(by_name["i64_typed"].int64_data) == 5


# Weighted, median, trimmed --------------------------------------------------------------------


def _five_models(tmp_cwd, rng):
    xs = [rng.standard_normal((6, 5)).astype(np.float32) for _ in range(5)]
    ints = [rng.integers(-50, 50, size=4) for _ in range(5)]
    ds = [rng.standard_normal(3) for _ in range(5)]
    for k in range(5):
        make_model(
            [
                float_tensor("w", xs[k], raw=k % 2 == 0),
                helper.make_tensor("n", TensorProto.INT64, [4], ints[k].tolist()),
                numpy_helper.from_array(ds[k], "d"),
            ],
            tmp_cwd / f"m{k}.onnx",
        )
    return xs, ints, ds, [f"m{k}.onnx" for k in range(5)]


def test_weighted_mean(tmp_cwd, capsys):
    xs, ints, ds, paths = _five_models(tmp_cwd, np.random.default_rng(4))
    weights = [120.0, 30.0, 0.0, 50.0, 800.5]
    status, out, err = run(capsys, "onnx", "-weights", ",".join(str(w) for w in weights), "avg.onnx", *paths)
    assert status == 0, err
    got, _ = initializers(tmp_cwd / "avg.onnx")
    s = sum(weights)
    acc = np.zeros_like(xs[0])
    for w, x in zip(weights, xs):
        acc = acc + np.float32(w / s) * x
    np.testing.assert_array_equal(got["w"], acc)
    accd = np.zeros(3)
    for w, d in zip(weights, ds):
        accd = accd + (w / s) * d
    np.testing.assert_array_equal(got["d"], accd)
    from fractions import Fraction

    wf = [Fraction(w) for w in weights]
    exp_ints = [int(sum(Fraction(int(v[i])) * w for v, w in zip(ints, wf)) / sum(wf)) for i in range(4)]
    assert got["n"].tolist() == exp_ints


def test_weighted_identical_integers_stay_identical(tmp_cwd, capsys):
    for k in range(3):
        make_model([helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 256])], tmp_cwd / f"m{k}.onnx")
    assert run(capsys, "onnx", "avg.onnx", "m0.onnx", "m1.onnx", "m2.onnx", "-weights", "0.1,0.7,0.2")[0] == 0
    assert initializers(tmp_cwd / "avg.onnx")[0]["shape"].tolist() == [-1, 256]


@pytest.mark.parametrize("count", [5, 4])
def test_median(tmp_cwd, capsys, count):
    xs, ints, ds, paths = _five_models(tmp_cwd, np.random.default_rng(5))
    xs, ints, ds, paths = xs[:count], ints[:count], ds[:count], paths[:count]
    status, out, err = run(capsys, "onnx", "avg.onnx", *paths, "-method", "median")
    assert status == 0, err
    got, _ = initializers(tmp_cwd / "avg.onnx")
    np.testing.assert_array_equal(got["w"], np.median(np.stack(xs), axis=0).astype(np.float32))
    np.testing.assert_array_equal(got["d"], np.median(np.stack(ds), axis=0))
    srt = np.sort(np.stack(ints), axis=0)
    if count % 2:
        expected = srt[count // 2]
    else:
        expected = [int((int(a) + int(b)) / 2) for a, b in zip(srt[count // 2 - 1], srt[count // 2])]
    assert got["n"].tolist() == list(expected)


@pytest.mark.parametrize("fraction", ["0.2", "0.4", "0"])
def test_trimmed_mean(tmp_cwd, capsys, fraction):
    xs, ints, ds, paths = _five_models(tmp_cwd, np.random.default_rng(6))
    status, out, err = run(capsys, "onnx", "avg.onnx", *paths, "-method", f"trimmed:{fraction}")
    assert status == 0, err
    got, _ = initializers(tmp_cwd / "avg.onnx")
    k = int(float(fraction) * 5)
    kept = np.sort(np.stack(xs), axis=0)[k : 5 - k]
    acc = np.zeros_like(xs[0])
    for row in kept:
        acc = acc + row
    np.testing.assert_array_equal(got["w"], acc / np.float32(len(kept)))
    keptd = np.sort(np.stack(ds), axis=0)[k : 5 - k]
    accd = np.zeros(3)
    for row in keptd:
        accd = accd + row
    np.testing.assert_array_equal(got["d"], accd / len(keptd))
    kepti = np.sort(np.stack(ints), axis=0)[k : 5 - k]
    assert got["n"].tolist() == [int(int(s) / len(kepti)) for s in kepti.sum(axis=0)]


@pytest.mark.parametrize(
    "flags,message",
    [
        (["-weights", "1,2"], "2 weights for 3 models"),
        (["-weights", "1,x,2"], "not a comma-separated list"),
        (["-weights", "0,0,0"], "positive sum"),
        (["-method", "median", "-weights", "1,1,1"], "-weights applies to the mean"),
        (["-method", "trimmed:0.5"], "[0, 0.5)"),
        (["-method", "mode"], "unknown"),
    ],
)
def test_bad_flags(tmp_cwd, capsys, flags, message):
    for k in range(3):
        make_model([float_tensor("w", [1.0, 2.0], raw=True)], tmp_cwd / f"m{k}.onnx")
    status, out, err = run(capsys, "onnx", "avg.onnx", "m0.onnx", "m1.onnx", "m2.onnx", *flags)
    assert status == 1 and message in err and err.count("\n") == 1


# Mismatched and malformed models -----------------------------------------------------------------


@pytest.mark.parametrize(
    "second,message",
    [
        (
            [float_tensor("a", [1, 2, 3], True), float_tensor("c", [1, 2], True)],
            "m2.onnx: initializer 1 'c' is named 'c', m1.onnx has 'b'",
        ),
        (
            [float_tensor("a", [1, 2, 3], True), float_tensor("b", [1, 2, 3], True)],
            "m2.onnx: initializer 1 'b' has dims [3], m1.onnx has [2]",
        ),
        (
            [float_tensor("a", [1, 2, 3], True), numpy_helper.from_array(np.array([1.0, 2.0]), "b")],
            "m2.onnx: initializer 1 'b' has data type DOUBLE, m1.onnx has FLOAT",
        ),
        (
            [float_tensor("a", [1, 2, 3], True)],
            "m2.onnx: 1 initializers, m1.onnx has 2 (initializer 1 'b' is missing)",
        ),
        (
            [
                float_tensor("a", [1, 2, 3], True),
                float_tensor("b", [1, 2], True),
                float_tensor("z", [1], True),
            ],
            "m2.onnx: 3 initializers, m1.onnx has 2 (initializer 2 'z' is extra)",
        ),
    ],
    ids=["name", "dims", "dtype", "fewer", "more"],
)
def test_mismatched_models(tmp_cwd, capsys, second, message):
    make_model([float_tensor("a", [1, 2, 3], True), float_tensor("b", [1, 2], False)], tmp_cwd / "m1.onnx")
    make_model(second, tmp_cwd / "m2.onnx")
    status, out, err = run(capsys, "onnx", "avg.onnx", "m1.onnx", "m2.onnx")
    assert status == 1
    assert out == "model c1 loaded\nmodel c2 loaded\n"
    assert err == f"dl-server: error: {message}\n"
    assert not (tmp_cwd / "avg.onnx").exists()


def test_truncated_model(tmp_cwd, capsys):
    path = seed_file(SEED_MODELS[0])
    (tmp_cwd / "cut.onnx").write_bytes(path.read_bytes()[:20000])
    status, out, err = run(capsys, "onnx", "avg.onnx", str(path), "cut.onnx")
    assert status == 1
    assert (
        err.startswith("dl-server: error: cut.onnx: not a valid ONNX model:") and "runs past the end" in err
    )
    assert err.count("\n") == 1


def test_missing_and_empty_models(tmp_cwd, capsys):
    status, out, err = run(capsys, "onnx", "avg.onnx", "nope.onnx")
    assert status == 1 and err == "dl-server: error: nope.onnx: ONNX model not found\n" and out == ""
    (tmp_cwd / "empty.onnx").write_bytes(b"")
    status, out, err = run(capsys, "onnx", "avg.onnx", "empty.onnx")
    assert status == 1 and "empty.onnx: empty file" in err


def test_wrong_wire_type_in_a_model(tmp_cwd, capsys):
    (tmp_cwd / "bad.onnx").write_bytes(b"\x08\x03\x38\x01")  # ir_version 3, graph as a varint
    status, out, err = run(capsys, "onnx", "avg.onnx", "bad.onnx")
    assert status == 1
    assert err == (
        "dl-server: error: bad.onnx: not a valid ONNX model: field 7 (graph) has wire type"
        " varint, expected length-delimited\n"
    )


def test_usage(tmp_cwd, capsys):
    status, out, err = run(capsys, "onnx", "avg.onnx")
    assert status == 1 and "usage:" in err and "aggregation onnx" in err
    status, out, err = run(capsys, "nope", "x")
    assert status == 1 and "Not an option under aggregation: nope" in err


def test_unknown_fields_are_kept(tmp_cwd, capsys):
    from reference.wire import encode_len_field

    rng = np.random.default_rng(7)
    for k in (1, 2):
        make_model([float_tensor("w", dyadic(rng, (3,)) * k, raw=True)], tmp_cwd / f"m{k}.onnx")
    data = (tmp_cwd / "m1.onnx").read_bytes() + encode_len_field(1000, b"vendor extension")
    (tmp_cwd / "m1.onnx").write_bytes(data)
    assert run(capsys, "onnx", "avg.onnx", "m1.onnx", "m2.onnx")[0] == 0
    out = (tmp_cwd / "avg.onnx").read_bytes()
    assert out.endswith(encode_len_field(1000, b"vendor extension"))
    assert len(out) == len(data)
