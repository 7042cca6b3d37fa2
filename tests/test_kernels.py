"""The `_dlk` kernels, built natively, against numpy references of the documented math.

Float results are compared bit for bit: each reference performs the same float32 (or,
where Darknet does, double) operations in the same order as the C code is documented to.
Run: .venv/bin/python -m pytest tests/test_kernels.py -q (conftest.py builds build/native first)
"""

import math

import numpy as np
import pytest

import _dlk  # built and put on sys.path by conftest.py

f32, f64 = np.float32, np.float64
ACT_LINEAR, ACT_RELU, ACT_LEAKY, ACT_LOGISTIC = 0, 1, 2, 3


def rnd(rng, n, scale=1.0):
    return (rng.standard_normal(n) * scale).astype(f32)


def same_bits(a, b):
    a, b = np.asarray(a, f32), np.asarray(b, f32)
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def assert_bits(got, want):
    got, want = np.asarray(got, f32), np.asarray(want, f32)
    assert got.shape == want.shape
    bad = np.flatnonzero(got.view(np.uint32) != want.view(np.uint32))
    assert bad.size == 0, (
        f"{bad.size} differing elements, first at {bad[0]}: {got.flat[bad[0]]!r} != {want.flat[bad[0]]!r}"
    )


# ---------------------------------------------------------------------------------------
# gemm


def ref_gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc):
    """Darknet's gemm_cpu in float32, in its loop order: C *= BETA; then for NN/TN
    C[i][j] += (ALPHA*op(A)[i][k]) * op(B)[k][j] for k in order; for NT/TT a sum from 0
    over k in order, then C[i][j] += sum."""
    C = np.array(C, f32)
    Cm = np.lib.stride_tricks.as_strided(C, (M, N), (4 * ldc, 4))
    if K:
        opA = A[: (K - 1) * lda + M] if ta else A[: (M - 1) * lda + K]
        opA = np.lib.stride_tricks.as_strided(opA, (M, K), (4, 4 * lda) if ta else (4 * lda, 4))
        opB = np.lib.stride_tricks.as_strided(B, (K, N), (4, 4 * ldb) if tb else (4 * ldb, 4))
    if beta != 1:
        Cm[...] = Cm * f32(beta)
    if not tb:
        for k in range(K):
            Cm[...] = Cm + (f32(alpha) * opA[:, k])[:, None] * opB[k][None, :]
    else:
        s = np.zeros((M, N), f32)
        for k in range(K):
            s = s + (f32(alpha) * opA[:, k])[:, None] * opB[k][None, :]
        Cm[...] = Cm + s
    return C


def run_gemm(rng, ta, tb, M, N, K, alpha=1.0, beta=1.0, pad=(0, 0, 0)):
    lda = (M if ta else K) + pad[0]
    ldb = (K if tb else N) + pad[1]
    ldc = N + pad[2]
    A = rnd(rng, max((K if ta else M) * lda, 1))
    B = rnd(rng, max((N if tb else K) * ldb, 1))
    C = rnd(rng, M * ldc)
    want = ref_gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc)
    got = C.copy()
    _dlk.gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, got, ldc)
    assert_bits(got, want)
    return got


TRANSPOSES = [(0, 0), (0, 1), (1, 0), (1, 1)]
SHAPES = [
    (1, 1, 1),
    (3, 5, 7),
    (4, 4, 4),
    (8, 4, 4),
    (4, 16, 4),
    (8, 16, 16),
    (6, 13, 75),
    (9, 17, 33),
    (12, 20, 5),
    (17, 33, 65),
    (1, 37, 300),
    (5, 3, 257),
    (33, 7, 2),
    (7, 600, 300),  # several K blocks (N wide), rows <= 8
    (13, 520, 270),  # several K blocks, two row panels with a partial one
    (3, 7, 5000),  # narrow N: deep K blocks, more than one
    (2, 4500, 27),  # several column blocks, one row panel
    (12, 4503, 27),  # several column blocks, partial row panel and column panel
]


@pytest.mark.parametrize("ta,tb", TRANSPOSES)
@pytest.mark.parametrize("M,N,K", SHAPES)
def test_gemm_matches_darknet_loops(ta, tb, M, N, K):
    rng = np.random.default_rng(M * 1000003 + N * 1009 + K + 7 * ta + 13 * tb)
    run_gemm(rng, ta, tb, M, N, K, alpha=1.0, beta=1.0)


