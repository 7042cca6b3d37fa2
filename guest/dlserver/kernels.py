"""The C kernels (`_dlk`, guest/kernels/): the guest's only door to them.

Layers, codecs and loaders call `kernels.<name>(...)`; nothing else in the guest imports
`_dlk`. Each name below is `_dlk`'s function itself (no wrapper, so a call costs what a
`_dlk` call costs), typed here; the few that are wrappers take named parameters that
they pack into the flat arrays `_dlk` takes.

Buffers (`Floats`) are float32 objects with the buffer protocol (array('f'), memoryview
slices of one, bytearray for bytes); sizes are counts of elements.

Swap point: `use(impl)` replaces every kernel that `impl` (a module or object) defines by
impl's function of the same name and returns what it replaced (`use(returned)` puts it
back); `using(impl)` does both around a `with` block. Tests run the reference loops of
tests/reference through it; production code never calls it and pays nothing for it.
"""

from array import array
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import IntEnum

import _dlk

Floats = array | memoryview  # float32: array('f') or a view of one
Ints = array | memoryview  # int32: array('i')
Bytes = bytes | bytearray | memoryview  # bytes, or array('H') and the like where noted


class Activation(IntEnum):
    """Darknet's activations (every one of activations.h; codes of our activation.h)."""

    LINEAR = _dlk.ACT_LINEAR
    RELU = _dlk.ACT_RELU
    LEAKY = _dlk.ACT_LEAKY
    LOGISTIC = _dlk.ACT_LOGISTIC
    RELIE = _dlk.ACT_RELIE
    RAMP = _dlk.ACT_RAMP
    TANH = _dlk.ACT_TANH
    PLSE = _dlk.ACT_PLSE
    ELU = _dlk.ACT_ELU
    LOGGY = _dlk.ACT_LOGGY
    STAIR = _dlk.ACT_STAIR
    HARDTAN = _dlk.ACT_HARDTAN
    LHTAN = _dlk.ACT_LHTAN
    SELU = _dlk.ACT_SELU


class CostType(IntEnum):
    """What cost_forward computes (loss.c): Darknet's CPU cost types."""

    L2 = _dlk.COST_L2
    MASKED = _dlk.COST_MASKED
    SMOOTH = _dlk.COST_SMOOTH
    L1 = _dlk.COST_L1


class JpegColour(IntEnum):
    """How jpeg_color converts the decoded planes (stb's rules)."""

    GRAY = _dlk.JPEG_GRAY
    YCBCR = _dlk.JPEG_YCBCR
    RGB = _dlk.JPEG_RGB
    CMYK = _dlk.JPEG_CMYK
    YCCK = _dlk.JPEG_YCCK


# ------------------------------------------------------------------ BLAS (blas.c, gemm.c)
# y = a*x + y; x *= a; x = a (first n items)
axpy: Callable[[int, float, Floats, Floats], None] = _dlk.axpy
scal: Callable[[int, float, Floats], None] = _dlk.scal
fill: Callable[[int, float, Floats], None] = _dlk.fill
# gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc): C = alpha*op(A).op(B) + beta*C
gemm: Callable[[int, int, int, int, int, float, Floats, int, Floats, int, float, Floats, int], None] = (
    _dlk.gemm
)

