"""A small ONNX interpreter for `aggregation onnx_predict` (inference only, default domain).

Tensors are `Value`s: an ONNX data type, a shape tuple and a flat row-major `array` (float32
as 'f', int64 as 'q', ...). Nodes run in graph order (the graph is expected to be
topologically sorted, as ONNX requires). Float math is float32: element-wise operators go
through Python floats and are rounded to float32 when stored, which gives exactly the
float32 result for + - * /; the heavy loops use `_dlk`:
  Conv     im2col + gemm per group (or conv2d_direct for stride 1 and few channels); other
           geometries (rectangular kernels, unequal strides, dilation, asymmetric padding)
           pad in Python and build the column matrix with strided slices, then gemm.
  MaxPool  maxpool_forward on an input padded with -inf in Python (so ONNX's pads,
           auto_pad and ceil_mode all map onto the kernel's pad-free case); rectangular
           kernels, unequal strides or dilation use strided slices and max() in Python.
  MatMul, Gemm  gemm.   Relu, Sigmoid  activate.   Softmax  softmax.   Add (per-channel)  add_bias.

Supported operators: see OPS at the end. Anything else is an `OpError` naming the operator;
the caller adds the file and the node.
"""

import math
from array import array
from itertools import product, repeat
from operator import add, mul, sub, truediv

from .. import kernels, limits
from ..kernels import Activation
from . import model as om

TYPECODES = {
    om.FLOAT: "f",
    om.DOUBLE: "d",
    om.INT64: "q",
    om.INT32: "i",
    om.INT16: "h",
    om.INT8: "b",
    om.UINT8: "B",
    om.UINT16: "H",
    om.UINT32: "I",
    om.UINT64: "Q",
    om.BOOL: "B",
}
FLOAT_TYPES = (om.FLOAT, om.DOUBLE)


class OpError(Exception):
    """A node cannot be run (unsupported operator or attribute, bad shapes)."""


class Value:
    __slots__ = ("dtype", "shape", "data")

    def __init__(self, dtype: int, shape, data: array):
        self.dtype = dtype
        self.shape = tuple(shape)
        self.data = data

    def __repr__(self):
        return f"Value({om.dtype_name(self.dtype)}, {self.shape})"


def numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


MAX_COMPUTED_ELEMENTS = 2 * limits.MAX_TENSOR_ELEMENTS  # all values a graph run computes


def check_size(elements: int, work: int = 0) -> None:
    """Refuse a node whose output elements or multiply-adds pass the limits, before it runs."""
    if elements > limits.MAX_TENSOR_ELEMENTS:
        raise OpError(
            f"a value of {elements} elements is over the limit {limits.MAX_TENSOR_ELEMENTS}"
            " (DL_SERVER_MAX_TENSOR_ELEMENTS raises it)"
        )
    if work > limits.MAX_NODE_WORK:
        raise OpError(
            f"{work} multiply-adds are over the limit {limits.MAX_NODE_WORK}"
            " (DL_SERVER_MAX_NODE_WORK raises it)"
        )


def value_from_tensor(t: om.Tensor) -> Value:
    """A Value from a TensorProto view (raw_data or typed fields)."""
    td = om.read_tensor_data(t)
    dt = td.dtype
    if dt not in TYPECODES:
        raise OpError(f"{t.label()}: data type {om.dtype_name(dt)} is not supported by onnx_predict")
    if td.kind in ("f32", "f64"):
        data = td.values
    else:
        try:
            data = array(TYPECODES[dt], td.values)
        except OverflowError:
            raise OpError(
                f"{t.label()}: a value is out of range for its data type {om.dtype_name(dt)}"
            ) from None
    return Value(dt, t.dims, data)


def _f32(v: Value, what: str) -> array:
    if v.dtype != om.FLOAT:
        raise OpError(f"{what} must be FLOAT, got {om.dtype_name(v.dtype)}")
    return v.data


def _ints(v: Value, what: str) -> list[int]:
    if v.dtype not in (om.INT64, om.INT32):
        raise OpError(f"{what} must be INT64 or INT32, got {om.dtype_name(v.dtype)}")
    return list(v.data)


def _same_kind(value, default) -> bool:
    if isinstance(default, bool | int):
        return isinstance(value, int)
    if isinstance(default, float):
        return isinstance(value, int | float)
    return isinstance(value, type(default))


def _axis(axis: int, rank: int, what: str = "axis") -> int:
    if not isinstance(axis, int):
        raise OpError(f"{what} must be an integer, got {type(axis).__name__}")
    a = axis + rank if axis < 0 else axis
    if not 0 <= a < rank:
        raise OpError(f"{what} {axis} out of range for rank {rank}")
    return a