@pytest.mark.parametrize("ta,tb", TRANSPOSES)
@pytest.mark.parametrize("alpha,beta", [(1.0, 0.0), (0.5, 1.0), (-1.7, 0.25), (0.0, 2.0), (3.0, -1.0)])
def test_gemm_alpha_beta(ta, tb, alpha, beta):
    rng = np.random.default_rng(42)
    for M, N, K in [(5, 9, 11), (16, 12, 40), (9, 530, 260)]:
        run_gemm(rng, ta, tb, M, N, K, alpha, beta)


@pytest.mark.parametrize("ta,tb", TRANSPOSES)
def test_gemm_leading_dimensions_wider_than_the_matrix(ta, tb):
    rng = np.random.default_rng(3)
    for M, N, K in [(5, 6, 7), (8, 8, 8), (11, 21, 300), (3, 530, 9)]:
        got = run_gemm(rng, ta, tb, M, N, K, 0.75, 0.5, pad=(3, 5, 2))
        # the padding columns of C are untouched (run_gemm compared them to the input too)
        assert got.size == M * (N + 2)


def test_gemm_nn_is_a_sequential_float32_loop_over_k():
    """The brief's definition: for i, for k: a = ALPHA*A[i][k]; for j: C[i][j] += a*B[k][j]."""
    rng = np.random.default_rng(11)
    M, N, K = 10, 37, 300
    A, B = rnd(rng, M * K), rnd(rng, K * N)
    C = rnd(rng, M * N)
    want = C.reshape(M, N).copy()
    Am, Bm = A.reshape(M, K), B.reshape(K, N)
    for i in range(M):
        for k in range(K):
            a = f32(f32(0.3) * Am[i, k])
            want[i] = want[i] + a * Bm[k]  # float32 product, then float32 sum
    got = C.copy()
    _dlk.gemm(0, 0, M, N, K, 0.3, A, K, B, N, 1.0, got, N)
    assert_bits(got.reshape(M, N), want)
    # and it is not what a reassociated (pairwise) sum gives, so the test can tell
    assert not same_bits(got.reshape(M, N), C.reshape(M, N) + (f32(0.3) * Am) @ Bm)


def test_gemm_nt_sums_from_zero_then_adds_to_c():
    """Darknet gemm_nt: sum = 0; sum += ALPHA*A[i][k]*B[j][k] for k in order; C += sum."""
    rng = np.random.default_rng(5)
    M, N, K = 3, 5, 700
    A, B, C = rnd(rng, M * K), rnd(rng, N * K), rnd(rng, M * N, 100.0)
    want = C.reshape(M, N).copy()
    for i in range(M):
        for j in range(N):
            s = f32(0)
            for k in range(K):
                s = f32(s + f32(f32(2.0) * A[i * K + k]) * B[j * K + k])
            want[i, j] = f32(want[i, j] + s)
    got = C.copy()
    _dlk.gemm(0, 1, M, N, K, 2.0, A, K, B, K, 1.0, got, N)
    assert_bits(got.reshape(M, N), want)


def test_gemm_beta_zero_multiplies_like_darknet():
    """C *= 0 as Darknet does: a NaN in C stays NaN, -x becomes -0 before the sum."""
    A = np.ones(4, f32)
    B = np.zeros(4, f32)
    C = np.array([np.nan, -3.0, 2.0, np.inf], f32)
    _dlk.gemm(0, 0, 2, 2, 1, 1.0, A, 1, B, 2, 0.0, C, 2)
    assert np.isnan(C[0]) and np.isnan(C[3])
    assert C[1] == 0 and C[2] == 0


def test_gemm_k_zero_only_scales():
    C = np.array([1, 2, 3, 4], f32)
    _dlk.gemm(0, 0, 2, 2, 0, 1.0, np.zeros(0, f32), 0, np.zeros(0, f32), 2, 0.5, C, 2)
    assert_bits(C, np.array([0.5, 1, 1.5, 2], f32))
    _dlk.gemm(0, 0, 0, 2, 3, 1.0, np.zeros(0, f32), 3, np.zeros(6, f32), 2, 0.5, C, 2)  # M = 0: no-op
    assert_bits(C, np.array([0.5, 1, 1.5, 2], f32))