# ------------------------------------------------------------------ layers
# activate(x, n, act); gradient(y, n, act, delta): delta *= act'(y)
activate: Callable[[Floats, int, int], None] = _dlk.activate
gradient: Callable[[Floats, int, int, Floats], None] = _dlk.gradient
# add_bias(out, biases, batch, n, size); backward_bias(bias_updates, delta, batch, n, size)
add_bias: Callable[[Floats, Floats, int, int, int], None] = _dlk.add_bias
backward_bias: Callable[[Floats, Floats, int, int, int], None] = _dlk.backward_bias
# batchnorm_infer(x, mean, var, scales, biases, batch, n, size)
batchnorm_infer: Callable[[Floats, Floats, Floats, Floats, Floats, int, int, int], None] = (
    _dlk.batchnorm_infer
)
# im2col(im, c, h, w, ksize, stride, pad, col); col2im(col, c, h, w, ksize, stride, pad, im)
im2col: Callable[[Floats, int, int, int, int, int, int, Floats], None] = _dlk.im2col
col2im: Callable[[Floats, int, int, int, int, int, int, Floats], None] = _dlk.col2im
# conv2d_direct(in, batch, c, h, w, weights, n, size, pad, out, workspace): stride 1
conv2d_direct: Callable[[Floats, int, int, int, int, Floats, int, int, int, Floats, Floats], None] = (
    _dlk.conv2d_direct
)
# conv2d_direct_workspace(c, h, w, size, pad) -> floats of workspace conv2d_direct needs
conv2d_direct_workspace: Callable[[int, int, int, int, int], int] = _dlk.conv2d_direct_workspace
# conv_forward(in, batch, c, h, w, weights, n, size, pad, biases, act, out): stride-1 conv + bias + act
conv_forward: Callable[[Floats, int, int, int, int, Floats, int, int, int, Floats, int, Floats], None] = (
    _dlk.conv_forward
)
# conv_backward(in, batch, c, h, w, out, delta, n, size, pad, act, weights, bias_upd, weight_upd,
#               prev_delta | None): gradient, bias and weight updates, prev_delta of a conv_forward layer
conv_backward: Callable[
    [Floats, int, int, int, int, Floats, Floats, int, int, int, int, Floats, Floats, Floats, Floats | None],
    None,
] = _dlk.conv_backward
# connected_backward(in, batch, inputs, out, delta, outputs, act, weights, bias_upd | None, weight_upd,
#                    prev_delta | None)
connected_backward: Callable[
    [Floats, int, int, Floats, Floats, int, int, Floats, Floats | None, Floats, Floats | None], None
] = _dlk.connected_backward
# sgd_update(biases, bias_upd, weights, weight_upd, step, momentum, decay): Darknet's SGD step
sgd_update: Callable[[Floats, Floats, Floats, Floats, float, float, float], None] = _dlk.sgd_update
# maxpool_forward(in, batch, c, h, w, size, stride, pad, out, indexes)
maxpool_forward: Callable[[Floats, int, int, int, int, int, int, int, Floats, Ints], None] = (
    _dlk.maxpool_forward
)
# maxpool_forward_2x2(in, planes, h, w, out, indexes | None): size 2, stride 2, every window inside
# (None: inference, no indexes)
maxpool_forward_2x2: Callable[[Floats, int, int, int, Floats, Ints | None], None] = _dlk.maxpool_forward_2x2
# maxpool_backward(out_delta, indexes, n, in_delta, n_in)
maxpool_backward: Callable[[Floats, Ints, int, Floats, int], None] = _dlk.maxpool_backward
# avgpool_forward(in, planes, n, out): mean of each plane; avgpool_backward(out_delta, planes, n, in_delta)
avgpool_forward: Callable[[Floats, int, int, Floats], None] = _dlk.avgpool_forward
avgpool_backward: Callable[[Floats, int, int, Floats], None] = _dlk.avgpool_backward
# shortcut(batch, w1, h1, c1, add, w2, h2, c2, s1, s2, out): out = s1*out + s2*add (Darknet shortcut_cpu)
shortcut: Callable[[int, int, int, int, Floats, int, int, int, float, float, Floats], None] = _dlk.shortcut
# dropout_forward(x, n, probability, scale, rand, state) -> state; dropout_backward(delta, n, p, scale, rand)
dropout_forward: Callable[[Floats, int, float, float, Floats, int], int] = _dlk.dropout_forward
dropout_backward: Callable[[Floats, int, float, float, Floats], None] = _dlk.dropout_backward
# softmax(in, batch, n, temperature, out); softmax_cost(y, truth, delta, n) -> cross-entropy sum
softmax: Callable[[Floats, int, int, float, Floats], None] = _dlk.softmax
softmax_cost: Callable[[Floats, Floats, Floats, int], float] = _dlk.softmax_cost
# sse_cost(x, truth, delta, n) -> sum of squares
sse_cost: Callable[[Floats, Floats, Floats, int], float] = _dlk.sse_cost
# cost_forward(type, x, truth, delta, err, n) -> sum of err (Darknet's CPU [cost]: CostType)
cost_forward: Callable[[int, Floats, Floats, Floats, Floats, int], float] = _dlk.cost_forward
# logistic_x_ent(p, truth, delta, err, n) -> sum of err (logistic cross-entropy)
logistic_x_ent: Callable[[Floats, Floats, Floats, Floats, int], float] = _dlk.logistic_x_ent
# l2norm_forward(in, batch, c, spatial, out): each pixel's channel vector divided by its L2 norm
l2norm_forward: Callable[[Floats, int, int, int, Floats], None] = _dlk.l2norm_forward
# lrn_forward(in, batch, c, spatial, size, alpha, beta, kappa, squared, norms, out)
lrn_forward: Callable[[Floats, int, int, int, int, float, float, float, Floats, Floats, Floats], None] = (
    _dlk.lrn_forward
)
# lrn_backward(norms, delta, n, beta, prev_delta): prev_delta = norms^-beta * delta
lrn_backward: Callable[[Floats, Floats, int, float, Floats], None] = _dlk.lrn_backward
# upsample(in, batch, c, h, w, stride, scale, out, forward): nearest neighbour up (or summed back)
upsample: Callable[[Floats, int, int, int, int, int, float, Floats, bool], None] = _dlk.upsample
# yolo_candidates(output, w, h, n, classes, anchors, netw, neth, thresh, boxes, objectness, probs) -> count
yolo_candidates: Callable[
    [Floats, int, int, int, int, Floats, int, int, float, Floats, Floats, Floats], int
] = _dlk.yolo_candidates
# nms_sort(boxes, objectness, probs, n, classes, thresh, order) -> boxes taking part (do_nms_sort)
nms_sort: Callable[[Floats, Floats, Floats, int, int, float, Ints], int] = _dlk.nms_sort

