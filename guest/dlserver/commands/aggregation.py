"""`aggregation onnx` and `aggregation onnx_predict` (docs/darknet-contract.md §8.2, §8.3).

`aggregation darknet` (docs/darknet-contract.md §8.1) is in aggregation_darknet.py.

aggregation onnx <out.onnx> <m1.onnx> [m2.onnx ...] [-weights w1,w2,...] [-method M]
------------------------------------------------------------------------------------
Every initializer of m1's graph is combined, by index, with the initializer of the same
index of every other model (names, data types and dims must match: the first one that
differs is an error naming both files). Values are read from whatever field stores them
(raw_data, float_data, int32_data, int64_data, double_data, uint64_data; packed or not) and
written back into m1's tensor in m1's storage, so the output is m1's file with only the
averaged values changed (a single input model is copied byte for byte). The other
models' storage does not matter (raw_data and float_data models mix freely).

Per coordinate, with T models and values x1..xT in file order (the -method / -weights flags
and the float32 definitions are dlserver.averaging's, shared with `aggregation darknet`):

  mean (default)  float32 (FLOAT, COMPLEX64 by component):
                    s = f32(...f32(f32(x1 + x2) + x3)... + xT), result f32(s / T)
                  (the original's `x = x / (n+1)`, a float division, not a multiplication;
                  for T = 3 identical models that is ((x+x)+x)/3).
                  DOUBLE, COMPLEX128: the same in double.
                  Integers (UINT8..INT64, BOOL, UINT32, UINT64): exact sum, then C division
                  (truncation toward zero). Unlike the original's int32 sum, it cannot wrap.
  -weights a,b,c  weighted mean, one weight >= 0 per model (e.g. examples per client),
                  normalised: c_i = f32(a_i / S), S = sum a_i (doubles). float32:
                  s = 0, then s = f32(s + f32(c_i * x_i)) in file order; no division.
                  Double: the same in double with c_i = a_i / S. Integers: exact rational
                  arithmetic, trunc(sum(a_i * x_i) / S) (identical inputs give themselves back).
  -method median  coordinate-wise median of the sorted values x(1) <= ... <= x(T): x((T+1)/2)
                  for odd T; for even T f32((x(T/2) + x(T/2+1)) / 2) (the sum and the halving
                  in double, rounded once), the same in double for doubles, and
                  trunc((a + b) / 2) for integers.
  -method trimmed:F   coordinate-wise trimmed mean, 0 <= F < 0.5: with k = int(F * T), the k
                  smallest and k largest values are dropped and the other T - 2k averaged:
                  summed in ascending order (float32 steps for float32, double for doubles),
                  then divided by T - 2k (truncating for integers).
  (-weights only combines with the mean.)

FLOAT16 and BFLOAT16 (raw_data, or bit patterns in int32_data) are widened to float32,
combined as float32 above, and rounded back to nearest even. STRING initializers are kept
from m1. Other types (float8, int4, ...) are errors. With NaNs the order statistics are
unspecified.

stdout, as the original: `model c1 loaded`, `model c%d loaded` for each further model, then
`save aggregation model to '%s' done!`.

aggregation onnx_predict <model.onnx> <input.pb>
------------------------------------------------
Runs the model on the TensorProto in input.pb (bound to the graph's first input that is not
an initializer; the original takes graph.input[0] whatever it is) with the
interpreter of dlserver.onnx.interpreter and prints the original's lines, then every value of
the LAST node's first output when it is FLOAT: `n_float_data[%d] = %f`.
"""

import os
import sys
from array import array

from ..averaging import Combiner, parse_method
from ..buffers import check_room
from ..errors import DLServerError
from ..files import Wording, read_input_file, write_file_atomic
from ..onnx import interpreter as oi
from ..onnx import model as om
from ..onnx.wire import ProtoError
from ..rules import RunFiles, aggregate, say_line
from . import aggregation_darknet

USAGE_ONNX = (
    "usage: {prog} aggregation onnx [out.onnx] [model_1.onnx] [model_2.onnx ...]"
    " [-weights w1,w2,...] [-method mean|median|trimmed:F|krum:F|...] [-global g.onnx]"
    " [-state s] [-state-out s'] [-seed N]"
)
USAGE_PREDICT = "usage: {prog} aggregation onnx_predict [model.onnx] [input.pb]"