def test_gemm_accepts_array_and_bytearray():
    from array import array

    A, B = array("f", [1, 2, 3, 4]), bytearray(np.array([1, 0, 0, 1], f32).tobytes())
    C = array("f", [0, 0, 0, 0])
    _dlk.gemm(0, 0, 2, 2, 2, 1.0, A, 2, B, 2, 0.0, C, 2)
    assert list(C) == [1, 2, 3, 4]


@pytest.mark.parametrize(
    "args,message",
    [
        ((0, 0, 2, 2, 2, 1.0, np.zeros(3, f32), 2, np.zeros(4, f32), 2, 1.0, np.zeros(4, f32), 2), "gemm A"),
        ((0, 0, 2, 2, 2, 1.0, np.zeros(4, f32), 2, np.zeros(3, f32), 2, 1.0, np.zeros(4, f32), 2), "gemm B"),
        ((0, 0, 2, 2, 2, 1.0, np.zeros(4, f32), 2, np.zeros(4, f32), 2, 1.0, np.zeros(3, f32), 2), "gemm C"),
        ((1, 1, 2, 3, 4, 1.0, np.zeros(7, f32), 2, np.zeros(12, f32), 4, 1.0, np.zeros(6, f32), 3), "gemm A"),
        ((0, 0, 2, 2, 2, 1.0, np.zeros(4, f32), 1, np.zeros(4, f32), 2, 1.0, np.zeros(4, f32), 2), "leading"),
        ((0, 1, 2, 2, 2, 1.0, np.zeros(4, f32), 2, np.zeros(4, f32), 1, 1.0, np.zeros(4, f32), 2), "leading"),
        ((0, 0, 2, 2, 2, 1.0, np.zeros(4, f32), 2, np.zeros(4, f32), 2, 1.0, np.zeros(4, f32), 1), "leading"),
        (
            (0, 0, -1, 2, 2, 1.0, np.zeros(4, f32), 2, np.zeros(4, f32), 2, 1.0, np.zeros(4, f32), 2),
            "negative",
        ),
        (
            (0, 0, 2, 2, -2, 1.0, np.zeros(4, f32), 2, np.zeros(4, f32), 2, 1.0, np.zeros(4, f32), 2),
            "negative",
        ),
        (
            (0, 0, 2, 2, 2, 1.0, np.zeros(4, f32), -2, np.zeros(4, f32), 2, 1.0, np.zeros(4, f32), 2),
            "leading",
        ),
    ],
)
def test_gemm_rejects_bad_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        _dlk.gemm(*args)


def test_gemm_rejects_readonly_output_and_wrong_types():
    with pytest.raises(TypeError):
        _dlk.gemm(0, 0, 1, 1, 1, 1.0, np.ones(1, f32), 1, np.ones(1, f32), 1, 0.0, bytes(4), 1)
    with pytest.raises(TypeError):
        _dlk.gemm(0, 0, 1, 1, 1, 1.0, "a", 1, np.ones(1, f32), 1, 0.0, np.ones(1, f32), 1)


# ---------------------------------------------------------------------------------------
# im2col / col2im