# batchnorm_forward_train(out, x, x_norm, mean, var, rolling_mean, rolling_var, scales, biases, batch, n,
#                         size): Darknet's forward_batchnorm_layer with net.train (in place on out)
batchnorm_forward_train: Callable[
    [Floats, Floats, Floats, Floats, Floats, Floats, Floats, Floats, Floats, int, int, int], None
] = _dlk.batchnorm_forward_train
# batchnorm_backward(x, x_norm, delta, mean, var, scales, scale_upd, bias_upd, mean_delta, var_delta,
#                    batch, n, size): Darknet's backward_batchnorm_layer (in place on delta)
batchnorm_backward: Callable[
    [Floats, Floats, Floats, Floats, Floats, Floats, Floats, Floats, Floats, Floats, int, int, int], None
] = _dlk.batchnorm_backward
# ------------------------------------------------------------------ recurrent layers (recurrent.c)
# rnn_mul(n, x, y): y *= x;  rnn_weighted_sum(n, a, b, s, c): c = s*a + (1-s)*b
rnn_mul: Callable[[int, Floats, Floats], None] = _dlk.rnn_mul
rnn_weighted_sum: Callable[[int, Floats, Floats, Floats, Floats], None] = _dlk.rnn_weighted_sum
# rnn_weighted_delta(n, a, b, s, da|None, db|None, ds, dc): da += dc*s; db += dc*(1-s); ds += dc*(a-b)
rnn_weighted_delta: Callable[
    [int, Floats, Floats, Floats, Floats | None, Floats | None, Floats, Floats], None
] = _dlk.rnn_weighted_delta
# rnn_mult_add(n, a, b, c): c += a*b
rnn_mult_add: Callable[[int, Floats, Floats, Floats], None] = _dlk.rnn_mult_add
# ------------------------------------------------------------------ detection family (region.c, local.c)
# reorg(x, w, h, c, batch, stride, forward, out): Darknet reorg_cpu
#   (forward: out[o] = x[in], else out[in] = x[o])
reorg: Callable[[Floats, int, int, int, int, int, bool, Floats], None] = _dlk.reorg
# flatten(x, size, layers, batch, forward, out): Darknet flatten, out of place
flatten: Callable[[Floats, int, int, int, bool, Floats], None] = _dlk.flatten
# crop(in, batch, c, h, w, out_h, out_w, dh, dw, flip, scale, trans, out): out = in[window]*scale + trans
crop: Callable[[Floats, int, int, int, int, int, int, int, int, bool, float, float, Floats], None] = _dlk.crop
# softmax_strided(in, n, batch, batch_offset, groups, group_offset, stride, temp, out): Darknet softmax_cpu
softmax_strided: Callable[[Floats, int, int, int, int, int, int, float, Floats], None] = _dlk.softmax_strided
# region_boxes(output, w, h, n, classes, coords, background, biases, thresh, parent, group_size,
#              group_offset, child, tree_thresh, boxes, objectness, probs): get_region_detections
#              (tree arrays empty: no tree; with a tree, output's class entries are changed in place)
region_boxes: Callable[
    [
        Floats,
        int,
        int,
        int,
        int,
        int,
        bool,
        Floats,
        float,
        Ints,
        Ints,
        Ints,
        Ints,
        float,
        Floats,
        Floats,
        Floats,
    ],
    None,
] = _dlk.region_boxes
# detection_boxes(output, side, n, classes, sqrt, w, h, thresh, boxes, objectness, probs):
#   get_detection_detections
detection_boxes: Callable[[Floats, int, int, int, bool, int, int, float, Floats, Floats, Floats], None] = (
    _dlk.detection_boxes
)
# region_delta(output, delta, batch, w, h, n, classes, coords, biases, truth, thresh, scales, rescore,
#              background, bias_match, softmax, seen, map, parent, group, group_size, group_offset, stats):
#              Darknet's forward_region_layer in train mode; scales = noobject, object, coord, class,
#              mask; stats[8]
region_delta: Callable[
    [
        Floats,
        Floats,
        int,
        int,
        int,
        int,
        int,
        int,
        Floats,
        Floats,
        float,
        Floats,
        bool,
        bool,
        bool,
        bool,
        int,
        Ints,
        Ints,
        Ints,
        Ints,
        Ints,
        Floats,
    ],
    None,
] = _dlk.region_delta
# local_forward(in, batch, c, h, w, size, stride, pad, n, weights, biases, out, workspace):
#   before the activation
local_forward: Callable[
    [Floats, int, int, int, int, int, int, int, int, Floats, Floats, Floats, Floats], None
] = _dlk.local_forward
# local_backward(in, batch, c, h, w, size, stride, pad, n, weights, delta, bias_upd, weight_upd, prev | None,
#                workspace): delta already times act'(out)
local_backward: Callable[
    [Floats, int, int, int, int, int, int, int, int, Floats, Floats, Floats, Floats, Floats | None, Floats],
    None,
] = _dlk.local_backward

