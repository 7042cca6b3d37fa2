"""`aggregation darknet <cfg> <out> <w1> <w2> ...` (spec §8.1): average Darknet weights files.

Byte-identical to the original for the plain mean: convolutional biases, weights (and
batch-norm scales, rolling mean and variance) and connected biases and weights are
summed in file order in float32, then multiplied by f32(1/T); the header and `seen`
(all 8 bytes) come from the first file.
"""
from array import array

from .. import kernels
from ..averaging import combine, parse_method
from ..errors import DLServerError
from ..network import parse_network_cfg
from ..rng import f32
from ..weights import load_weights, save_weights


def averaged_arrays(layer) -> list:
    """The parameter arrays of a layer that aggregation averages (spec §8.1)."""
    if layer.kind == "convolutional":
        arrays = [layer.biases, layer.weights]
        if layer.batch_normalize:
            arrays += [layer.scales, layer.rolling_mean, layer.rolling_variance]
        return arrays
    if layer.kind == "connected":
        return [layer.biases, layer.weights]
    return []


def run(argv) -> None:
    """`aggregation darknet [cfg] [output] [weights_1] [weights_2 ...] [-weights a,b,..] [-method M]`."""
    method = argv.find_str("-method", None)
    weights = argv.find_str("-weights", None)
    cfg, out = argv[3], argv[4]
    inputs = [argv[i] for i in range(5, argv.argc) if argv[i] is not None]
    if out is None:
        raise DLServerError(f"usage: {argv[0]} aggregation darknet [cfg] [output] [weights_1] [weights_2 ...]")
    aggregate_darknet(cfg, out, inputs, method, weights)


def aggregate_darknet(cfg: str, out: str, inputs: list[str], method: str | None, weights: str | None) -> None:
    """Average the weights files `inputs` (all of the network in `cfg`) into `out`."""
    if not inputs:
        raise DLServerError("aggregation darknet: no weights files to aggregate")
    if out in inputs:
        raise DLServerError(f"{out}: the output would overwrite one of the input weights files")
    combination = parse_method(method, weights, len(inputs))
    total = parse_network_cfg(cfg)
    net = parse_network_cfg(cfg)
    load_weights(total, inputs[0])
    targets = [a for layer in total.layers for a in averaged_arrays(layer)]
    if combination.kind == "mean":
        # Streaming: one extra model in memory, whatever T is.
        scale = None
        if combination.weights is not None:
            norm = sum(combination.weights)
            scale = [f32(w / norm) for w in combination.weights]
            for target in targets:
                kernels.scal(len(target), scale[0], target)
        for i, path in enumerate(inputs[1:], 1):
            load_weights(net, path)
            sources = [a for layer in net.layers for a in averaged_arrays(layer)]
            for target, source in zip(targets, sources):
                kernels.axpy(len(target), 1.0 if scale is None else scale[i], source, target)
        if scale is None:
            factor = f32(1.0 / len(inputs))
            for target in targets:
                kernels.scal(len(target), factor, target)
    else:
        stacks = [[array("f", target)] for target in targets]
        for path in inputs[1:]:
            load_weights(net, path)
            sources = [a for layer in net.layers for a in averaged_arrays(layer)]
            for stack, source in zip(stacks, sources):
                stack.append(array("f", source))
        for target, stack in zip(targets, stacks):
            target[:] = combine(stack, combination)
    save_weights(total, out)
