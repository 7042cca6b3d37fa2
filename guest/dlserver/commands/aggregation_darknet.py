"""`aggregation darknet <cfg> <out> <w1> <w2> ...`: average Darknet weights files
(docs/darknet-contract.md §8.1).

Byte-identical to the original for the plain mean: every array of the weights file
(layer.parameter_arrays(): convolutional biases, weights, batch-norm scales, rolling mean
and variance; connected biases and weights) is summed in file order in float32, then
multiplied by f32(1/T); the header and `seen` (all 8 bytes) come from the first file.
"""

from array import array

from ..averaging import DARKNET, Combiner, parse_method
from ..buffers import allow_for_weights, check_room
from ..errors import DLServerError
from ..files import write_file_atomic
from ..network import parse_network_cfg
from ..rules import RunFiles, aggregate, say_line
from ..weights import load_weights, save_weights


def run(argv) -> None:
    """`aggregation darknet [cfg] [output] [weights_1] [weights_2 ...] [-weights a,b,..] [-method M]`."""
    method = argv.find_str("-method", None)
    weights = argv.find_str("-weights", None)
    files = RunFiles(argv)
    cfg, out = argv[3], argv[4]
    inputs = [argv[i] for i in range(5, argv.argc) if argv[i] is not None]
    if out is None:
        raise DLServerError(
            f"usage: {argv[0]} aggregation darknet [cfg] [output] [weights_1] [weights_2 ...]"
        )
    aggregate_darknet(cfg, out, inputs, method, weights, files)


def aggregate_darknet(
    cfg: str,
    out: str,
    inputs: list[str],
    method: str | None,
    weights: str | None,
    files: RunFiles | None = None,
) -> None:
    """Average the weights files `inputs` (all of the network in `cfg`) into `out`."""
    if not inputs:
        raise DLServerError("aggregation darknet: no weights files to aggregate")
    if out in inputs:
        raise DLServerError(f"{out}: the output would overwrite one of the input weights files")
    combination = parse_method(method, weights, len(inputs))
    allow_for_weights(inputs[0], networks=2)
    if files is not None:
        files.check(combination.rule, method, out, inputs)
    if combination.rule is not None:
        assert files is not None
        aggregate_darknet_rule(cfg, out, inputs, combination, method, files)
        return
    total = parse_network_cfg(cfg, batch=1)
    net = parse_network_cfg(cfg, batch=1)
    load_weights(total, inputs[0])
    keeps = combination.kind != "mean"  # median, trimmed: every model's values until the end
    if keeps:
        check_models_fit(cfg, total, len(inputs), method)
    # Streaming: one extra model in memory for the mean, whatever T is. The first model's
    # arrays accumulate the mean in place (Darknet's rule: sum, then * f32(1/T)).
    targets = [a for layer in total.layers for a in layer.parameter_arrays()]
    combiners = [Combiner(combination, rule=DARKNET) for _ in targets]
    for combiner, target in zip(combiners, targets):
        combiner.add(target)
    for path in inputs[1:]:
        load_weights(net, path)
        sources = [a for layer in net.layers for a in layer.parameter_arrays()]
        for combiner, source in zip(combiners, sources):
            combiner.add(array("f", source) if keeps else source)
    for combiner, target in zip(combiners, targets):
        result = combiner.result()
        if result is not target:
            target[:] = result
    save_weights(total, out)


def aggregate_darknet_rule(
    cfg: str, out: str, inputs: list[str], combination, method, files: RunFiles
) -> None:
    """A whole-model rule of dlserver.rules: every model in memory (n + 2 models at most)."""
    rule = combination.rule
    total = parse_network_cfg(cfg, batch=1)
    net = parse_network_cfg(cfg, batch=1)
    load_weights(total, inputs[0])
    check_models_fit(cfg, total, len(inputs), method)
    targets = [a for layer in total.layers for a in layer.parameter_arrays()]
    models = [targets]  # the first model's own arrays: the result overwrites them at the end
    for path in inputs[1:]:
        load_weights(net, path)
        models.append([array("f", a) for layer in net.layers for a in layer.parameter_arrays()])
    glob = None
    if files.glob is not None:
        load_weights(net, files.glob)
        glob = [array("f", a) for layer in net.layers for a in layer.parameter_arrays()]
    state = files.load_state(rule, sum(len(t) for t in targets))
    result, new_state = aggregate(rule, models, combination.weights, glob, state, files.seed, say_line)
    for target, values in zip(targets, result):
        if values is not target:
            target[:] = values
    save_weights(total, out)
    if new_state is not None and files.state_out is not None:
        write_file_atomic(files.state_out, new_state.to_bytes(), "state file")


def check_models_fit(cfg: str, net, count: int, method: str | None) -> None:
    """A rule that holds every model (median, trimmed, the rules of dlserver.rules) keeps the
    other count - 1 models, a global model and its result besides `net`'s own arrays: refuse
    it up front when those count + 1 copies do not fit this run's buffer budget."""
    values = sum(len(a) for layer in net.layers for a in layer.parameter_arrays())
    check_room(
        4 * values * (count + 1), cfg, f"-method {method} holds {count} models of {values} values: they"
    )