# ------------------------------------------------------------------ random (musl rand)
# rand_uniform_fill(out, n, a, b, scale, state) -> state
rand_uniform_fill: Callable[[Floats, int, float, float, float, int], int] = _dlk.rand_uniform_fill
# rand_normal_fill(out, n, scale, state, spare) -> (state, spare)
rand_normal_fill: Callable[[Floats, int, float, int, tuple | None], tuple] = _dlk.rand_normal_fill
# rand_below(n, m, state) -> (state, [rand() % m, ...])
rand_below: Callable[[int, int, int], tuple] = _dlk.rand_below

# ------------------------------------------------------------------ files and images
# read_files(paths, max_bytes) -> [the bytes of each file, or None where it could not be read,
# is not a regular file (checked before the open: a FIFO's would wait) or is over max_bytes]
read_files: Callable[[list, int], list] = _dlk.read_files
# decode_png_chw(data, width, height, out) -> True, or False: not a plain 8-bit PNG of that size
decode_png_chw: Callable[[Bytes, int, int, Floats], bool] = _dlk.png_load_chw
# decode_png_rows(files, width, height, out) -> [the rows decode_png_chw did not take]
decode_png_rows: Callable[[list, int, int, Floats], list] = _dlk.png_load_rows
# png_unfilter(src, height, rowbytes, bpp, out); png_expand_palette(indexes, palette, n, comps, out)
png_unfilter: Callable[[Bytes, int, int, int, Bytes], None] = _dlk.png_unfilter
png_expand_palette: Callable[[Bytes, Bytes, int, int, Bytes], None] = _dlk.png_expand_palette
# pixels_to_chw(src, width, height, comps, out): bytes -> planes of byte/255
pixels_to_chw: Callable[[Bytes, int, int, int, Floats], None] = _dlk.pixels_to_chw
# chw_to_pixels(im, w, h, c, out): planes -> interleaved bytes (uchar)(255*v)
chw_to_pixels: Callable[[Floats, int, int, int, Bytes], None] = _dlk.chw_to_pixels
# resize_image(src, sw, sh, c, dst, dw, dh, part): Darknet's bilinear resize (part: dw*sh*c floats)
resize_image: Callable[[Floats, int, int, int, Floats, int, int, Floats], None] = _dlk.resize_image
# image_paste(src, sw, sh, c, dst, dw, dh, dx, dy, multiply): embed_image / composite_image
image_paste: Callable[[Floats, int, int, int, Floats, int, int, int, int, bool], None] = _dlk.image_paste
# draw_box_width(im, w, h, x1, y1, x2, y2, width, r, g, b)
draw_box_width: Callable[[Floats, int, int, int, int, int, int, int, float, float, float], None] = (
    _dlk.draw_box_width
)
# draw_label(im, w, h, label, lw, lh, row, col, r, g, b)
draw_label: Callable[[Floats, int, int, Floats, int, int, int, int, float, float, float], None] = (
    _dlk.draw_label
)
# jpeg_idct(coeffs, first, blocks_w, blocks_h, quant, plane, plane_first): dequantise + stb IDCT
jpeg_idct: Callable[[Bytes, int, int, int, bytes, Bytes, int], None] = _dlk.jpeg_idct
# jpeg_color(planes, params, width, height, mode, out): stb upsampling + colour conversion
jpeg_color: Callable[[Bytes, Ints, int, int, int, Bytes], None] = _dlk.jpeg_color
# jpeg_encode_scan(pixels, width, height, comp, ytable, uvtable, huffman) -> entropy-coded bytes
jpeg_encode_scan: Callable[[Bytes, int, int, int, Bytes, Bytes, bytes], bytes] = _dlk.jpeg_encode_scan

