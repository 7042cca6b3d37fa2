"""The training path before its fused kernels: im2col + gemm convolution, gemm connected
backward, axpy/scal SGD, the general maxpool, Python weight init and draws, and the Python
file reader and PNG decoder (the C reader and fast PNG path refuse everything)."""

from array import array

import _dlk
from dlserver.buffers import view, zeros
from dlserver.rng import Random, f32


def conv_forward(x, batch, c, h, w, weights, n, size, pad, biases, act, out):
    """Direct convolution, then bias and activation, as separate kernels."""
    spatial = (h + 2 * pad - size + 1) * (w + 2 * pad - size + 1)
    workspace = zeros(_dlk.conv2d_direct_workspace(c, h, w, size, pad))
    _dlk.conv2d_direct(x, batch, c, h, w, weights, n, size, pad, out, workspace)
    _dlk.add_bias(out, biases, batch, n, spatial)
    _dlk.activate(out, batch * n * spatial, act)


def conv_backward(
    x, batch, c, h, w, out, delta, n, size, pad, act, weights, bias_upd, weight_upd, prev_delta
):
    """Darknet's backward_convolutional_layer (stride 1): im2col, two gemms, col2im per image."""
    spatial = (h + 2 * pad - size + 1) * (w + 2 * pad - size + 1)
    K, inputs, outputs = c * size * size, c * h * w, n * spatial
    _dlk.gradient(out, batch * outputs, act, delta)
    _dlk.backward_bias(bias_upd, delta, batch, n, spatial)
    columns = zeros(K * spatial)
    for b in range(batch):
        image = view(x, b * inputs, inputs)
        d = view(delta, b * outputs, outputs)
        _dlk.im2col(image, c, h, w, size, 1, pad, columns)
        _dlk.gemm(0, 1, n, K, spatial, 1.0, d, spatial, columns, spatial, 1.0, weight_upd, K)
        if prev_delta is not None:
            _dlk.gemm(1, 0, K, spatial, n, 1.0, weights, K, d, spatial, 0.0, columns, spatial)
            _dlk.col2im(columns, c, h, w, size, 1, pad, view(prev_delta, b * inputs, inputs))


def connected_backward(x, batch, inputs, out, delta, outputs, act, weights, bias_upd, weight_upd, prev_delta):
    """Darknet's backward_connected_layer: gradient, bias sums, gemm TN and gemm NN."""
    _dlk.gradient(out, len(out), act, delta)
    _dlk.backward_bias(bias_upd, delta, batch, outputs, 1)
    _dlk.gemm(1, 0, outputs, inputs, batch, 1.0, delta, outputs, x, inputs, 1.0, weight_upd, inputs)
    if prev_delta is not None:
        _dlk.gemm(0, 0, batch, inputs, outputs, 1.0, delta, outputs, weights, inputs, 1.0, prev_delta, inputs)


def sgd_update(biases, bias_updates, weights, weight_updates, step, momentum, decay):
    """Darknet's SGD step as its five axpy/scal calls:
    bias += step*bias_upd; bias_upd *= m; W_upd += decay*W; W += step*W_upd; W_upd *= m."""
    _dlk.axpy(len(biases), step, bias_updates, biases)
    _dlk.scal(len(bias_updates), momentum, bias_updates)
    _dlk.axpy(len(weights), decay, weights, weight_updates)
    _dlk.axpy(len(weights), step, weight_updates, weights)
    _dlk.scal(len(weight_updates), momentum, weight_updates)


def maxpool_forward_2x2(x, planes, h, w, out, indexes):
    """The general maxpool with size 2, stride 2, padding 1."""
    _dlk.maxpool_forward(x, 1, planes, h, w, 2, 2, 1, out, indexes)


def _random(state, spare=None) -> Random:
    rng = Random()
    rng.state, rng.spare = state, spare
    return rng


def rand_uniform_fill(out, n, a, b, scale, state):
    rng = _random(state)
    out[:n] = array("f", [f32(scale * rng.uniform(a, b)) for _ in range(n)])
    return rng.state


def rand_normal_fill(out, n, scale, state, spare):
    rng = _random(state, spare)
    out[:n] = array("f", [f32(scale * rng.normal()) for _ in range(n)])
    return rng.state, rng.spare


def rand_below(n, m, state):
    rng = _random(state)
    picks = [rng.rand() % m for _ in range(n)]
    return rng.state, picks


def read_files(paths, max_bytes=-1):
    return [None] * len(paths)


def decode_png_chw(data, width, height, out):
    return False


def decode_png_rows(files, width, height, out):
    return list(range(len(files)))
