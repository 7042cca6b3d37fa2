"""Shared by tests/test_rules_*.py (no tests here): Flower 1.42 as the oracle of the
aggregation rules (its strategies' own aggregate_train, called on the same arrays as our
`aggregation darknet|onnx`) and the client sets those tests feed both (outliers, ties, the
smallest allowed n)."""

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from dlserver.main import main

# LeNet-like tensor sizes (a conv's biases and weights, a connected layer's): Flower sees the
# model as these arrays, we as a weights file or ONNX initializers of the same floats.
SHAPES = [(8,), (8, 1, 5, 5), (10,), (10, 200)]
SIZE = sum(int(np.prod(s)) for s in SHAPES)
HEADER = np.array([0, 2, 0, 1234, 0], dtype=np.int32).tobytes()  # major, minor, revision, seen (8 bytes)
CFG = """[net]
batch=1
height=10
width=10
channels=1

[convolutional]
filters=8
size=5
stride=1
pad=2
activation=relu

[maxpool]
size=2
stride=2

[connected]
output=10
activation=linear
"""


def flower():
    """The flwr package, or skip where it is missing (fail under DL_SERVER_REQUIRE_ORACLE=1, as
    tests/darknet_oracle.py: CI installs it)."""
    try:
        import flwr
    except ImportError:
        if os.environ.get("DL_SERVER_REQUIRE_ORACLE") == "1":
            pytest.fail("DL_SERVER_REQUIRE_ORACLE=1 but flwr (Flower 1.42) is not installed")
        pytest.skip("flwr (Flower 1.42, the oracle of the aggregation rules) is not installed")
    from flwr.supercore.task_identity import TaskIdentity

    # Messages built outside a running app need a run and node identity.
    TaskIdentity.run_id = 1
    TaskIdentity.node_id = 1
    TaskIdentity.task_id = 1
    return flwr


def split(flat):
    out, at = [], 0
    for s in SHAPES:
        n = int(np.prod(s))
        out.append(flat[at : at + n].reshape(s))
        at += n
    return out


def reply(flat, examples=1):
    """A client's train reply as Flower's strategies expect it."""
    from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

    arrays = ArrayRecord({f"t{i}": Array(np.ascontiguousarray(a)) for i, a in enumerate(split(flat))})
    content = RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": examples})})
    return Message(content=content, dst_node_id=1, message_type="train")


def flat_of(record):
    return np.concatenate([a.numpy().ravel() for a in record.values()]).astype(np.float32, copy=False)


def flower_aggregate(strategy, clients, examples=None, rnd=1):
    """strategy.aggregate_train on the clients' flat float32 models -> a flat array."""
    examples = examples or [1] * len(clients)
    arrays, _ = strategy.aggregate_train(rnd, [reply(c, e) for c, e in zip(clients, examples)])
    assert arrays is not None
    return flat_of(arrays)


def clients(rng, n, outliers=0, duplicates=0, quantized=False, base=None):
    """n client models around one base: spread growing with the index (distinct Krum scores),
    `outliers` scaled or sign-flipped ones at the end, `duplicates` copies of client 0 after it."""
    base = rng.normal(size=SIZE).astype(np.float32) if base is None else base
    out = []
    for i in range(n):
        c = base + rng.normal(scale=0.05 * (1 + i / 2), size=SIZE).astype(np.float32)
        if quantized:
            c = np.round(c * 8) / 8
        out.append(c.astype(np.float32))
    for k in range(duplicates):
        out[1 + k] = out[0].copy()
    for k in range(outliers):
        j = n - 1 - k
        out[j] = (-10 * out[j] if k % 2 == 0 else 50 * out[j] + 3).astype(np.float32)
    return out


# Our side ---------------------------------------------------------------------------------


def run(capsys, *argv):
    status = main(["dl-server", "aggregation", *argv])
    out, err = capsys.readouterr()
    return status, out, err


def write_weights(path, flat):
    path.write_bytes(HEADER + np.asarray(flat, np.float32).tobytes())


def read_weights(path):
    data = path.read_bytes()
    return data[:20], np.frombuffer(data[20:], np.float32)