class Node:
    """One NodeProto ready to run: op_type, input/output names, decoded attributes."""

    def __init__(self, view: om.Node, index: int):
        self.index = index
        self.op_type = view.get_str("op_type")
        self.name = view.get_str("name")
        self.domain = view.get_str("domain")
        self.inputs = view.get_strs("input")
        self.outputs = view.get_strs("output")
        self.attrs = {}
        for a in view.messages("attribute", om.Attribute):
            self.attrs[a.get_str("name")] = a
        self.opset = 0

    def label(self) -> str:
        name = f" '{self.name}'" if self.name else ""
        return f"node {self.index}{name} ({self.op_type})"

    def attr(self, name: str, default=None):
        """The attribute's value; with a default, it must be of the default's kind (int,
        float, list, text): a model may carry any type under any name."""
        a = self.attrs.get(name)
        if a is None:
            return default
        value = a.value()
        if default is not None and not _same_kind(value, default):
            raise OpError(f"attribute {name} has the wrong type ({type(value).__name__})")
        return value


# Broadcasting and element-wise operators ---------------------------------------------------


def broadcast_shape(a, b) -> tuple:
    r = max(len(a), len(b))
    a = (1,) * (r - len(a)) + tuple(a)
    b = (1,) * (r - len(b)) + tuple(b)
    out = []
    for x, y in zip(a, b):
        if x == y or y == 1:
            out.append(x)
        elif x == 1:
            out.append(y)
        else:
            raise OpError(f"shapes {a} and {b} cannot be broadcast")
    return tuple(out)


def expand(data: array, shape, target) -> array:
    """`data` of `shape` broadcast to `target` (numpy rules), as a new flat array."""
    shape = (1,) * (len(target) - len(shape)) + tuple(shape)
    if shape == tuple(target):
        return data
    check_size(numel(target))
    cur = data
    # Walk the axes from the innermost; `cur` has shape shape[:d+1] + target[d+1:].
    for d in range(len(target) - 1, -1, -1):
        if shape[d] == target[d]:
            continue
        inner = numel(target[d + 1 :])
        outer = numel(shape[:d])
        reps = target[d]
        if inner == 1:
            nxt = array(cur.typecode)
            for o in range(outer):
                nxt += array(cur.typecode, repeat(cur[o], reps))
        elif outer == 1:
            nxt = cur * reps
        else:
            nxt = array(cur.typecode)
            for o in range(outer):
                nxt += cur[o * inner : (o + 1) * inner] * reps
        cur = nxt
    return cur


def _trunc_div(a: int, b: int) -> int:
    if b == 0:
        raise OpError("integer division by zero")
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def _per_channel(full_shape, other_shape):
    """(batch, n, size) when `other` broadcast over `full_shape` is one value per index of a
    single axis (a bias), else None."""
    r = len(full_shape)
    if len(other_shape) > r:
        return None
    o = (1,) * (r - len(other_shape)) + tuple(other_shape)
    axes = [d for d in range(r) if o[d] != 1]
    if len(axes) > 1 or any(o[d] != full_shape[d] for d in axes):
        return None
    if not axes:  # a single value added everywhere
        return 1, 1, numel(full_shape)
    d = axes[0]
    return numel(full_shape[:d]), full_shape[d], numel(full_shape[d + 1 :])


def _binary(op_name, fn, int_fn=None):
    def run(node, x, y):
        if x.dtype != y.dtype:
            raise OpError(f"inputs of different types {om.dtype_name(x.dtype)} and {om.dtype_name(y.dtype)}")
        if x.dtype not in TYPECODES or x.dtype == om.BOOL:
            raise OpError(f"data type {om.dtype_name(x.dtype)} is not supported")
        shape = broadcast_shape(x.shape, y.shape)
        if x.dtype == om.FLOAT and op_name == "Add":
            # A bias over one axis: the kernel adds it in place on a copy of the full operand.
            for full, other in ((x, y), (y, x)):
                if full.shape == shape:
                    geom = _per_channel(shape, other.shape)
                    if geom is not None:
                        out = array("f", full.data)
                        kernels.add_bias(out, other.data, *geom)
                        return [Value(om.FLOAT, shape, out)]
        a = expand(x.data, x.shape, shape)
        b = expand(y.data, y.shape, shape)
        if x.dtype in FLOAT_TYPES:
            if op_name == "Div":
                data = array(a.typecode, map(_fdiv, a, b))
            else:
                data = array(a.typecode, map(fn, a, b))
        else:
            data = array(a.typecode, map(int_fn or fn, a, b))
        return [Value(x.dtype, shape, data)]

    return run


def _fdiv(a: float, b: float) -> float:
    try:
        return a / b
    except ZeroDivisionError:
        if a != a or a == 0:
            return math.nan
        return math.copysign(math.inf, a) * math.copysign(1.0, b)


def op_relu(node, x):
    out = array("f", _f32(x, "X"))
    kernels.activate(out, len(out), Activation.RELU)
    return [Value(om.FLOAT, x.shape, out)]