# ------------------------------------------------------------------ yolo training (yolo.c)
# yolo_delta(output, delta, batch, w, h, n, classes, mask, total, biases, netw, neth, truth, max_boxes,
#            ignore_thresh, truth_thresh, stats): Darknet's forward_yolo_layer in train mode; stats[9]
yolo_delta: Callable[
    [Floats, Floats, int, int, int, int, int, Ints, int, Floats, int, int, Floats, int, float, float, Floats],
    None,
] = _dlk.yolo_delta


def jpeg_decode_scan(
    data: bytes,
    start: int,
    *,
    progressive: bool,
    spectral_start: int,
    spectral_end: int,
    approx_high: int,
    approx_low: int,
    restart_interval: int,
    mcus_x: int,
    mcus_y: int,
    components: list,
    tables: Bytes,
    coeffs: Bytes,
) -> int:
    """Decode one scan's entropy-coded data from data[start:] into coeffs; returns the offset
    after it, or a negative error code. `components`: one tuple per scan component of
    (coefficient offset, blocks wide, blocks high, h, v, blocks per MCU wide and high,
    DC table | AC table << 4); `tables`: DC 0-3 then AC 0-3, 272 bytes each."""
    params = [
        int(progressive),
        spectral_start,
        spectral_end,
        approx_high,
        approx_low,
        restart_interval,
        mcus_x,
        mcus_y,
        len(components),
    ]
    for component in components:
        params.extend(component)
    return _dlk.jpeg_decode_scan(data, start, array("i", params), tables, coeffs)


