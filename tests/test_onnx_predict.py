"""`aggregation onnx_predict` (docs/darknet-contract.md §8.3): the interpreter against
onnx.reference.ReferenceEvaluator.

Tolerance: float32 results summed in a different order than numpy's differ by a few ulps of
the largest terms, so values are compared with rtol 1e-5 and atol 1e-5 * max(1, max |ref|)
(the seed's logits reach 6574, where one float32 ulp is 0.0005).
"""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from conftest import seed_file
from dlserver.main import main
from dlserver_host.darknet_output import onnx_value_line


@pytest.fixture
def tmp_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def predict(capsys, model_path, input_path, graph_name):
    status = main(["dl-server", "aggregation", "onnx_predict", str(model_path), str(input_path)])
    out, err = capsys.readouterr()
    assert status == 0, err
    lines = out.splitlines()
    assert lines[:5] == [
        "model loaded",
        f"Loading input {input_path}... ok!",
        "Resolving model...",
        f"Running inference on {graph_name} model...",
        "finished!",
    ]
    values = []
    for i, line in enumerate(lines[5:]):
        value = onnx_value_line(line)
        assert value and value.index == i, line
        values.append(value.value)
    return np.array(values, dtype=np.float64)


def assert_close(got, ref):
    ref = np.asarray(ref, dtype=np.float64).ravel()
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(ref).max())))


def check_model(capsys, tmp_cwd, model, x, input_name="X"):
    """Save model and input, run onnx_predict, compare with the reference evaluator's output of
    the last node (which these graphs make the graph output)."""
    onnx.save(model, str(tmp_cwd / "m.onnx"))
    (tmp_cwd / "in.pb").write_bytes(numpy_helper.from_array(x, input_name).SerializeToString())
    ref = ReferenceEvaluator(model).run(None, {input_name: x})[0]
    got = predict(capsys, "m.onnx", "in.pb", model.graph.name)
    assert_close(got, ref)
    return got, ref