def c_div(a, b):
    """C integer division (truncation toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def conv_out(n, ksize, stride, pad):
    return c_div(n + 2 * pad - ksize, stride) + 1


def ref_im2col(im, c, h, w, ksize, stride, pad):
    oh, ow = conv_out(h, ksize, stride, pad), conv_out(w, ksize, stride, pad)
    img = im[: c * h * w].reshape(c, h, w)
    col = np.zeros((c * ksize * ksize, oh, ow), f32)
    for k in range(c * ksize * ksize):
        kx, ky, ch = k % ksize, (k // ksize) % ksize, k // ksize // ksize
        for oy in range(oh):
            y = oy * stride + ky - pad
            for ox in range(ow):
                x = ox * stride + kx - pad
                if 0 <= y < h and 0 <= x < w:
                    col[k, oy, ox] = img[ch, y, x]
    return col.ravel()


def ref_col2im(col, im, c, h, w, ksize, stride, pad):
    """Darknet col2im_cpu: im[...] += col[k][p] in (k, oy, ox) order, float32 adds."""
    oh, ow = conv_out(h, ksize, stride, pad), conv_out(w, ksize, stride, pad)
    img = np.array(im, f32).reshape(c, h, w)
    cols = col.reshape(c * ksize * ksize, oh, ow)
    for k in range(c * ksize * ksize):
        kx, ky, ch = k % ksize, (k // ksize) % ksize, k // ksize // ksize
        for oy in range(oh):
            y = oy * stride + ky - pad
            if not 0 <= y < h:
                continue
            for ox in range(ow):  # distinct ox hit distinct pixels: order per pixel kept
                x = ox * stride + kx - pad
                if 0 <= x < w:
                    img[ch, y, x] = img[ch, y, x] + cols[k, oy, ox]
    return img.ravel()


GEOMETRIES = [
    (c, h, w, ksize, stride, pad)
    for c, h, w in [(1, 5, 5), (2, 7, 9), (3, 8, 6)]
    for ksize in (1, 3, 5)
    for stride in (1, 2)
    for pad in (0, 1, 2)
    if conv_out(h, ksize, stride, pad) > 0 and conv_out(w, ksize, stride, pad) > 0
] + [(2, 2, 3, 5, 2, 1), (1, 1, 1, 3, 1, 1), (1, 3, 2, 1, 3, 0)]


@pytest.mark.parametrize("c,h,w,ksize,stride,pad", GEOMETRIES)
def test_im2col_col2im(c, h, w, ksize, stride, pad):
    rng = np.random.default_rng(c * 100 + h * 10 + w + ksize * 1000 + stride * 7 + pad * 13)
    oh, ow = conv_out(h, ksize, stride, pad), conv_out(w, ksize, stride, pad)
    n_col = c * ksize * ksize * oh * ow
    im = rnd(rng, c * h * w)
    col = np.full(n_col, np.nan, f32)  # every element must be written
    _dlk.im2col(im, c, h, w, ksize, stride, pad, col)
    assert_bits(col, ref_im2col(im, c, h, w, ksize, stride, pad))

    y = rnd(rng, n_col)
    base = rnd(rng, c * h * w)
    back = base.copy()
    _dlk.col2im(y, c, h, w, ksize, stride, pad, back)
    assert_bits(back, ref_col2im(y, base, c, h, w, ksize, stride, pad))

    # adjointness: <im2col(x), y> == <x, col2im(y)>
    adj = np.zeros(c * h * w, f32)
    _dlk.col2im(y, c, h, w, ksize, stride, pad, adj)
    lhs = float(np.dot(col.astype(f64), y.astype(f64)))
    rhs = float(np.dot(im.astype(f64), adj.astype(f64)))
    assert lhs == pytest.approx(rhs, rel=1e-5, abs=1e-4)


def test_im2col_larger_image():
    rng = np.random.default_rng(9)
    c, h, w = 3, 26, 31
    for ksize, stride, pad in [(3, 1, 1), (3, 2, 1), (5, 1, 2), (1, 1, 0)]:
        oh, ow = conv_out(h, ksize, stride, pad), conv_out(w, ksize, stride, pad)
        im = rnd(rng, c * h * w)
        col = np.empty(c * ksize * ksize * oh * ow, f32)
        _dlk.im2col(im, c, h, w, ksize, stride, pad, col)
        assert_bits(col, ref_im2col(im, c, h, w, ksize, stride, pad))


@pytest.mark.parametrize("name", ["im2col", "col2im"])
@pytest.mark.parametrize(
    "geom,im_n,col_n",
    [
        ((0, 4, 4, 3, 1, 1), 16, 200),
        ((1, 4, 4, 0, 1, 1), 16, 200),
        ((1, 4, 4, 3, 0, 1), 16, 200),
        ((1, 4, 4, 3, 1, -1), 16, 200),
        ((1, 4, 4, 5, 1, 0), 16, 200),  # kernel larger than the image
        ((1, 4, 4, 3, 1, 1), 15, 144),  # image too small
        ((1, 4, 4, 3, 1, 1), 16, 143),  # columns too small
    ],
)
def test_im2col_col2im_reject_bad_geometry(name, geom, im_n, col_n):
    im, col = np.zeros(im_n, f32), np.zeros(col_n, f32)
    with pytest.raises(ValueError):
        if name == "im2col":
            _dlk.im2col(im, *geom, col)
        else:
            _dlk.col2im(col, *geom, im)


# ---------------------------------------------------------------------------------------
# bias, activations, batchnorm


def test_add_bias():
    rng = np.random.default_rng(1)
    batch, n, size = 3, 5, 7
    out, bias = rnd(rng, batch * n * size), rnd(rng, n)
    want = (out.reshape(batch, n, size) + bias[None, :, None]).ravel()
    _dlk.add_bias(out, bias, batch, n, size)
    assert_bits(out, want)
    with pytest.raises(ValueError):
        _dlk.add_bias(out, bias[:4], batch, n, size)
    with pytest.raises(ValueError):
        _dlk.add_bias(out[:-1], bias, batch, n, size)
    with pytest.raises(ValueError):
        _dlk.add_bias(out, bias, -1, n, size)


def activation_inputs():
    rng = np.random.default_rng(2)
    special = np.array(
        [
            0.0,
            -0.0,
            1.0,
            -1.0,
            1e-30,
            -1e-30,
            88.0,
            -88.0,
            104.0,
            -104.0,
            3.4e38,
            -3.4e38,
            np.inf,
            -np.inf,
            np.nan,
            0.1,
            -0.1,
            1e-45,
            -1e-45,
        ],
        f32,
    )
    return np.concatenate([special, rnd(rng, 500, 5.0)])


def exp_or_inf(v):
    try:
        return math.exp(v)
    except OverflowError:
        return math.inf


def ref_activate(x, act):
    if act == ACT_LINEAR:
        return x.copy()
    if act == ACT_RELU:
        return x * (x > 0).astype(f32)  # -0.0 for negative x
    if act == ACT_LEAKY:
        return np.where(x > 0, x, (0.1 * x.astype(f64)).astype(f32))
    if act == ACT_LOGISTIC:  # libm exp, as the C code
        return np.array([1.0 / (1.0 + exp_or_inf(-float(v))) for v in x]).astype(f32)
    raise AssertionError(act)


@pytest.mark.parametrize("act", [ACT_LINEAR, ACT_RELU, ACT_LEAKY, ACT_LOGISTIC])
def test_activate(act):
    x = activation_inputs()
    with np.errstate(all="ignore"):
        want = ref_activate(x, act)
    got = x.copy()
    _dlk.activate(got, len(got), act)
    assert_bits(got, want)


def test_activate_relu_keeps_minus_zero_and_leaky_rounds_in_double():
    x = np.array([-2.0, 0.3], f32)
    _dlk.activate(x, 2, ACT_RELU)
    assert np.signbit(x[0]) and x[0] == 0 and x[1] == f32(0.3)
    x = np.array([-0.3], f32)
    _dlk.activate(x, 1, ACT_LEAKY)
    assert x[0] == f32(0.1 * float(f32(-0.3)))


def ref_gradient(y, act, delta):
    if act == ACT_LINEAR:
        return delta.copy()
    if act == ACT_RELU:
        return delta * (y > 0).astype(f32)
    if act == ACT_LEAKY:
        return delta * np.where(y > 0, f32(1), f32(0.1)).astype(f32)
    if act == ACT_LOGISTIC:
        return delta * ((f32(1) - y) * y)
    raise AssertionError(act)


@pytest.mark.parametrize("act", [ACT_LINEAR, ACT_RELU, ACT_LEAKY, ACT_LOGISTIC])
def test_gradient(act):
    rng = np.random.default_rng(act)
    x = activation_inputs()
    with np.errstate(all="ignore"):
        y = ref_activate(x, act)
    delta = rnd(rng, len(y))
    with np.errstate(all="ignore"):
        want = ref_gradient(y, act, delta)
        _dlk.gradient(y, len(y), act, delta)
    assert_bits(delta, want)


def test_activation_errors():
    x = np.zeros(4, f32)
    for bad in (-1, 14, 99):  # 14 = ACT_COUNT: every Darknet activation has a code below
        with pytest.raises(ValueError, match="activation"):
            _dlk.activate(x, 4, bad)
        with pytest.raises(ValueError, match="activation"):
            _dlk.gradient(x, 4, bad, x.copy())
    with pytest.raises(ValueError):
        _dlk.activate(x, 5, ACT_RELU)
    with pytest.raises(ValueError):
        _dlk.activate(x, -1, ACT_RELU)
    with pytest.raises(ValueError):
        _dlk.gradient(x, 4, ACT_RELU, np.zeros(3, f32))
    with pytest.raises(ValueError):
        _dlk.gradient(x[:3], 4, ACT_RELU, np.zeros(4, f32))
    with pytest.raises(TypeError):
        _dlk.activate(bytes(16), 4, ACT_RELU)  # read-only


def test_batchnorm_infer():
    rng = np.random.default_rng(4)
    batch, n, size = 2, 6, 9
    x = rnd(rng, batch * n * size, 3.0)
    mean, var = rnd(rng, n), np.abs(rnd(rng, n)) + f32(0.01)
    var[0] = 0.0
    scales, biases = rnd(rng, n), rnd(rng, n)
    xs = x.reshape(batch, n, size)
    diff = xs - mean[None, :, None]  # float
    den = np.sqrt(var.astype(f64)) + f64(f32(0.000001))  # double
    t = (diff.astype(f64) / den[None, :, None]).astype(f32)
    want = ((t * scales[None, :, None]) + biases[None, :, None]).ravel()
    _dlk.batchnorm_infer(x, mean, var, scales, biases, batch, n, size)
    assert_bits(x, want)
    for i in range(1, 5):
        params = [mean, var, scales, biases]
        params[i - 1] = params[i - 1][:-1]
        with pytest.raises(ValueError):
            _dlk.batchnorm_infer(x, *params, batch, n, size)
    with pytest.raises(ValueError):
        _dlk.batchnorm_infer(x[:-1], mean, var, scales, biases, batch, n, size)


# ---------------------------------------------------------------------------------------
# maxpool


def ref_maxpool(x, batch, c, h, w, size, stride, pad):
    oh, ow = c_div(h + pad - size, stride) + 1, c_div(w + pad - size, stride) + 1
    off = -(pad // 2)
    out = np.zeros((batch * c, oh, ow), f32)
    idx = np.zeros((batch * c, oh, ow), np.int32)
    flt_max = np.finfo(f32).max
    for bc in range(batch * c):
        for oy in range(oh):
            for ox in range(ow):
                best, best_i = -flt_max, -1
                for ky in range(size):
                    for kx in range(size):
                        y, xx = off + oy * stride + ky, off + ox * stride + kx
                        valid = 0 <= y < h and 0 <= xx < w
                        v = x[bc * h * w + y * w + xx] if valid else -flt_max
                        if v > best:
                            best, best_i = v, bc * h * w + y * w + xx
                out[bc, oy, ox], idx[bc, oy, ox] = best, best_i
    return out.ravel(), idx.ravel()


@pytest.mark.parametrize(
    "batch,c,h,w,size,stride,pad",
    [
        (1, 1, 4, 4, 2, 2, 1),  # Darknet default padding = size-1 = 1: offset 0
        (2, 3, 28, 28, 2, 2, 1),
        (1, 2, 13, 13, 2, 1, 1),  # yolov3-tiny layer 11: -inf padding right and bottom
        (1, 2, 7, 5, 3, 2, 2),  # offset -1: top/left padding too
        (2, 1, 6, 9, 3, 1, 0),
        (1, 1, 5, 5, 1, 1, 0),
    ],
)
def test_maxpool_forward_backward(batch, c, h, w, size, stride, pad):
    rng = np.random.default_rng(h * w + size)
    x = np.round(rnd(rng, batch * c * h * w, 2.0))  # many ties: the first strict max wins
    want_out, want_idx = ref_maxpool(x, batch, c, h, w, size, stride, pad)
    out = np.full(want_out.size, np.nan, f32)
    idx = np.full(want_out.size, -7, np.int32)
    _dlk.maxpool_forward(x, batch, c, h, w, size, stride, pad, out, idx)
    assert_bits(out, want_out)
    assert np.array_equal(idx, want_idx)

    delta = rnd(rng, out.size)
    in_delta = rnd(rng, x.size)
    want = in_delta.copy()
    for i, j in enumerate(want_idx):
        want[j] = want[j] + delta[i]
    _dlk.maxpool_backward(delta, idx, delta.size, in_delta, in_delta.size)
    assert_bits(in_delta, want)


def test_maxpool_size2_stride1_pads_right_and_bottom_with_minus_infinity():
    x = -np.arange(1, 10, dtype=f32)  # 3x3, all negative: padding must not win
    out, idx = np.zeros(9, f32), np.zeros(9, np.int32)
    _dlk.maxpool_forward(x, 1, 1, 3, 3, 2, 1, 1, out, idx)
    assert list(idx) == [0, 1, 2, 3, 4, 5, 6, 7, 8]
    assert_bits(out, x)


def test_maxpool_first_strict_max_wins():
    x = np.array([5, 5, 5, 5], f32)
    out, idx = np.zeros(1, f32), np.zeros(1, np.int32)
    _dlk.maxpool_forward(x, 1, 1, 2, 2, 2, 2, 1, out, idx)
    assert idx[0] == 0 and out[0] == 5
    x = np.array([1, 7, 7, 3], f32)
    _dlk.maxpool_forward(x, 1, 1, 2, 2, 2, 2, 1, out, idx)
    assert idx[0] == 1  # ky outer, kx inner


def test_maxpool_window_without_a_value_keeps_index_minus_one():
    x = np.array([-np.inf, np.nan, -np.inf, -np.inf], f32)
    out, idx = np.zeros(1, f32), np.zeros(1, np.int32)
    _dlk.maxpool_forward(x, 1, 1, 2, 2, 2, 2, 1, out, idx)
    assert idx[0] == -1 and out[0] == -np.finfo(f32).max
    in_delta = np.zeros(4, f32)
    _dlk.maxpool_backward(np.ones(1, f32), idx, 1, in_delta, 4)  # skipped, not in_delta[-1]
    assert not in_delta.any()


def test_maxpool_errors():
    x = np.zeros(16, f32)
    out, idx = np.zeros(4, f32), np.zeros(4, np.int32)
    for geom in [
        (1, 0, 4, 4, 2, 2, 1),
        (1, 1, 4, 4, 0, 2, 1),
        (1, 1, 4, 4, 2, 0, 1),
        (1, 1, 4, 4, 2, 2, -1),
        (-1, 1, 4, 4, 2, 2, 1),
        (1, 1, 4, 4, 6, 1, 0),
    ]:
        with pytest.raises(ValueError):
            _dlk.maxpool_forward(x, *geom, out, idx)
    with pytest.raises(ValueError):
        _dlk.maxpool_forward(x[:15], 1, 1, 4, 4, 2, 2, 1, out, idx)
    with pytest.raises(ValueError):
        _dlk.maxpool_forward(x, 1, 1, 4, 4, 2, 2, 1, out[:3], idx)
    with pytest.raises(ValueError):
        _dlk.maxpool_forward(x, 1, 1, 4, 4, 2, 2, 1, out, idx[:3])
    # backward: an index out of range fails before anything is written
    in_delta = np.zeros(16, f32)
    for bad in (16, -2, 1 << 30):
        with pytest.raises(ValueError, match="out of range"):
            _dlk.maxpool_backward(np.ones(4, f32), np.array([0, 1, bad, 3], np.int32), 4, in_delta, 16)
        assert not in_delta.any()
    with pytest.raises(ValueError):
        _dlk.maxpool_backward(np.ones(4, f32), np.zeros(3, np.int32), 4, in_delta, 16)
    with pytest.raises(ValueError):
        _dlk.maxpool_backward(np.ones(4, f32), np.zeros(4, np.int32), 4, in_delta, 17)


# ---------------------------------------------------------------------------------------
# softmax, level-1 BLAS, pixels


def ref_softmax(x, batch, n, temp):
    out = np.zeros(batch * n, f32)
    t = f32(temp)
    for b in range(batch):
        row = x[b * n : (b + 1) * n]
        largest = -np.finfo(f32).max
        for v in row:
            if v > largest:
                largest = v
        s = f32(0)
        es = []
        for v in row:
            e = f32(math.exp(float(f32(f32(v / t) - f32(largest / t)))))
            s = f32(s + e)
            es.append(e)
        out[b * n : (b + 1) * n] = np.array(es, f32) / s
    return out


@pytest.mark.parametrize("batch,n,temp", [(1, 10, 1.0), (4, 13, 1.0), (3, 1, 1.0), (2, 7, 0.5), (2, 33, 3.0)])
def test_softmax(batch, n, temp):
    rng = np.random.default_rng(n)
    x = rnd(rng, batch * n, 4.0)
    out = np.zeros_like(x)
    _dlk.softmax(x, batch, n, temp, out)
    assert_bits(out, ref_softmax(x, batch, n, temp))
    _dlk.softmax(x, batch, n, temp, x)  # in place, as Darknet allows
    assert_bits(x, out)


def test_softmax_errors():
    x = np.zeros(6, f32)
    with pytest.raises(ValueError):
        _dlk.softmax(x, 2, 0, 1.0, x.copy())
    with pytest.raises(ValueError):
        _dlk.softmax(x, -1, 3, 1.0, x.copy())
    with pytest.raises(ValueError):
        _dlk.softmax(x, 2, 4, 1.0, np.zeros(8, f32))
    with pytest.raises(ValueError):
        _dlk.softmax(x, 2, 3, 1.0, np.zeros(5, f32))


def test_axpy_scal_fill():
    rng = np.random.default_rng(6)
    x, y = rnd(rng, 37), rnd(rng, 40)
    want = y.copy()
    want[:37] = y[:37] + f32(0.3) * x
    _dlk.axpy(37, 0.3, x, y)
    assert_bits(y, want)
    want = y.copy()
    want[:30] = y[:30] * f32(-1.5)
    _dlk.scal(30, -1.5, y)
    assert_bits(y, want)
    _dlk.fill(20, 2.5, y)
    assert (y[:20] == 2.5).all() and same_bits(y[20:], want[20:])
    _dlk.axpy(0, 1.0, x[:0], y)
    with pytest.raises(ValueError):
        _dlk.axpy(38, 1.0, x, y)
    with pytest.raises(ValueError):
        _dlk.axpy(5, 1.0, x, y[:4])
    with pytest.raises(ValueError):
        _dlk.scal(41, 1.0, y)
    with pytest.raises(ValueError):
        _dlk.fill(-1, 1.0, y)


@pytest.mark.parametrize("comps", [1, 2, 3, 4])
def test_pixels_to_chw(comps):
    rng = np.random.default_rng(comps)
    w, h = 7, 5
    pixels = rng.integers(0, 256, w * h * comps, dtype=np.uint8)
    pixels[:comps] = 255
    pixels[comps : 2 * comps] = 0
    out = np.full(3 * w * h, np.nan, f32)
    _dlk.pixels_to_chw(bytes(pixels), w, h, comps, out)
    px = pixels.reshape(h * w, comps).astype(f64)
    rgb = px[:, [0, 0, 0]] if comps <= 2 else px[:, :3]  # gray replicated, alpha dropped
    want = (rgb / 255.0).astype(f32).T.ravel()
    assert_bits(out, want)
    assert out[0] == 1.0 and out[1] == 0.0


def test_pixels_to_chw_errors():
    out = np.zeros(3 * 4, f32)
    for comps in (0, 5):
        with pytest.raises(ValueError):
            _dlk.pixels_to_chw(bytes(16 * 4), 2, 2, comps, out)
    with pytest.raises(ValueError):
        _dlk.pixels_to_chw(bytes(11), 2, 2, 3, out)
    with pytest.raises(ValueError):
        _dlk.pixels_to_chw(bytes(12), 2, 2, 3, out[:11])
    with pytest.raises(ValueError):
        _dlk.pixels_to_chw(bytes(12), 0, 2, 3, out)


# ---------------------------------------------------------------------------------------
# direct convolution (guest/kernels/direct_conv.c): same floats as im2col + gemm_nn


@pytest.mark.skipif(not hasattr(_dlk, "conv2d_direct"), reason="no conv2d_direct kernel")
@pytest.mark.parametrize(
    "batch,c,h,w,n,size,pad",
    [(1, 1, 28, 28, 6, 5, 2), (2, 3, 9, 11, 5, 3, 1), (1, 2, 6, 6, 3, 1, 0), (1, 1, 4, 5, 2, 3, 0)],
)
def test_conv2d_direct_equals_im2col_gemm(batch, c, h, w, n, size, pad):
    rng = np.random.default_rng(size * 10 + c)
    x = rnd(rng, batch * c * h * w)
    W = rnd(rng, n * c * size * size)
    oh, ow = h + 2 * pad - size + 1, w + 2 * pad - size + 1
    K = c * size * size
    want = np.zeros(batch * n * oh * ow, f32)
    col = np.zeros(K * oh * ow, f32)
    for b in range(batch):
        _dlk.im2col(x[b * c * h * w :], c, h, w, size, 1, pad, col)
        view = want[b * n * oh * ow : (b + 1) * n * oh * ow]
        _dlk.gemm(0, 0, n, oh * ow, K, 1.0, W, K, col, oh * ow, 1.0, view, oh * ow)
    out = np.full(want.size, np.nan, f32)
    ws = np.zeros(_dlk.conv2d_direct_workspace(c, h, w, size, pad), f32)
    _dlk.conv2d_direct(x, batch, c, h, w, W, n, size, pad, out, ws)
    assert_bits(out, want)