def run(argv) -> None:
    """`aggregation darknet|onnx|onnx_predict ...`."""
    if argv.argc < 4:
        raise DLServerError(
            f"usage: {argv[0]} {argv[1]} [weights_format] [cfg]/NONE [weights_1/weights_2/...]"
        )
    if argv[2] == "darknet":
        aggregation_darknet.run(argv)
    elif argv[2] == "onnx":
        run_onnx(argv)
    elif argv[2] == "onnx_predict":
        run_onnx_predict(argv)
    else:
        raise DLServerError(f"Not an option under aggregation: {argv[2]}")


# Loading ----------------------------------------------------------------------------------

READ = Wording(
    "{path}: {what} not found", "{path}: is a directory, not {what}", "{path}: cannot read {what}: {reason}"
)


class LoadedModel:
    def __init__(self, path: str):
        self.path = path
        data = read_input_file(path, "ONNX model", READ)
        if not data:
            raise DLServerError(f"{path}: empty file, not an ONNX model")
        try:
            self.model = om.parse_model(data)
            self.graph = self.model.graph()
            self.initializers = self.graph.initializers()
        except ProtoError as e:
            raise DLServerError(f"{path}: not a valid ONNX model: {e}") from None

    def tensor_data(self, t: om.Tensor) -> om.TensorData:
        try:
            return om.read_tensor_data(t)
        except ProtoError as e:
            raise DLServerError(f"{self.path}: {e}") from None


def _tensor_name(t: om.Tensor) -> str:
    try:
        return t.name
    except ProtoError:
        return "?"


def _check_same(first: LoadedModel, other: LoadedModel) -> None:
    """The initializers of `other` match `first`'s by index: names, data types, dims."""
    a, b = first.initializers, other.initializers
    for j, (ta, tb) in enumerate(zip(a, b)):
        try:
            na, nb = ta.name, tb.name
            what = None
            if na != nb:
                what = f"is named '{nb}', {first.path} has '{na}'"
            elif ta.data_type != tb.data_type:
                what = (
                    f"has data type {om.dtype_name(tb.data_type)}, {first.path} has"
                    f" {om.dtype_name(ta.data_type)}"
                )
            elif ta.dims != tb.dims:
                what = f"has dims {tb.dims}, {first.path} has {ta.dims}"
        except ProtoError as e:
            raise DLServerError(f"{other.path}: {e}") from None
        if what:
            raise DLServerError(f"{other.path}: initializer {j} '{nb}' {what}")
    if len(a) != len(b):
        j = min(len(a), len(b))
        if len(b) < len(a):
            raise DLServerError(
                f"{other.path}: {len(b)} initializers, {first.path} has {len(a)}"
                f" (initializer {j} '{_tensor_name(a[j])}' is missing)"
            )
        raise DLServerError(
            f"{other.path}: {len(b)} initializers, {first.path} has {len(a)}"
            f" (initializer {j} '{_tensor_name(b[j])}' is extra)"
        )


def _check_supported_graph(m: LoadedModel) -> None:
    try:
        sparse = m.graph.has("sparse_initializer")
    except ProtoError as e:
        raise DLServerError(f"{m.path}: {e}") from None
    if sparse:
        raise DLServerError(f"{m.path}: sparse initializers are not supported")


# aggregation onnx ---------------------------------------------------------------------------