# Aggregation rules (robust.c): lists of float32 buffers, one per model; D and coefs array('d')
RULE_MEDIAN, RULE_TRIMMED, RULE_CLOSEST = _dlk.RULE_MEDIAN, _dlk.RULE_TRIMMED, _dlk.RULE_CLOSEST
OPT_AVGM, OPT_ADAM, OPT_YOGI, OPT_ADAGRAD = _dlk.OPT_AVGM, _dlk.OPT_ADAM, _dlk.OPT_YOGI, _dlk.OPT_ADAGRAD
pair_sqdist: Callable[[list, int, array], None] = _dlk.pair_sqdist
column_rule: Callable[[int, list, int, int, Floats], None] = _dlk.column_rule
combine: Callable[[list, array, int, Floats], None] = _dlk.combine
prox_add: Callable[[int, float, Floats, Floats, Floats], None] = _dlk.prox_add
clip_update: Callable[[int, float, Floats, Floats], None] = _dlk.clip_update
gauss_add: Callable[[Floats, int, float, bytes, int], int] = _dlk.gauss_add
fedopt: Callable[[int, int, Floats, Floats, Floats, Floats, array], None] = _dlk.fedopt

# Fast mode (fast.h): gemm, conv2d_direct, conv_forward, conv_backward with fused multiply-adds.
# fast_supported() -> whether this build can run them; set_fast_mode(on) -> the previous mode
# (RuntimeError where unsupported).
fast_supported: Callable[[], bool] = _dlk.fast_supported
set_fast_mode: Callable[[bool], bool] = _dlk.set_fast_mode
fast_mode: Callable[[], bool] = _dlk.fast_mode
# Winograd F(m x m, 3 x 3) (winograd_fast.c, fast mode only): winograd_weights(W, n, c, m, U) with
# len(U) = (m+2)^2 * ceil8(n) * c (panels of 8 filters);
# conv_winograd(in, batch, c, h, w, U, n, pad, m, fused, out): stride 1, groups 1; fused: U is the
# 3x3 weights, transformed as they are used (nothing kept)
winograd_weights: Callable[[Floats, int, int, int, Floats], None] = _dlk.winograd_weights
conv_winograd: Callable[[Floats, int, int, int, int, Floats, int, int, int, bool, Floats], None] = (
    _dlk.conv_winograd
)


# Every kernel name above: what use() may replace.
KERNELS = tuple(
    name
    for name, value in globals().items()
    if not name.startswith("_")
    and callable(value)
    and not isinstance(value, type)
    and getattr(value, "__module__", None) in ("_dlk", __name__)
)


def use(impl) -> dict:
    """Replace each kernel that `impl` (a module, an object or a dict) defines by impl's;
    returns {name: replaced kernel}, which use() takes back to restore them."""
    found = (
        impl
        if isinstance(impl, dict)
        else {name: getattr(impl, name) for name in KERNELS if hasattr(impl, name)}
    )
    module = globals()
    replaced = {}
    for name, kernel in found.items():
        if name not in KERNELS:
            raise AttributeError(f"kernels has no kernel {name}")
        replaced[name] = module[name]
        module[name] = kernel
    return replaced


@contextmanager
def using(impl) -> Iterator[None]:
    """The kernels of `impl` in place of these inside a `with` block."""
    replaced = use(impl)
    try:
        yield
    finally:
        use(replaced)