def make(nodes, inputs, outputs, initializers=(), opset=13, name="g"):
    graph = helper.make_graph(nodes, name, inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def fin(name, shape=None, dt=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dt, shape)


def rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


# The seed ------------------------------------------------------------------------------------


def test_seed_mnist_model(tmp_cwd, capsys):
    model_path = seed_file("model/mnist_model_c1.onnx")
    input_path = seed_file("data/mnist_input_0.pb")
    got = predict(capsys, model_path, input_path, "CNTKGraph")
    model = onnx.load(str(model_path))
    t = TensorProto()
    t.ParseFromString(input_path.read_bytes())
    ref = ReferenceEvaluator(model).run(None, {"Input3": numpy_helper.to_array(t)})[0]
    assert len(got) == 10
    assert_close(got, ref)
    assert int(np.argmax(got)) == int(np.argmax(ref))


def test_seed_aggregated_model_predicts(tmp_cwd, capsys):
    paths = [str(seed_file(f"model/mnist_model_c{k}.onnx")) for k in (1, 2, 3)]
    assert main(["dl-server", "aggregation", "onnx", "avg.onnx", *paths]) == 0
    capsys.readouterr()
    input_path = seed_file("data/mnist_input_0.pb")
    got = predict(capsys, "avg.onnx", input_path, "CNTKGraph")
    t = TensorProto()
    t.ParseFromString(input_path.read_bytes())
    ref = ReferenceEvaluator(onnx.load("avg.onnx")).run(None, {"Input3": numpy_helper.to_array(t)})[0]
    assert_close(got, ref)


# Models built with onnx.helper ------------------------------------------------------------------


def test_exporter_style_cnn(tmp_cwd, capsys):
    """Conv (asymmetric pads, strides, groups, dilation), MaxPool ceil_mode, BatchNormalization,
    the Shape/Gather/Unsqueeze/Concat/Reshape flatten exporters emit, Gemm, Dropout, Softmax."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rand(rng, 4, 3, 3, 2), "w1"),
        numpy_helper.from_array(rand(rng, 4), "b1"),
        numpy_helper.from_array(rand(rng, 6, 2, 3, 3), "w2"),
        numpy_helper.from_array(np.abs(rand(rng, 6)) + 0.5, "scale"),
        numpy_helper.from_array(rand(rng, 6), "bias"),
        numpy_helper.from_array(rand(rng, 6), "mean"),
        numpy_helper.from_array(np.abs(rand(rng, 6)) + 0.1, "var"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "axes0"),
        numpy_helper.from_array(rand(rng, 7, 6 * 3 * 4), "fc_w"),
        numpy_helper.from_array(rand(rng, 7), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["X", "w1", "b1"], ["c1"], pads=[1, 0, 2, 1], strides=[2, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
        helper.make_node("Conv", ["p1", "w2"], ["c2"], group=2, dilations=[1, 2], auto_pad="SAME_UPPER"),
        helper.make_node("BatchNormalization", ["c2", "scale", "bias", "mean", "var"], ["bn"], epsilon=1e-3),
        helper.make_node("LeakyRelu", ["bn"], ["lr"], alpha=0.2),
        helper.make_node("Shape", ["lr"], ["shape"]),
        helper.make_node(
            "Constant", [], ["zero"], value=numpy_helper.from_array(np.array(0, dtype=np.int64))
        ),
        helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"]),
        helper.make_node("Constant", [], ["minus1"], value_ints=[-1]),
        helper.make_node("Concat", ["n1", "minus1"], ["flat_shape"], axis=0),
        helper.make_node("Reshape", ["lr", "flat_shape"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["fc"], transB=1, alpha=0.5, beta=2.0),
        helper.make_node("Dropout", ["fc"], ["drop"]),
        helper.make_node("Identity", ["drop"], ["ident"]),
        helper.make_node("Softmax", ["ident"], ["Y"], axis=-1),
    ]
    # opset 15: the reference evaluator runs BatchNormalization-9 (opsets 9-13) in training
    # mode because it fills in the momentum default; from opset 14 it is inference.
    model = make(nodes, [fin("X", [2, 3, 11, 8])], [fin("Y", [2, 7])], inits, opset=15)
    got, ref = check_model(capsys, tmp_cwd, model, rand(rng, 2, 3, 11, 8))
    assert got.shape == (14,)


@pytest.mark.parametrize(
    "attrs,wshape,group",
    [
        ({}, (5, 3, 3, 3), 1),
        ({"pads": [1, 1, 1, 1]}, (5, 3, 3, 3), 1),  # im2col + gemm path
        ({"pads": [2, 2, 2, 2]}, (20, 3, 5, 5), 1),  # direct path (stride 1, few channels)
        ({"strides": [2, 2], "pads": [1, 1, 1, 1]}, (4, 3, 3, 3), 1),
        ({"strides": [1, 2]}, (4, 3, 3, 3), 1),
        ({"pads": [0, 1, 2, 0]}, (4, 3, 2, 3), 1),
        ({"dilations": [2, 2]}, (4, 3, 3, 3), 1),
        ({"auto_pad": "SAME_LOWER", "strides": [2, 2]}, (4, 3, 4, 4), 1),
        ({"auto_pad": "VALID", "strides": [3, 3]}, (4, 3, 3, 3), 1),
        ({"pads": [1, 1, 1, 1]}, (6, 1, 3, 3), 3),  # depthwise
        ({}, (6, 3, 1, 1), 1),  # 1x1
    ],
    ids=lambda v: str(v),
)
def test_conv_geometries(tmp_cwd, capsys, attrs, wshape, group):
    rng = np.random.default_rng(1)
    c = wshape[1] * group
    nodes = [helper.make_node("Conv", ["X", "W", "B"], ["Y"], group=group, **attrs)]
    inits = [
        numpy_helper.from_array(rand(rng, *wshape), "W"),
        numpy_helper.from_array(rand(rng, wshape[0]), "B"),
    ]
    model = make(nodes, [fin("X", [2, c, 10, 9])], [fin("Y")], inits)
    check_model(capsys, tmp_cwd, model, rand(rng, 2, c, 10, 9))


@pytest.mark.parametrize(
    "attrs,ref_attrs",
    [
        ({"kernel_shape": [2, 2], "strides": [2, 2]}, None),
        ({"kernel_shape": [3, 3], "strides": [3, 3]}, None),
        ({"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}, None),
        ({"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}, None),
        ({"kernel_shape": [2, 2], "strides": [2, 2], "auto_pad": "SAME_UPPER"}, None),
        # The reference evaluator gets SAME_LOWER pooling with strides wrong (a 4x5 output for
        # 9x11 / 2, where the spec says ceil(9/2) x ceil(11/2)): compare with the explicit pads.
        (
            {"kernel_shape": [2, 2], "strides": [2, 2], "auto_pad": "SAME_LOWER"},
            {"kernel_shape": [2, 2], "strides": [2, 2], "pads": [1, 1, 0, 0]},
        ),
        ({"kernel_shape": [3, 3], "strides": [1, 1], "auto_pad": "SAME_LOWER"}, None),
        ({"kernel_shape": [2, 3], "strides": [1, 2]}, None),
        ({"kernel_shape": [3, 3], "dilations": [2, 2]}, None),
        ({"kernel_shape": [2, 2], "pads": [0, 1, 1, 0]}, None),
    ],
    ids=lambda v: str(v),
)
def test_maxpool_geometries(tmp_cwd, capsys, attrs, ref_attrs):
    rng = np.random.default_rng(2)
    x = rand(rng, 1, 3, 9, 11)
    model = make([helper.make_node("MaxPool", ["X"], ["Y"], **attrs)], [fin("X", [1, 3, 9, 11])], [fin("Y")])
    if ref_attrs is None:
        check_model(capsys, tmp_cwd, model, x)
        return
    ref_model = make(
        [helper.make_node("MaxPool", ["X"], ["Y"], **ref_attrs)], [fin("X", [1, 3, 9, 11])], [fin("Y")]
    )
    onnx.save(model, "m.onnx")
    (tmp_cwd / "in.pb").write_bytes(numpy_helper.from_array(x, "X").SerializeToString())
    ref = ReferenceEvaluator(ref_model).run(None, {"X": x})[0]
    assert ref.shape == (1, 3, 5, 6)
    assert_close(predict(capsys, "m.onnx", "in.pb", "g"), ref)


@pytest.mark.parametrize(
    "op,opset,axis,shape",
    [
        ("Softmax", 13, 1, [2, 3, 4]),
        ("Softmax", 13, -1, [2, 3, 4]),
        ("Softmax", 11, 1, [2, 5]),
        ("LogSoftmax", 13, -1, [2, 3, 4]),
        ("LogSoftmax", 13, 0, [2, 3, 4]),
        ("LogSoftmax", 11, 1, [3, 4]),
    ],
)
def test_softmax_axes(tmp_cwd, capsys, op, opset, axis, shape):
    rng = np.random.default_rng(3)
    model = make([helper.make_node(op, ["X"], ["Y"], axis=axis)], [fin("X", shape)], [fin("Y")], opset=opset)
    check_model(capsys, tmp_cwd, model, 3 * rand(rng, *shape))


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_softmax_before_opset_13_coerces_to_2d(tmp_cwd, capsys, op):
    """Opsets < 13 flatten the input to [prod(dims[:axis]), prod(dims[axis:])] (the reference
    evaluator does not; onnxruntime does), so the expected values are computed here."""
    rng = np.random.default_rng(8)
    x = 3 * rand(rng, 2, 3, 4)
    model = make([helper.make_node(op, ["X"], ["Y"], axis=1)], [fin("X", [2, 3, 4])], [fin("Y")], opset=11)
    onnx.save(model, "m.onnx")
    (tmp_cwd / "in.pb").write_bytes(numpy_helper.from_array(x, "X").SerializeToString())
    rows = x.reshape(2, 12).astype(np.float64)
    e = np.exp(rows - rows.max(axis=1, keepdims=True))
    ref = e / e.sum(axis=1, keepdims=True)
    if op == "LogSoftmax":
        ref = np.log(ref)
    assert_close(predict(capsys, "m.onnx", "in.pb", "g"), ref)


@pytest.mark.parametrize("wshape", [(5, 6), (3, 5, 6), (1, 5, 6), (5,)])
def test_matmul_broadcast(tmp_cwd, capsys, wshape):
    rng = np.random.default_rng(4)
    model = make(
        [helper.make_node("MatMul", ["X", "W"], ["Y"])],
        [fin("X", [2, 3, 4, 5])],
        [fin("Y")],
        [numpy_helper.from_array(rand(rng, *wshape), "W")],
    )
    check_model(capsys, tmp_cwd, model, rand(rng, 2, 3, 4, 5))


def test_elementwise_and_shape_operators(tmp_cwd, capsys):
    rng = np.random.default_rng(5)
    inits = [
        numpy_helper.from_array(rand(rng, 3, 1, 1), "bias"),
        numpy_helper.from_array(rand(rng, 5), "row"),
        numpy_helper.from_array(np.abs(rand(rng, 1, 3, 1, 5)) + 0.5, "den"),
        numpy_helper.from_array(np.array([2, -1], dtype=np.int64), "sq_axes"),
    ]
    nodes = [
        helper.make_node("Add", ["X", "bias"], ["a"]),
        helper.make_node("Sub", ["row", "a"], ["s"]),
        helper.make_node("Mul", ["s", "s"], ["m"]),
        helper.make_node("Div", ["m", "den"], ["d"]),
        helper.make_node("Sigmoid", ["d"], ["sg"]),
        helper.make_node("Tanh", ["sg"], ["th"]),
        helper.make_node("Transpose", ["th"], ["tr"], perm=[0, 3, 1, 2]),
        helper.make_node("GlobalAveragePool", ["tr"], ["gap"]),
        helper.make_node("Squeeze", ["gap", "sq_axes"], ["sq"]),
        helper.make_node("Cast", ["sq"], ["dbl"], to=TensorProto.DOUBLE),
        helper.make_node("Cast", ["dbl"], ["flt"], to=TensorProto.FLOAT),
        helper.make_node("Constant", [], ["half"], value_float=0.5),
        helper.make_node("Add", ["flt", "half"], ["plus"]),
        helper.make_node("Flatten", ["plus"], ["Y"], axis=0),
    ]
    model = make(nodes, [fin("X", [2, 3, 4, 5])], [fin("Y")], inits)
    check_model(capsys, tmp_cwd, model, rand(rng, 2, 3, 4, 5))


def test_old_opset_unsqueeze_and_reshape(tmp_cwd, capsys):
    rng = np.random.default_rng(6)
    nodes = [
        helper.make_node("Unsqueeze", ["X"], ["u"], axes=[0, 3]),
        helper.make_node(
            "Constant", [], ["shape"], value=numpy_helper.from_array(np.array([0, -1, 2], dtype=np.int64))
        ),
        helper.make_node("Reshape", ["u", "shape"], ["Y"]),
    ]
    model = make(nodes, [fin("X", [3, 4])], [fin("Y")], opset=11)
    check_model(capsys, tmp_cwd, model, rand(rng, 3, 4))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_pytorch_export(tmp_cwd, capsys):
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
            self.conv2 = nn.Conv2d(6, 12, 3, stride=2)
            self.fc1 = nn.Linear(12 * 3 * 3, 32)
            self.fc2 = nn.Linear(32, 10)
            self.drop = nn.Dropout(0.25)

        def forward(self, x):
            x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
            x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
            x = x.view(x.size(0), -1)
            x = self.drop(torch.relu(self.fc1(x)))
            return torch.log_softmax(self.fc2(x), dim=1)

    torch.manual_seed(0)
    net = Net().eval()
    x = torch.randn(1, 1, 28, 28)
    try:
        torch.onnx.export(
            net,
            (x,),
            str(tmp_cwd / "torch.onnx"),
            dynamo=False,
            opset_version=13,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        )
    except Exception as e:  # an exporter needing packages not installed here
        pytest.skip(f"torch.onnx.export failed: {e}")
    model = onnx.load(str(tmp_cwd / "torch.onnx"))
    ops = {n.op_type for n in model.graph.node}
    assert {
        "Conv",
        "MaxPool",
        "Gemm",
        "LogSoftmax",
        "Shape",
        "Gather",
        "Unsqueeze",
        "Concat",
        "Reshape",
    } <= ops
    xn = x.numpy()
    got, ref = check_model(capsys, tmp_cwd, model, xn, input_name="input")
    with torch.no_grad():
        np.testing.assert_allclose(got, net(x).numpy().ravel(), rtol=1e-5, atol=1e-5)


# Errors ---------------------------------------------------------------------------------------


def run_error(capsys, *args):
    status = main(["dl-server", "aggregation", "onnx_predict", *args])
    out, err = capsys.readouterr()
    assert status == 1
    assert err.count("\n") == 1
    return out, err


def test_unsupported_operator_names_the_node(tmp_cwd, capsys):
    nodes = [helper.make_node("Relu", ["X"], ["r"]), helper.make_node("Hardmax", ["r"], ["Y"], name="head")]
    onnx.save(make(nodes, [fin("X", [1, 4])], [fin("Y")]), "m.onnx")
    (tmp_cwd / "in.pb").write_bytes(
        numpy_helper.from_array(np.zeros((1, 4), np.float32), "X").SerializeToString()
    )
    out, err = run_error(capsys, "m.onnx", "in.pb")
    assert out.endswith("Running inference on g model...\n")
    assert err.startswith(
        "dl-server: error: m.onnx: node 1 'head' (Hardmax): operator Hardmax is not supported"
    )


def test_bad_input_files(tmp_cwd, capsys):
    onnx.save(make([helper.make_node("Relu", ["X"], ["Y"])], [fin("X", [1, 4])], [fin("Y")]), "m.onnx")
    out, err = run_error(capsys, "m.onnx", "missing.pb")
    assert out == "model loaded\n" and err == "dl-server: error: missing.pb: input tensor not found\n"
    good = numpy_helper.from_array(np.zeros((1, 4), np.float32), "X").SerializeToString()
    (tmp_cwd / "cut.pb").write_bytes(good[:-3])
    out, err = run_error(capsys, "m.onnx", "cut.pb")
    assert "cut.pb: not a valid TensorProto:" in err
    (tmp_cwd / "ints.pb").write_bytes(
        numpy_helper.from_array(np.zeros((1, 4), np.int64), "X").SerializeToString()
    )
    out, err = run_error(capsys, "m.onnx", "ints.pb")
    assert "ints.pb: the input is INT64, the model's input 'X' is FLOAT" in err
    (tmp_cwd / "dims.pb").write_bytes(
        numpy_helper.from_array(np.zeros((2, 2), np.float32), "X").SerializeToString()
    )
    out, err = run_error(capsys, "m.onnx", "dims.pb")
    assert "dims.pb: the input has dims [2, 2], the model's input 'X' has [1, 4]" in err
    (tmp_cwd / "bad.onnx").write_bytes(b"\x3a\x05abc")
    out, err = run_error(capsys, "bad.onnx", "cut.pb")
    assert out == "" and "bad.onnx: not a valid ONNX model:" in err


def test_shape_errors_name_the_node(tmp_cwd, capsys):
    rng = np.random.default_rng(7)
    nodes = [helper.make_node("MatMul", ["X", "W"], ["Y"], name="mm")]
    model = make(nodes, [fin("X", [1, 4])], [fin("Y")], [numpy_helper.from_array(rand(rng, 3, 2), "W")])
    onnx.save(model, "m.onnx")
    (tmp_cwd / "in.pb").write_bytes(numpy_helper.from_array(rand(rng, 1, 4), "X").SerializeToString())
    out, err = run_error(capsys, "m.onnx", "in.pb")
    assert "m.onnx: node 0 'mm' (MatMul): shapes [1, 4] and [3, 2] do not multiply" in err


def test_usage(tmp_cwd, capsys):
    out, err = run_error(capsys, "m.onnx")
    assert "usage:" in err and "onnx_predict" in err


def test_prints_the_last_nodes_first_output(tmp_cwd, capsys):
    """Like the original: the last node's first output, not the graph output."""
    x = np.array([[-1.0, 2.0, -3.0]], dtype=np.float32)
    (tmp_cwd / "in.pb").write_bytes(numpy_helper.from_array(x, "X").SerializeToString())
    nodes = [helper.make_node("Relu", ["X"], ["Y"]), helper.make_node("Sigmoid", ["X"], ["S"])]
    onnx.save(make(nodes, [fin("X", [1, 3])], [fin("Y", [1, 3])]), "m.onnx")
    got = predict(capsys, "m.onnx", "in.pb", "g")
    assert_close(got, 1 / (1 + np.exp(-x.astype(np.float64))))
    nodes = [helper.make_node("Relu", ["X"], ["Y"]), helper.make_node("Shape", ["X"], ["S"])]
    onnx.save(make(nodes, [fin("X", [1, 3])], [fin("Y", [1, 3])]), "m.onnx")
    assert len(predict(capsys, "m.onnx", "in.pb", "g")) == 0  # INT64: no float data


def test_initializers_listed_as_inputs(tmp_cwd, capsys):
    """IR 3 models list initializers among the inputs; the tensor binds to the first free one."""
    rng = np.random.default_rng(9)
    w = rand(rng, 3, 2)
    model = make(
        [helper.make_node("MatMul", ["X", "W"], ["Y"])],
        [fin("W", [3, 2]), fin("X", [1, 3])],
        [fin("Y", [1, 2])],
        [numpy_helper.from_array(w, "W")],
    )
    check_model(capsys, tmp_cwd, model, rand(rng, 1, 3))