def aggregate_onnx(
    out_path: str,
    paths: list[str],
    method: str | None = None,
    weights: str | None = None,
    files: RunFiles | None = None,
) -> None:
    """Combine the initializers of the models in `paths` into a copy of the first one;
    `method` and `weights` are the -method and -weights flags (dlserver.averaging)."""
    if not paths:
        raise DLServerError("aggregation onnx: no models to aggregate")
    if os.path.normpath(out_path) in {os.path.normpath(p) for p in paths}:
        raise DLServerError(f"{out_path}: the output would overwrite one of the input models")
    combination = parse_method(method, weights, len(paths))
    if files is not None:
        files.check(combination.rule, method, out_path, paths)
    if combination.rule is not None:
        assert files is not None
        aggregate_onnx_rule(out_path, paths, combination, method, files)
        return
    first = LoadedModel(paths[0])
    _check_supported_graph(first)
    sys.stdout.write("model c1 loaded\n")
    datas = [first.tensor_data(t) for t in first.initializers]
    if combination.kind != "mean":  # median, trimmed: every model's values until the end
        _check_models_fit(paths, datas, method, FLOAT_KINDS + ("f64", "int"))
    combiners = [Combiner(combination, d.kind) for d in datas]
    for c, d in zip(combiners, datas):
        c.add(d.values)
    for i, path in enumerate(paths[1:]):
        other = LoadedModel(path)
        _check_supported_graph(other)
        sys.stdout.write(f"model c{i + 2} loaded\n")
        _check_same(first, other)
        for c, t in zip(combiners, other.initializers):
            c.add(other.tensor_data(t).values)
        del other
    if len(paths) > 1:
        for t, d, c in zip(first.initializers, datas, combiners):
            om.write_tensor_data(t, d, c.result())
    write_file_atomic(out_path, first.model.msg.serialize(), "ONNX model")
    sys.stdout.write(f"save aggregation model to '{out_path}' done!\n")


FLOAT_KINDS = ("f32", "f16", "bf16")


def _check_models_fit(paths: list[str], datas: list, method: str | None, kinds: tuple) -> None:
    """A rule that holds every model keeps each one's tensors of `kinds`, a global model and
    the result: refuse it up front when those len(paths) + 2 copies (4 bytes a value) do not
    fit this run's buffer budget."""
    values = sum(len(d.values) for d in datas if d.kind in kinds)
    what = f"-method {method} holds {len(paths)} models of {values} values: they"
    check_room(4 * values * (len(paths) + 2), paths[0], what)


def _rule_tensors(m: LoadedModel, first: LoadedModel, first_datas: list) -> list:
    """m's float32-kind tensors (widened); every other initializer must equal first's."""
    out = []
    for j, (t, d0) in enumerate(zip(m.initializers, first_datas)):
        d = m.tensor_data(t)
        if d0.kind in FLOAT_KINDS:
            out.append(array("f", d.values))
        elif list(d.values) != list(d0.values):
            raise DLServerError(
                f"{m.path}: initializer {j} '{_tensor_name(t)}' differs from {first.path}'s; whole-model"
                " rules combine float tensors only and need every other initializer equal"
            )
    return out


def aggregate_onnx_rule(out_path: str, paths: list[str], combination, method, files: RunFiles) -> None:
    """A whole-model rule of dlserver.rules on the float32, float16 and bfloat16 initializers."""
    first = LoadedModel(paths[0])
    _check_supported_graph(first)
    sys.stdout.write("model c1 loaded\n")
    datas = [first.tensor_data(t) for t in first.initializers]
    _check_models_fit(paths, datas, method, FLOAT_KINDS)
    models = [_rule_tensors(first, first, datas)]
    for i, path in enumerate(paths[1:]):
        other = LoadedModel(path)
        _check_supported_graph(other)
        sys.stdout.write(f"model c{i + 2} loaded\n")
        _check_same(first, other)
        models.append(_rule_tensors(other, first, datas))
        del other
    glob = None
    if files.glob is not None:
        g = LoadedModel(files.glob)
        _check_supported_graph(g)
        _check_same(first, g)
        glob = _rule_tensors(g, first, datas)
    rule = combination.rule
    state = files.load_state(rule, sum(len(t) for t in models[0]))
    result, new_state = aggregate(rule, models, combination.weights, glob, state, files.seed, say_line)
    floats = iter(result)
    for t, d in zip(first.initializers, datas):
        if d.kind in FLOAT_KINDS:
            om.write_tensor_data(t, d, next(floats))
    write_file_atomic(out_path, first.model.msg.serialize(), "ONNX model")
    if new_state is not None and files.state_out is not None:
        write_file_atomic(files.state_out, new_state.to_bytes(), "state file")
    sys.stdout.write(f"save aggregation model to '{out_path}' done!\n")