def ours_darknet(capsys, tmp, models, method, *flags, glob=None):
    """`aggregation darknet` of the flat models with -method; the output's floats and stdout."""
    (tmp / "rule.cfg").write_text(CFG)
    paths = []
    for i, m in enumerate(models):
        write_weights(tmp / f"c{i + 1}.weights", m)
        paths.append(f"c{i + 1}.weights")
    extra = []
    if glob is not None:
        write_weights(tmp / "global.weights", glob)
        extra = ["-global", "global.weights"]
    out = tmp / "out.weights"
    if out.exists():
        out.unlink()
    status, stdout, err = run(
        capsys, "darknet", "rule.cfg", "out.weights", *paths, "-method", method, *extra, *flags
    )
    assert status == 0, err
    header, values = read_weights(out)
    assert header == HEADER
    return values, stdout


def onnx_model(flat, path, raw, extra=True):
    """The flat model as FLOAT initializers (raw_data, float_data or mixed) and an int64 shape
    initializer (kept from c1: whole-model rules combine float tensors only)."""
    tensors = []
    for i, a in enumerate(split(flat)):
        if raw is True or (raw == "mixed" and i % 2 == 0):
            tensors.append(numpy_helper.from_array(a, f"t{i}"))
        else:
            tensors.append(helper.make_tensor(f"t{i}", TensorProto.FLOAT, a.shape, a.ravel().tolist()))
    if extra:
        tensors.append(numpy_helper.from_array(np.array([1, -1], np.int64), "shape"))
    node = helper.make_node("Reshape", ["X", "shape"], ["Y"])
    graph = helper.make_graph(
        [node],
        "rules",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 2])],
        tensors,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))


def ours_onnx(capsys, tmp, models, method, *flags, raw=True, glob=None):
    paths = []
    for i, m in enumerate(models):
        storage = raw if raw != "alternate" else (i % 2 == 0)
        onnx_model(m, tmp / f"c{i + 1}.onnx", storage)
        paths.append(f"c{i + 1}.onnx")
    extra = []
    if glob is not None:
        onnx_model(glob, tmp / "global.onnx", False)
        extra = ["-global", "global.onnx"]
    status, stdout, err = run(capsys, "onnx", "out.onnx", *paths, "-method", method, *extra, *flags)
    assert status == 0, err
    out = onnx.load(str(tmp / "out.onnx"))
    first = onnx.load(str(tmp / "c1.onnx"))
    # everything but the float values is c1's: names, storage fields, the int64 tensor, the graph
    assert [t.name for t in out.graph.initializer] == [t.name for t in first.graph.initializer]
    for a, b in zip(out.graph.initializer, first.graph.initializer):
        assert bool(a.raw_data) == bool(b.raw_data) and len(a.float_data) == len(b.float_data)
        if b.data_type != TensorProto.FLOAT:
            assert a == b
    assert out.graph.node == first.graph.node
    values = np.concatenate(
        [numpy_helper.to_array(t).ravel() for t in out.graph.initializer if t.data_type == TensorProto.FLOAT]
    )
    return values.astype(np.float32), stdout


def assert_f32_close(ours, theirs, inputs, ulps=4):
    """Equal up to a few float32 roundings of the inputs' magnitude per coordinate."""
    scale = np.max(np.abs(np.stack(inputs)), axis=0)
    tol = ulps * np.finfo(np.float32).eps * np.maximum(scale, np.finfo(np.float32).tiny)
    bad = np.abs(ours.astype(np.float64) - theirs.astype(np.float64)) > tol
    assert not bad.any(), f"{bad.sum()} coordinates differ, first {np.argmax(bad)}"


def darknet_inputs(tmp, models, glob=None) -> list[str]:
    """rule.cfg and c<i>.weights (g.weights: glob) in tmp; the clients' file names."""
    (tmp / "rule.cfg").write_text(CFG)
    for i, m in enumerate(models):
        write_weights(tmp / f"c{i + 1}.weights", m)
    if glob is not None:
        write_weights(tmp / "g.weights", glob)
    return [f"c{i + 1}.weights" for i in range(len(models))]


def assert_refused(capsys, tmp, args, message, outputs=("out.weights",)):
    """`aggregation *args` fails with one error line (the last) holding message, writing none of outputs."""
    status, _, err = run(capsys, *args)
    assert status != 0
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and message in errors[0] and err.strip().endswith(errors[0]), err
    for name in outputs:
        assert not (tmp / name).exists(), name