def op_sigmoid(node, x):
    out = array("f", _f32(x, "X"))
    kernels.activate(out, len(out), Activation.LOGISTIC)
    return [Value(om.FLOAT, x.shape, out)]


def op_tanh(node, x):
    return [Value(om.FLOAT, x.shape, array("f", map(math.tanh, _f32(x, "X"))))]


def op_leaky_relu(node, x):
    alpha = node.attr("alpha", 0.01)
    return [Value(om.FLOAT, x.shape, array("f", [v if v >= 0 else v * alpha for v in _f32(x, "X")]))]


def op_identity(node, x, *rest):
    outs = [x]
    if len(node.outputs) > 1 and node.outputs[1]:  # Dropout's mask: all kept
        outs.append(Value(om.BOOL, x.shape, array("B", bytes([1])) * numel(x.shape)))
    return outs


# Convolution and pooling -------------------------------------------------------------------


def _pads_2d(node, h, w, kh, kw, sh, sw, dh, dw, ceil_mode=False):
    """Output size and (top, left, bottom, right) padding from pads / auto_pad."""
    auto_pad = node.attr("auto_pad", b"NOTSET")
    ekh, ekw = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    if auto_pad in (b"SAME_UPPER", b"SAME_LOWER"):
        oh, ow = -(-h // sh), -(-w // sw)
        th = max(0, (oh - 1) * sh + ekh - h)
        tw = max(0, (ow - 1) * sw + ekw - w)
        if auto_pad == b"SAME_UPPER":
            pads = (th // 2, tw // 2, th - th // 2, tw - tw // 2)
        else:
            pads = (th - th // 2, tw - tw // 2, th // 2, tw // 2)
        return oh, ow, pads
    if auto_pad == b"VALID":
        pads = (0, 0, 0, 0)
    elif auto_pad in (b"NOTSET", b""):
        pads = tuple(node.attr("pads", [0, 0, 0, 0]))
        if len(pads) != 4 or min(pads) < 0:
            raise OpError(f"pads {list(pads)}: 4 non-negative values are needed for a 2-D input")
    else:
        raise OpError(f"auto_pad {auto_pad.decode(errors='replace')!r} is not supported")
    ph, pw = h + pads[0] + pads[2] - ekh, w + pads[1] + pads[3] - ekw
    if ph < 0 or pw < 0:
        raise OpError(f"kernel {kh}x{kw} larger than the padded input {h}x{w}")
    if ceil_mode:
        oh, ow = -(-ph // sh) + 1, -(-pw // sw) + 1
        # The last window must start inside the input or its left padding.
        if (oh - 1) * sh >= h + pads[0]:
            oh -= 1
        if (ow - 1) * sw >= w + pads[1]:
            ow -= 1
    else:
        oh, ow = ph // sh + 1, pw // sw + 1
    return oh, ow, pads


def _window_attrs(node, kernel_default=None):
    kernel = node.attr("kernel_shape", kernel_default)
    if kernel is None:
        raise OpError("kernel_shape is required")
    kernel = list(kernel)
    strides = list(node.attr("strides", [1] * len(kernel)))
    dilations = list(node.attr("dilations", [1] * len(kernel)))
    if len(kernel) != 2 or len(strides) != 2 or len(dilations) != 2:
        raise OpError(f"only 2-D windows are supported (kernel_shape {kernel})")
    if min(kernel) < 1 or min(strides) < 1 or min(dilations) < 1:
        raise OpError(f"kernel_shape {kernel}, strides {strides}, dilations {dilations} must be >= 1")
    return kernel, strides, dilations


def _pad_planes(
    x: array, planes: int, h: int, w: int, top: int, left: int, out_h: int, out_w: int, fill: float
) -> array:
    """Each h x w plane placed at (top, left) in an out_h x out_w plane filled with `fill`;
    parts falling outside are cut (top/left may be 0 only; bottom/right follow from out_h/out_w)."""
    out = array("f", [fill]) * (planes * out_h * out_w)
    rows = min(h, out_h - top)
    cols = min(w, out_w - left)
    if rows <= 0 or cols <= 0:
        return out
    for p in range(planes):
        for y in range(rows):
            src = (p * h + y) * w
            dst = (p * out_h + y + top) * out_w + left
            out[dst : dst + cols] = x[src : src + cols]
    return out


def op_conv(node, x, wt, b=None):
    xd, wd = _f32(x, "X"), _f32(wt, "W")
    if len(x.shape) != 4 or len(wt.shape) != 4:
        raise OpError(f"only 2-D convolution is supported (X {list(x.shape)}, W {list(wt.shape)})")
    n, c, h, w = x.shape
    m, cg, kh0, kw0 = wt.shape
    (kh, kw), (sh, sw), (dh, dw) = _window_attrs(node, [kh0, kw0])
    if (kh, kw) != (kh0, kw0):
        raise OpError(f"kernel_shape {[kh, kw]} differs from W's {[kh0, kw0]}")
    group = node.attr("group", 1)
    if group < 1 or c % group or m % group or c // group != cg:
        raise OpError(f"group {group} does not fit {c} input channels, W {list(wt.shape)}")
    oh, ow, (pt, pl, pb, pr) = _pads_2d(node, h, w, kh, kw, sh, sw, dh, dw)
    if oh < 1 or ow < 1:
        raise OpError(f"output would be {oh}x{ow}")
    check_size(n * m * oh * ow, n * m * oh * ow * cg * kh * kw)
    mg = m // group
    kdim = cg * kh * kw
    ohw = oh * ow
    out = array("f", bytes(4 * n * m * ohw))
    outv = memoryview(out)
    wv = memoryview(wd)
    simple = kh == kw and sh == sw and dh == dw == 1 and pt == pl == pb == pr
    direct = simple and sh == 1 and kh > 1 and cg <= 16
    if direct:
        ws = array("f", bytes(4 * kernels.conv2d_direct_workspace(cg, h, w, kh, pt)))
    col = None
    for bi in range(n):
        for g in range(group):
            src = memoryview(xd)[(bi * c + g * cg) * h * w : (bi * c + (g + 1) * cg) * h * w]
            wg = wv[g * mg * kdim : (g + 1) * mg * kdim]
            dst = outv[(bi * m + g * mg) * ohw : (bi * m + (g + 1) * mg) * ohw]
            if direct:
                kernels.conv2d_direct(src, 1, cg, h, w, wg, mg, kh, pt, dst, ws)
                continue
            if simple:
                if col is None:
                    col = array("f", bytes(4 * kdim * ohw))
                kernels.im2col(src, cg, h, w, kh, sh, pt, col)
            else:
                col = _im2col_general(
                    array("f", src), cg, h, w, kh, kw, sh, sw, dh, dw, oh, ow, (pt, pl, pb, pr)
                )
            kernels.gemm(0, 0, mg, ohw, kdim, 1.0, wg, kdim, col, ohw, 1.0, dst, ohw)
    if b is not None:
        bd = _f32(b, "B")
        if len(bd) != m:
            raise OpError(f"bias of {len(bd)} values for {m} output channels")
        kernels.add_bias(out, bd, n, m, ohw)
    return [Value(om.FLOAT, (n, m, oh, ow), out)]


def _im2col_general(x, c, h, w, kh, kw, sh, sw, dh, dw, oh, ow, pads) -> array:
    pt, pl, pb, pr = pads
    hp, wp = (oh - 1) * sh + (kh - 1) * dh + 1, (ow - 1) * sw + (kw - 1) * dw + 1
    xp = _pad_planes(x, c, h, w, pt, pl, hp, wp, 0.0)
    col = array("f")
    span = sw * (ow - 1) + 1
    for ch in range(c):
        for ky in range(kh):
            for kx in range(kw):
                for oy in range(oh):
                    start = (ch * hp + oy * sh + ky * dh) * wp + kx * dw
                    col += xp[start : start + span : sw]
    return col


def op_maxpool(node, x):
    xd = _f32(x, "X")
    if len(x.shape) != 4:
        raise OpError(f"only 2-D pooling is supported (X {list(x.shape)})")
    if len(node.outputs) > 1 and node.outputs[1]:
        raise OpError("the Indices output is not supported")
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (dh, dw) = _window_attrs(node)
    oh, ow, (pt, pl, pb, pr) = _pads_2d(node, h, w, kh, kw, sh, sw, dh, dw, bool(node.attr("ceil_mode", 0)))
    if oh < 1 or ow < 1:
        raise OpError(f"output would be {oh}x{ow}")
    # The input as the windows see it: padding (and any ceil_mode overhang) as -inf,
    # rows/columns no window reaches cut off.
    hp, wp = (oh - 1) * sh + (kh - 1) * dh + 1, (ow - 1) * sw + (kw - 1) * dw + 1
    planes = n * c
    check_size(planes * max(hp * wp, oh * ow), planes * oh * ow * kh * kw)
    xp = xd if (pt, pl, hp, wp) == (0, 0, h, w) else _pad_planes(xd, planes, h, w, pt, pl, hp, wp, -math.inf)
    if kh == kw and sh == sw and dh == dw == 1:
        out = array("f", bytes(4 * planes * oh * ow))
        idx = array("i", bytes(4 * planes * oh * ow))
        kernels.maxpool_forward(xp, n, c, hp, wp, kh, sh, 0, out, idx)
        return [Value(om.FLOAT, (n, c, oh, ow), out)]
    out = array("f")
    span = sw * (ow - 1) + 1
    for p in range(planes):
        for oy in range(oh):
            best = None
            for ky in range(kh):
                row = (p * hp + oy * sh + ky * dh) * wp
                for kx in range(kw):
                    seg = xp[row + kx * dw : row + kx * dw + span : sw]
                    best = seg if best is None else array("f", map(max, best, seg))
            out += best
    return [Value(om.FLOAT, (n, c, oh, ow), out)]


def op_global_average_pool(node, x):
    xd = _f32(x, "X")
    if len(x.shape) < 3:
        raise OpError(f"input of rank {len(x.shape)} (at least 3 needed)")
    size = numel(x.shape[2:])
    planes = numel(x.shape[:2])
    out = array("f", [math.fsum(xd[p * size : (p + 1) * size]) / size for p in range(planes)])
    return [Value(om.FLOAT, x.shape[:2] + (1,) * (len(x.shape) - 2), out)]


def op_batchnorm(node, x, scale, bias, mean, var, *rest):
    xd = _f32(x, "X")
    if len(node.outputs) > 1 and any(node.outputs[1:]):
        raise OpError("training outputs (running mean/var) are not supported")
    eps = node.attr("epsilon", 1e-5)
    if len(x.shape) < 2:
        raise OpError(f"input of rank {len(x.shape)} (at least 2 needed)")
    n, c = x.shape[0], x.shape[1]
    size = numel(x.shape[2:])
    sc, bi, mu, va = (
        _f32(v, what) for v, what in ((scale, "scale"), (bias, "B"), (mean, "mean"), (var, "var"))
    )
    if not len(sc) == len(bi) == len(mu) == len(va) == c:
        raise OpError(f"scale/B/mean/var must hold {c} values")
    out = array("f")
    for b in range(n):
        for ch in range(c):
            a = sc[ch] / math.sqrt(va[ch] + eps)
            m, o = mu[ch], bi[ch]
            start = (b * c + ch) * size
            out += array("f", [(v - m) * a + o for v in xd[start : start + size]])
    return [Value(om.FLOAT, x.shape, out)]


# Matrix products ---------------------------------------------------------------------------


def op_matmul(node, a, b):
    ad, bd = _f32(a, "A"), _f32(b, "B")
    sa, sb = a.shape, b.shape
    if not sa or not sb:
        raise OpError("MatMul inputs must have rank >= 1")
    squeeze_m, squeeze_n = len(sa) == 1, len(sb) == 1
    if squeeze_m:
        sa = (1,) + sa
    if squeeze_n:
        sb = sb + (1,)
    m, k = sa[-2:]
    k2, n = sb[-2:]
    if k != k2:
        raise OpError(f"shapes {list(a.shape)} and {list(b.shape)} do not multiply")
    batch = broadcast_shape(sa[:-2], sb[:-2])
    r = len(batch)
    ba = (1,) * (r - len(sa[:-2])) + sa[:-2]
    bb = (1,) * (r - len(sb[:-2])) + sb[:-2]
    check_size(numel(batch) * m * n, numel(batch) * m * n * k)
    out = array("f", bytes(4 * numel(batch) * m * n))
    av, bv, ov = memoryview(ad), memoryview(bd), memoryview(out)
    for i, idx in enumerate(product(*(range(d) for d in batch))):
        oa = ob = 0
        for d in range(r):
            oa = oa * ba[d] + (idx[d] if ba[d] != 1 else 0)
            ob = ob * bb[d] + (idx[d] if bb[d] != 1 else 0)
        kernels.gemm(
            0,
            0,
            m,
            n,
            k,
            1.0,
            av[oa * m * k : (oa + 1) * m * k],
            k,
            bv[ob * k * n : (ob + 1) * k * n],
            n,
            1.0,
            ov[i * m * n : (i + 1) * m * n],
            n,
        )
    shape = batch + ((m,) if not squeeze_m else ()) + ((n,) if not squeeze_n else ())
    return [Value(om.FLOAT, shape, out)]


def op_gemm(node, a, b, c=None):
    ad, bd = _f32(a, "A"), _f32(b, "B")
    if len(a.shape) != 2 or len(b.shape) != 2:
        raise OpError(f"Gemm needs 2-D inputs (A {list(a.shape)}, B {list(b.shape)})")
    ta, tb = node.attr("transA", 0), node.attr("transB", 0)
    alpha, beta = node.attr("alpha", 1.0), node.attr("beta", 1.0)
    m, k = (a.shape[1], a.shape[0]) if ta else a.shape
    k2, n = (b.shape[1], b.shape[0]) if tb else b.shape
    if k != k2:
        raise OpError(
            f"shapes {list(a.shape)} (transA={ta}) and {list(b.shape)} (transB={tb}) do not multiply"
        )
    check_size(m * n, m * n * k)
    if c is not None:
        if broadcast_shape(c.shape, (m, n)) != (m, n):
            raise OpError(f"C {list(c.shape)} does not broadcast to the output ({m}, {n})")
        out = array("f", expand(_f32(c, "C"), c.shape, (m, n)))  # a copy: gemm writes into it
    else:
        out = array("f", bytes(4 * m * n))
        beta = 0.0
    kernels.gemm(1 if ta else 0, 1 if tb else 0, m, n, k, alpha, ad, a.shape[1], bd, b.shape[1], beta, out, n)
    return [Value(om.FLOAT, (m, n), out)]


# Softmax -----------------------------------------------------------------------------------


def _rows_op(node, x, row_fn):
    """Apply row_fn(flat array, rows, n) -> array to rows along the softmax axis."""
    xd = _f32(x, "X")
    rank = len(x.shape)
    if rank == 0:
        raise OpError("input of rank 0")
    if node.opset < 13:
        axis = _axis(node.attr("axis", 1), rank)
        rows, n = numel(x.shape[:axis]), numel(x.shape[axis:])
        return [Value(om.FLOAT, x.shape, row_fn(xd, rows, n))]
    axis = _axis(node.attr("axis", -1), rank)
    outer, n, inner = numel(x.shape[:axis]), x.shape[axis], numel(x.shape[axis + 1 :])
    if inner == 1:
        return [Value(om.FLOAT, x.shape, row_fn(xd, outer, n))]
    # Gather each (outer, inner) line into a row, apply, scatter back.
    gathered = array("f")
    for o in range(outer):
        for i in range(inner):
            base = o * n * inner + i
            gathered += xd[base : base + n * inner : inner]
    res = row_fn(gathered, outer * inner, n)
    out = array("f", bytes(4 * len(xd)))
    for o in range(outer):
        for i in range(inner):
            base = o * n * inner + i
            r = (o * inner + i) * n
            out[base : base + n * inner : inner] = res[r : r + n]
    return [Value(om.FLOAT, x.shape, out)]


def _softmax_rows(xd, rows, n):
    out = array("f", bytes(4 * rows * n))
    if rows and n:
        kernels.softmax(xd, rows, n, 1.0, out)
    return out


def _log_softmax_rows(xd, rows, n):
    out = array("f")
    for r in range(rows):
        row = xd[r * n : (r + 1) * n]
        top = max(row)
        if math.isinf(top):
            out += array("f", [v - top if v != top else (0.0 if top > 0 else -math.inf) for v in row])
            continue
        lse = top + math.log(math.fsum(math.exp(v - top) for v in row))
        out += array("f", [v - lse for v in row])
    return out


def op_softmax(node, x):
    return _rows_op(node, x, _softmax_rows)


def op_log_softmax(node, x):
    return _rows_op(node, x, _log_softmax_rows)


# Shapes ------------------------------------------------------------------------------------


def _reshaped(x: Value, shape) -> Value:
    return Value(x.dtype, shape, x.data)


def op_reshape(node, x, shape=None):
    if shape is None:
        target = node.attr("shape")
        if target is None:
            raise OpError("the shape input is missing")
        target = list(target)
    else:
        target = _ints(shape, "shape")
    allowzero = node.attr("allowzero", 0)
    out = []
    infer = None
    for i, d in enumerate(target):
        if d == 0 and not allowzero:
            if i >= len(x.shape):
                raise OpError(f"shape {target}: 0 at index {i} but the input has rank {len(x.shape)}")
            d = x.shape[i]
        elif d == -1:
            if infer is not None:
                raise OpError(f"shape {target} has more than one -1")
            infer = i
        elif d < 0:
            raise OpError(f"shape {target} has a negative dimension")
        out.append(d)
    total = numel(x.shape)
    if infer is not None:
        known = numel(out[:infer] + out[infer + 1 :])
        if known == 0 or total % known:
            raise OpError(f"cannot reshape {list(x.shape)} to {target}")
        out[infer] = total // known
    if numel(out) != total:
        raise OpError(f"cannot reshape {list(x.shape)} ({total} values) to {target}")
    return [_reshaped(x, out)]


def op_flatten(node, x):
    rank = len(x.shape)
    axis = node.attr("axis", 1)
    axis = axis + rank if axis < 0 else axis
    if not 0 <= axis <= rank:
        raise OpError(f"axis {node.attr('axis', 1)} out of range for rank {rank}")
    return [_reshaped(x, (numel(x.shape[:axis]), numel(x.shape[axis:])))]


def _axes_arg(node, axes_input):
    if node.opset >= 13 and axes_input is not None:
        return _ints(axes_input, "axes")
    a = node.attr("axes")
    return None if a is None else list(a)


def op_unsqueeze(node, x, axes=None):
    axes = _axes_arg(node, axes)
    if axes is None:
        raise OpError("axes are required")
    rank = len(x.shape) + len(axes)
    norm = sorted(_axis(a, rank, "axes value") for a in axes)
    if len(set(norm)) != len(norm):
        raise OpError(f"axes {axes} repeat an axis")
    shape = list(x.shape)
    for a in norm:
        shape.insert(a, 1)
    return [_reshaped(x, shape)]


def op_squeeze(node, x, axes=None):
    axes = _axes_arg(node, axes)
    rank = len(x.shape)
    if axes is None:
        drop = {d for d in range(rank) if x.shape[d] == 1}
    else:
        drop = {_axis(a, rank, "axes value") for a in axes}
        for d in drop:
            if x.shape[d] != 1:
                raise OpError(f"cannot squeeze axis {d} of size {x.shape[d]}")
    return [_reshaped(x, [s for d, s in enumerate(x.shape) if d not in drop])]


def op_shape(node, x):
    rank = len(x.shape)
    start, end = node.attr("start", 0), node.attr("end", rank)
    start = min(max(start + rank if start < 0 else start, 0), rank)
    end = min(max(end + rank if end < 0 else end, 0), rank)
    dims = x.shape[start:end]
    return [Value(om.INT64, (len(dims),), array("q", dims))]


def op_gather(node, data, indices):
    idx = _ints(indices, "indices")
    rank = len(data.shape)
    if rank == 0:
        raise OpError("data of rank 0")
    axis = _axis(node.attr("axis", 0), rank)
    size = data.shape[axis]
    inner = numel(data.shape[axis + 1 :])
    outer = numel(data.shape[:axis])
    norm = []
    for i in idx:
        j = i + size if i < 0 else i
        if not 0 <= j < size:
            raise OpError(f"index {i} out of range for axis {axis} of size {size}")
        norm.append(j)
    check_size(outer * len(norm) * inner)
    d = data.data
    out = array(d.typecode)
    for o in range(outer):
        for j in norm:
            start = (o * size + j) * inner
            out += d[start : start + inner]
    shape = data.shape[:axis] + indices.shape + data.shape[axis + 1 :]
    return [Value(data.dtype, shape, out)]


def op_concat(node, *xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        raise OpError("no inputs")
    axis_attr = node.attr("axis")
    if axis_attr is None:
        raise OpError("axis is required")
    rank = len(xs[0].shape)
    axis = _axis(axis_attr, rank)
    for x in xs:
        if x.dtype != xs[0].dtype:
            raise OpError(
                f"inputs of different types {om.dtype_name(xs[0].dtype)} and {om.dtype_name(x.dtype)}"
            )
        if (
            len(x.shape) != rank
            or x.shape[:axis] != xs[0].shape[:axis]
            or x.shape[axis + 1 :] != xs[0].shape[axis + 1 :]
        ):
            raise OpError(f"shapes {[list(v.shape) for v in xs]} do not concatenate on axis {axis}")
    outer = numel(xs[0].shape[:axis])
    inner = numel(xs[0].shape[axis + 1 :])
    check_size(outer * inner * sum(x.shape[axis] for x in xs))
    out = array(xs[0].data.typecode)
    for o in range(outer):
        for x in xs:
            chunk = x.shape[axis] * inner
            out += x.data[o * chunk : (o + 1) * chunk]
    shape = list(xs[0].shape)
    shape[axis] = sum(x.shape[axis] for x in xs)
    return [Value(xs[0].dtype, shape, out)]


def op_transpose(node, x):
    rank = len(x.shape)
    perm = node.attr("perm")
    perm = list(range(rank - 1, -1, -1)) if perm is None else list(perm)
    if sorted(perm) != list(range(rank)):
        raise OpError(f"perm {perm} is not a permutation of {rank} axes")
    shape = tuple(x.shape[p] for p in perm)
    strides = [0] * rank
    s = 1
    for d in range(rank - 1, -1, -1):
        strides[d] = s
        s *= x.shape[d]
    pstrides = [strides[p] for p in perm]
    d = x.data
    out = array(d.typecode, [d[sum(map(mul, idx, pstrides))] for idx in product(*(range(n) for n in shape))])
    return [Value(x.dtype, shape, out)]


def op_constant(node):
    for name in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        v = node.attr(name)
        if v is None:
            continue
        if name == "value":
            return [value_from_tensor(v)]
        if name == "value_float":
            return [Value(om.FLOAT, (), array("f", [v]))]
        if name == "value_floats":
            return [Value(om.FLOAT, (len(v),), array("f", v))]
        if name == "value_int":
            return [Value(om.INT64, (), array("q", [v]))]
        return [Value(om.INT64, (len(v),), array("q", v))]
    raise OpError(f"Constant with attribute {', '.join(node.attrs) or '(none)'} is not supported")


def op_cast(node, x):
    to = node.attr("to")
    if to not in TYPECODES:
        raise OpError(f"cast to {om.dtype_name(to) if to is not None else '(missing)'} is not supported")
    if x.dtype not in TYPECODES:
        raise OpError(f"cast from {om.dtype_name(x.dtype)} is not supported")
    d = x.data
    if to == om.BOOL:
        data = array("B", [1 if v else 0 for v in d])
    elif to in FLOAT_TYPES:
        data = array(TYPECODES[to], d)
    elif x.dtype in FLOAT_TYPES:
        if any(v != v or math.isinf(v) for v in d):
            raise OpError("cannot cast NaN or infinity to an integer type")
        data = _wrap_ints(to, [int(v) for v in d])
    else:
        data = _wrap_ints(to, d)
    return [Value(to, x.shape, data)]


def _wrap_ints(dtype: int, values) -> array:
    tc = TYPECODES[dtype]
    bits = array(tc).itemsize * 8
    signed = tc.islower()
    mask = (1 << bits) - 1
    out = []
    for v in values:
        v &= mask
        if signed and v >> (bits - 1):
            v -= 1 << bits
        out.append(v)
    return array(tc, out)


OPS = {
    "Add": _binary("Add", add),
    "Sub": _binary("Sub", sub),
    "Mul": _binary("Mul", mul),
    "Div": _binary("Div", truediv, _trunc_div),
    "Relu": op_relu,
    "LeakyRelu": op_leaky_relu,
    "Sigmoid": op_sigmoid,
    "Tanh": op_tanh,
    "Conv": op_conv,
    "MaxPool": op_maxpool,
    "GlobalAveragePool": op_global_average_pool,
    "BatchNormalization": op_batchnorm,
    "MatMul": op_matmul,
    "Gemm": op_gemm,
    "Softmax": op_softmax,
    "LogSoftmax": op_log_softmax,
    "Reshape": op_reshape,
    "Flatten": op_flatten,
    "Unsqueeze": op_unsqueeze,
    "Squeeze": op_squeeze,
    "Shape": op_shape,
    "Gather": op_gather,
    "Concat": op_concat,
    "Transpose": op_transpose,
    "Constant": op_constant,
    "Cast": op_cast,
    "Dropout": op_identity,
    "Identity": op_identity,
}

# Inputs each operator needs (the rest are optional).
REQUIRED_INPUTS = {
    "Add": 2,
    "Sub": 2,
    "Mul": 2,
    "Div": 2,
    "Conv": 2,
    "MatMul": 2,
    "Gemm": 2,
    "Reshape": 1,
    "Gather": 2,
    "BatchNormalization": 5,
    "Constant": 0,
    "Concat": 1,
}


class NodeError(Exception):
    """An error while running a node: the node's label and the problem."""


def run_graph(nodes: list[Node], env: dict) -> None:
    """Run the nodes in order; `env` maps value names to Values and receives the outputs."""
    computed = 0
    for node in nodes:
        if node.domain not in ("", "ai.onnx"):
            raise NodeError(f"{node.label()}: operator domain '{node.domain}' is not supported")
        fn = OPS.get(node.op_type)
        if fn is None:
            raise NodeError(
                f"{node.label()}: operator {node.op_type} is not supported by onnx_predict"
                f" (supported: {', '.join(sorted(OPS))})"
            )
        args: list[object] = []
        for name in node.inputs:
            if name == "":
                args.append(None)
                continue
            v = env.get(name)
            if v is None:
                raise NodeError(
                    f"{node.label()}: input '{name}' has no value (not an initializer, the"
                    " model input or an earlier node's output)"
                )
            args.append(v)
        need = REQUIRED_INPUTS.get(node.op_type, 1)
        if len(args) < need or any(a is None for a in args[:need]):
            raise NodeError(f"{node.label()}: {need} input(s) needed, got {len([a for a in args if a])}")
        try:
            results = fn(node, *args)
        except OpError as e:
            raise NodeError(f"{node.label()}: {e}") from None
        except TypeError as e:
            if "positional argument" in str(e):
                raise NodeError(f"{node.label()}: wrong number of inputs ({len(args)})") from None
            raise
        except (ValueError, OverflowError, ZeroDivisionError, IndexError, om.ProtoError) as e:
            raise NodeError(f"{node.label()}: {e}") from None
        for i, name in enumerate(node.outputs):
            if not name:
                continue
            if i >= len(results):
                raise NodeError(f"{node.label()}: output {i} ('{name}') is not supported")
            env[name] = results[i]
            computed += len(results[i].data)
        if computed > MAX_COMPUTED_ELEMENTS:
            raise NodeError(
                f"{node.label()}: the graph's values so far hold {computed} elements, over the limit"
                f" {MAX_COMPUTED_ELEMENTS} (DL_SERVER_MAX_TENSOR_ELEMENTS raises it: twice that)"
            )