def run_onnx(argv) -> None:
    """`aggregation onnx`: flags first (removed from argv like Darknet's find_char_arg)."""
    method = argv.find_str("-method", None)
    weights = argv.find_str("-weights", None)
    files = RunFiles(argv)
    out = argv[3]
    paths = [argv[i] for i in range(4, argv.argc) if argv[i] is not None]
    if out is None or not paths:
        raise DLServerError(USAGE_ONNX.format(prog=argv[0]))
    aggregate_onnx(out, paths, method, weights, files)


# aggregation onnx_predict -------------------------------------------------------------------


def _check_input(path: str, model_path: str, info: om.ValueInfo, value: oi.Value) -> None:
    try:
        declared = info.tensor_type()
    except ProtoError as e:
        raise DLServerError(f"{model_path}: {e}") from None
    if declared is None:
        return
    elem, dims = declared
    if elem and elem != value.dtype:
        raise DLServerError(
            f"{path}: the input is {om.dtype_name(value.dtype)}, the model's input"
            f" '{info.name}' is {om.dtype_name(elem)}"
        )
    if dims is not None:
        ok = len(dims) == len(value.shape) and all(
            d is None or d <= 0 or d == s for d, s in zip(dims, value.shape)
        )
        if not ok:
            shown = ["?" if d is None else d for d in dims]
            raise DLServerError(
                f"{path}: the input has dims {list(value.shape)}, the model's input '{info.name}' has {shown}"
            )


def onnx_predict(model_path: str, input_path: str) -> None:
    m = LoadedModel(model_path)
    try:
        graph_name = m.graph.get_str("name")
        inputs = m.graph.messages("input", om.ValueInfo)
        node_views = m.graph.messages("node", om.Node)
        opset = m.model.opset("")
        nodes = [oi.Node(v, i) for i, v in enumerate(node_views)]
    except ProtoError as e:
        raise DLServerError(f"{model_path}: not a valid ONNX model: {e}") from None
    sys.stdout.write("model loaded\n")
    data = read_input_file(input_path, "input tensor", READ)
    try:
        value = oi.value_from_tensor(om.parse_tensor(data))
    except ProtoError as e:
        raise DLServerError(f"{input_path}: not a valid TensorProto: {e}") from None
    except oi.OpError as e:
        raise DLServerError(f"{input_path}: {e}") from None
    sys.stdout.write(f"Loading input {input_path}... ok!\n")
    if not inputs:
        raise DLServerError(f"{model_path}: the graph has no inputs to bind {input_path} to")
    if not nodes:
        raise DLServerError(f"{model_path}: the graph has no nodes")
    sys.stdout.write("Resolving model...\n")
    env = {}
    for t in m.initializers:
        try:
            env[t.name] = oi.value_from_tensor(t)
        except (ProtoError, oi.OpError) as e:
            raise DLServerError(f"{model_path}: {e}") from None
    # The original renames the tensor to graph.input[0]. Models that list their initializers
    # among the inputs (IR < 4) may put one first: bind to the first input without one.
    try:
        free = [info for info in inputs if info.name not in env]
    except ProtoError as e:
        raise DLServerError(f"{model_path}: {e}") from None
    if not free:
        raise DLServerError(
            f"{model_path}: every graph input is an initializer; nothing to bind {input_path} to"
        )
    _check_input(input_path, model_path, free[0], value)
    env[free[0].name] = value
    for node in nodes:
        node.opset = opset if opset is not None else 1
    sys.stdout.write(f"Running inference on {graph_name} model...\n")
    try:
        oi.run_graph(nodes, env)
    except oi.NodeError as e:
        raise DLServerError(f"{model_path}: {e}") from None
    sys.stdout.write("finished!\n")
    last = nodes[-1]
    if not last.outputs or not last.outputs[0]:
        raise DLServerError(f"{model_path}: the last node ({last.label()}) has no output")
    result = env[last.outputs[0]]
    if result.dtype == om.FLOAT:
        sys.stdout.write("".join(f"n_float_data[{i}] = {v:f}\n" for i, v in enumerate(result.data)))


def run_onnx_predict(argv) -> None:
    model, data = argv[3], argv[4]
    if model is None or data is None:
        raise DLServerError(USAGE_PREDICT.format(prog=argv[0]))
    onnx_predict(model, data)
