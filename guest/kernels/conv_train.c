/* Convolution for training (stride 1, groups 1, square kernel `size` <= 8, zero padding `pad`),
 * and the 2x2/2 max pool whose windows all lie inside the image.
 *
 * Every kernel here gives the same floats as Darknet's im2col + gemm loops (spec §4.2, §4.5),
 * except for the sign of a zero result: terms that are exactly zero are skipped, and adding a
 * zero product to a float sum never changes it (x + (+-0) == x for x != 0; a sum that starts
 * at +0 stays +0). [A skipped term 0 * inf or 0 * NaN would have made Darknet's sum NaN:
 * only weights that are already inf/NaN can do that.]
 *
 * conv_forward (out_h = h + 2*pad - size + 1, out_w likewise):
 *   out[b][f][y][x] = act( (0 + sum over k = (ch, ky, kx) in order of
 *                              W[f][k] * in[b][ch][y + ky - pad][x + kx - pad])  + bias[f] )
 *   (0 outside the image). The sum runs in Darknet's k order, one float accumulator per output;
 *   a row segment of the input that is all zero for 8 neighbouring outputs is skipped.
 *
 * conv_backward (delta is Darknet's negative gradient):
 *   delta[i] *= act'(out[i])                                         (all of the batch first)
 *   per image b, filter f:
 *     bias_upd[f] += (0 + sum_p delta[b][f][p])                      (p in order)
 *     W_upd[f][k] += (0 + sum_p delta[b][f][p] * in_pad[ch][y + ky][x + kx])   (p = (y, x) in order)
 *   and, if prev_delta is given, per image b, for each input pixel (ch, iy, ix):
 *     prev[ch][iy][ix] += t(k) for k = (ky, kx) in ascending order, where
 *     t(k) = 0 + sum over f in order of W[f][ch][ky][kx] * delta[b][f][iy + pad - ky][ix + pad - kx]
 *   (only positions inside the output) -- Darknet's colδ = W^T delta (gemm TN, f order) followed
 *   by col2im, which adds colδ[k][p] to each pixel in ascending k.
 *   The weight gradient visits the nonzero deltas only (after maxpool and relu most are zero).
 *   When the channel planes of an image are bit-identical (a grayscale image given as R = G = B),
 *   the sums for channel 0 are the sums of every channel: they are computed once and added to
 *   each channel's W_upd (the same operations on the same values: the same floats).
 *   The input gradient is scattered from the positions p (descending) where some delta is
 *   nonzero: each pixel then receives its t(k) in ascending k, as in col2im.
 *
 * maxpool_forward_2x2 (size 2, stride 2, h and w even: every window inside the image):
 *   out[bc][oy][ox] = first strict maximum of in[bc][2oy][2ox], [2oy][2ox+1], [2oy+1][2ox], [2oy+1][2ox+1]
 *   indexes[...] = its flat input index (bc*h*w + y*w + x), as Darknet's maxpool forward. */
#include "dlk_common.h"

#define CT_INLINE static inline __attribute__((always_inline))
#define CT_UNROLL _Pragma("clang loop unroll(full)")
#pragma clang diagnostic ignored "-Wpass-failed"  /* loops with a run-time bound (generic sizes) stay loops */
#define CT_MAX_SIZE 8
typedef int32_t v4i __attribute__((vector_size(16)));

CT_INLINE v4f ct_activate(v4f v, int act)
{
    if (act == 1) {                                    /* relu: x * (x > 0), -0 for negative x */
        v4i m = v > v4f_splat(0.f);
        return v * (v4f)(m & (v4i)v4f_splat(1.f));
    }
    return v;                                          /* linear (others: scalar pass after) */
}

static void ct_activate_scalar(float *v, long long n, int act)
{
    switch (act) {
    case 2: for (long long i = 0; i < n; ++i) v[i] = v[i] > 0 ? v[i] : (float)(.1 * v[i]); break;
    case 3: for (long long i = 0; i < n; ++i) v[i] = (float)(1. / (1. + exp(-(double)v[i]))); break;
    default: break;
    }
}

static void ct_gradient(const float *y, float *d, long long n, int act)
{
    switch (act) {
    case 1: for (long long i = 0; i < n; ++i) d[i] *= (float)(y[i] > 0); break;
    case 2: for (long long i = 0; i < n; ++i) d[i] *= y[i] > 0 ? 1.f : .1f; break;
    case 3: for (long long i = 0; i < n; ++i) d[i] *= (1 - y[i]) * y[i]; break;
    default: break;
    }
}

/* ---------------------------------------------------------------- forward */

/* NF filters x 4*V outputs (row y, columns x0 ..) in NF*V accumulators. S: kernel size known at
 * compile time (0: use size). W: the group's weights packed as [ch][ky][kx][r] (constant offsets
 * from one pointer: Cranelift keeps fewer addresses live). nzm[ch*PH + r] is the bit mask of the nonzero columns x0 .. x0 + 14
 * of padded row r: a row (ky) whose window is all zero is skipped, and with KX so is a single kx
 * whose 4*V columns are all zero. */
CT_INLINE void ct_fwd_tile(const int NF, const int S, const int V, const int KX, int size, const float *pin,
                           int c, int PH, int PW, const uint16_t *nzm, const float *W, int K, int y, int x0,
                           v4f acc[][2])
{
    const int sz = S ? S : size;
    const unsigned lanes = V == 2 ? 0xFF : 0xF;
    CT_UNROLL for (int r = 0; r < NF; ++r) acc[r][0] = acc[r][1] = v4f_splat(0.f);
    for (int ch = 0; ch < c; ++ch)
        for (int ky = 0; ky < sz; ++ky) {
            unsigned m = nzm[ch * PH + y + ky];
            if (!m) continue;
            const float *row = pin + ((ptrdiff_t)ch * PH + y + ky) * PW + x0;
            const float *wk = W + (ch * sz + ky) * sz * NF;     /* packed: [ch][ky][kx][r] */
            _Pragma("clang loop unroll(disable)")
            for (int kx = 0; kx < sz; ++kx) {
                if (KX && !((m >> kx) & lanes)) continue;
                v4f v0 = v4f_load(row + kx), v1 = V == 2 ? v4f_load(row + kx + 4) : v0;
                CT_UNROLL for (int r = 0; r < NF; ++r) {
                    v4f wv = v4f_splat(wk[kx * NF + r]);
                    acc[r][0] += wv * v0;
                    if (V == 2) acc[r][1] += wv * v1;
                }
            }
        }
}

CT_INLINE void ct_fwd_store(v4f acc, float bias, int act, float *dst, int nx)
{
    v4f v = ct_activate(acc + v4f_splat(bias), act);
    if (nx >= 4) { v4f_store(dst, v); return; }
    switch (nx) {                                      /* no loop: it would become a memory.copy */
    case 3: dst[2] = v[2]; /* fall through */
    case 2: dst[1] = v[1]; /* fall through */
    case 1: dst[0] = v[0]; /* fall through */
    default: break;
    }
}

/* All output rows of NF filters; nzm holds, per block of 8 columns, c*PH masks. */
CT_INLINE void ct_fwd_filters(const int NF, const int S, const int KX, int size, const float *pin, int c, int PH,
                              int PW, const uint16_t *nzm, int nblk, const float *W, int K, const float *bias,
                              int act, int oh, int ow, float *out)
{
    v4f acc[6][2];
    ptrdiff_t plane = (ptrdiff_t)oh * ow;
    for (int y = 0; y < oh; ++y)
        for (int blk = 0; blk < nblk; ++blk) {
            int x0 = 8 * blk, nx = ow - x0 < 8 ? ow - x0 : 8;
            const uint16_t *m = nzm + (ptrdiff_t)blk * c * PH;
            if (nx > 4) ct_fwd_tile(NF, S, 2, KX, size, pin, c, PH, PW, m, W, K, y, x0, acc);
            else ct_fwd_tile(NF, S, 1, KX, size, pin, c, PH, PW, m, W, K, y, x0, acc);
            float *o = out + (ptrdiff_t)y * ow + x0;
            CT_UNROLL for (int r = 0; r < NF; ++r) {
                ct_fwd_store(acc[r][0], bias[r], act, o + r * plane, nx);
                if (nx > 4) ct_fwd_store(acc[r][1], bias[r], act, o + r * plane + 4, nx - 4);
            }
        }
}

#define CT_FWD_VARIANT(NF, S, KX) \
    static void ct_fwd_##NF##_##S##_##KX(int size, const float *pin, int c, int PH, int PW, const uint16_t *nzm, \
                                  int nblk, const float *W, int K, const float *bias, int act, int oh, int ow, \
                                  float *out) \
    { ct_fwd_filters(NF, S, KX, size, pin, c, PH, PW, nzm, nblk, W, K, bias, act, oh, ow, out); }
#define CT_FWD_SIZES(NF, KX) CT_FWD_VARIANT(NF, 0, KX) CT_FWD_VARIANT(NF, 3, KX) CT_FWD_VARIANT(NF, 5, KX)
CT_FWD_SIZES(1, 0) CT_FWD_SIZES(2, 0) CT_FWD_SIZES(3, 0) CT_FWD_SIZES(4, 0) CT_FWD_SIZES(6, 0)
CT_FWD_SIZES(1, 1) CT_FWD_SIZES(2, 1) CT_FWD_SIZES(3, 1) CT_FWD_SIZES(4, 1) CT_FWD_SIZES(6, 1)

typedef void (*ct_fwd_fn)(int, const float *, int, int, int, const uint16_t *, int, const float *, int,
                          const float *, int, int, int, float *);

static ct_fwd_fn ct_pick_fwd(int nf, int size, int kx)
{
#define CT_ROW(NF, KX) {ct_fwd_##NF##_0_##KX, ct_fwd_##NF##_3_##KX, ct_fwd_##NF##_5_##KX}
    static const ct_fwd_fn table[2][6][3] = {
        {CT_ROW(1, 0), CT_ROW(2, 0), CT_ROW(3, 0), CT_ROW(4, 0), {0}, CT_ROW(6, 0)},
        {CT_ROW(1, 1), CT_ROW(2, 1), CT_ROW(3, 1), CT_ROW(4, 1), {0}, CT_ROW(6, 1)}};
#undef CT_ROW
    return table[kx][nf - 1][size == 3 ? 1 : size == 5 ? 2 : 0];
}

/* Geometry shared by forward and backward: padded planes of the input. */
typedef struct {
    int c, h, w, n, size, pad, oh, ow, K;
    int PH, PW;            /* padded input plane (forward reads 8*nblk + size - 1 columns) */
    int nblk;              /* blocks of 8 output columns */
} ct_geom;

static int ct_geometry(ct_geom *g, int c, int h, int w, int n, int size, int pad, const char *who)
{
    if (c <= 0 || h <= 0 || w <= 0 || n <= 0 || size <= 0 || size > CT_MAX_SIZE || pad < 0 || pad >= size) {
        PyErr_Format(PyExc_ValueError, "_dlk.%s: bad geometry (size 1..%d, 0 <= pad < size)", who, CT_MAX_SIZE);
        return 0;
    }
    g->c = c; g->h = h; g->w = w; g->n = n; g->size = size; g->pad = pad;
    g->oh = h + 2 * pad - size + 1;
    g->ow = w + 2 * pad - size + 1;
    if (g->oh <= 0 || g->ow <= 0) {
        PyErr_Format(PyExc_ValueError, "_dlk.%s: kernel larger than image", who);
        return 0;
    }
    if ((long long)c * h * w > (1 << 26) || (long long)n * g->oh * g->ow > (1 << 26) || n > (1 << 16)) {
        PyErr_Format(PyExc_ValueError, "_dlk.%s: layer too large", who);
        return 0;
    }
    g->K = c * size * size;
    g->nblk = (g->ow + 7) / 8;
    g->PH = h + 2 * pad;
    g->PW = w + 2 * pad;
    if (g->PW < 8 * g->nblk + size - 1) g->PW = 8 * g->nblk + size - 1;
    return 1;
}

/* dst[0..n) = src[0..n), without a memory.copy call (a libcall under wasmtime). */
static inline __attribute__((no_builtin("memcpy"))) void ct_copy(float *dst, const float *src, int n)
{
    int i = 0;
    for (; i + 4 <= n; i += 4) v4f_store(dst + i, v4f_load(src + i));
    for (; i < n; ++i) dst[i] = src[i];
}

/* Copies image `src` (c x h x w) into the interior of the zero-bordered planes at `pin`. */
static void ct_pad_image(const ct_geom *g, const float *src, float *pin)
{
    for (int ch = 0; ch < g->c; ++ch)
        for (int y = 0; y < g->h; ++y)
            ct_copy(pin + ((ptrdiff_t)ch * g->PH + y + g->pad) * g->PW + g->pad,
                    src + ((ptrdiff_t)ch * g->h + y) * g->w, g->w);
}

static PyObject *dlk_conv_forward(PyObject *self, PyObject *args)
{
    Py_buffer in, weights, biases, out;
    int batch, c, h, w, n, size, pad, act, variant = 0;
    if (!PyArg_ParseTuple(args, "y*iiiiy*iiiy*iw*|i", &in, &batch, &c, &h, &w, &weights, &n, &size, &pad,
                          &biases, &act, &out, &variant))
        return NULL;
    PyObject *result = NULL;
    float *pin = NULL, *wpack = NULL;
    uint16_t *nzm = NULL;
    int *gstart = NULL;
    ct_geom g;
    if (batch < 0 || act < 0 || act > 3) { PyErr_SetString(PyExc_ValueError, "_dlk.conv_forward: bad batch or activation"); goto done; }
    if (!ct_geometry(&g, c, h, w, n, size, pad, "conv_forward")) goto done;
    long long in_size = (long long)c * h * w, out_size = (long long)n * g.oh * g.ow;
    if (!NEED_F(in, batch * in_size, "conv input") || !NEED_F(weights, (long long)n * g.K, "conv weights") ||
        !NEED_F(biases, n, "conv biases") || !NEED_F(out, batch * out_size, "conv output")) goto done;
    size_t plane_floats = (size_t)c * g.PH * g.PW + 8;
    pin = calloc(plane_floats, sizeof(float));
    nzm = malloc(sizeof(uint16_t) * (size_t)c * g.PH * g.nblk);
    if (!pin || !nzm) { PyErr_NoMemory(); goto done; }
    int span = 8 + size - 1;                        /* columns one block reads (<= 15) */
    int kx_skip = (variant & 4) ? 0 : 1;
    int group = variant & 3;                        /* 0: auto, 1: 4 + 2, 2: 3 + 3, 3: 6 */
    /* filter groups (6 at most: 12 accumulators), weights packed per group as [ch][ky][kx][r] */
    int ngroups = 0;
    gstart = malloc(sizeof(int) * (size_t)(n + 1));
    wpack = malloc(sizeof(float) * (size_t)n * g.K);
    if (!gstart || !wpack) { PyErr_NoMemory(); goto done; }
    for (int f = 0; f < n;) {
        int left = n - f, nf;
        if (group == 1) nf = left >= 4 ? 4 : left;
        else if (group == 2) nf = left >= 3 ? 3 : left;
        else nf = left >= 6 ? 6 : left >= 4 ? 4 : left;
        if (nf == 5) nf = 4;
        gstart[ngroups++] = f;
        for (int k = 0; k < g.K; ++k)
            for (int r = 0; r < nf; ++r) wpack[(ptrdiff_t)f * g.K + k * nf + r] = F32(weights)[(ptrdiff_t)(f + r) * g.K + k];
        f += nf;
    }
    gstart[ngroups] = n;
    for (int b = 0; b < batch; ++b) {
        ct_pad_image(&g, F32(in) + b * in_size, pin);
        for (int r = 0; r < c * g.PH; ++r) {
            const float *row = pin + (ptrdiff_t)r * g.PW;
            for (int blk = 0; blk < g.nblk; ++blk) {
                unsigned m = 0;
                for (int j = 0; j < span; ++j) m |= (unsigned)(row[8 * blk + j] != 0.f) << j;
                if (variant & 8) m = 0x7FFF;
                nzm[(ptrdiff_t)blk * c * g.PH + r] = (uint16_t)m;
            }
        }
        float *dst = F32(out) + b * out_size;
        const float *bias = F32(biases);
        for (int gi = 0; gi < ngroups; ++gi) {
            int f = gstart[gi], nf = gstart[gi + 1] - f;
            ct_pick_fwd(nf, size, kx_skip)(size, pin, c, g.PH, g.PW, nzm, g.nblk, wpack + (ptrdiff_t)f * g.K, g.K,
                                           bias + f, act, g.oh, g.ow, dst + (ptrdiff_t)f * g.oh * g.ow);
        }
        if (act >= 2) ct_activate_scalar(dst, out_size, act);
    }
    result = Py_None; Py_INCREF(result);
done:
    free(pin); free(nzm); free(wpack); free(gstart);
    PyBuffer_Release(&in); PyBuffer_Release(&weights); PyBuffer_Release(&biases); PyBuffer_Release(&out);
    return result;
}

/* ---------------------------------------------------------------- backward */

/* Weight-gradient sums of one (image, filter, channel plane): acc[ky][kx] = 0 + sum over the
 * nonzero deltas j of val[j] * plane[off[j] + ky*PW + kx], kx in vector lanes (4*L >= size). */
CT_INLINE void ct_dw_sums(const int S, const int L, int size, const float *plane, int PW, const int *off,
                          const float *val, int cnt, float *sums /* [size][8] */)
{
    const int sz = S ? S : size;
    v4f acc[CT_MAX_SIZE][2];
    CT_UNROLL for (int ky = 0; ky < CT_MAX_SIZE; ++ky) acc[ky][0] = acc[ky][1] = v4f_splat(0.f);
    for (int j = 0; j < cnt; ++j) {
        const float *p = plane + off[j];
        v4f d = v4f_splat(val[j]);
        CT_UNROLL for (int ky = 0; ky < (S ? S : CT_MAX_SIZE); ++ky) {
            if (!S && ky >= sz) break;
            acc[ky][0] += d * v4f_load(p + ky * PW);
            if (L == 2) acc[ky][1] += d * v4f_load(p + ky * PW + 4);
        }
    }
    for (int ky = 0; ky < sz; ++ky) {
        v4f_store(sums + 8 * ky, acc[ky][0]);
        v4f_store(sums + 8 * ky + 4, acc[ky][1]);
    }
}

static void ct_dw_sums_any(int size, const float *plane, int PW, const int *off, const float *val, int cnt,
                           float *sums)
{
    if (size == 5) ct_dw_sums(5, 2, size, plane, PW, off, val, cnt, sums);
    else if (size == 3) ct_dw_sums(3, 1, size, plane, PW, off, val, cnt, sums);
    else if (size <= 4) ct_dw_sums(0, 1, size, plane, PW, off, val, cnt, sums);
    else ct_dw_sums(0, 2, size, plane, PW, off, val, cnt, sums);
}

/* Input-gradient scatter of one output position: for each channel and ky, the 8 lanes of
 * t = 0 + sum_j dval[j] * Wp[fl[j]][ch][ky][0..7] are added to work[ch][Y + ky][X .. X + 7]
 * (the work planes have `pad` extra rows/columns before the image). Wp lanes >= size are 0. */
CT_INLINE void ct_dx_scatter(const int S, const int CNT, int size, int c, const float *Wp, const int *fl,
                             const float *dval, int cnt, float *work, int WH, int WW)
{
    const int sz = S ? S : size;
    const int nj = CNT ? CNT : cnt;
    for (int ch = 0; ch < c; ++ch)
        CT_UNROLL for (int ky = 0; ky < (S ? S : CT_MAX_SIZE); ++ky) {
            if (!S && ky >= sz) break;
            v4f t0 = v4f_splat(0.f), t1 = v4f_splat(0.f);
            for (int j = 0; j < nj; ++j) {
                const float *wv = Wp + (((ptrdiff_t)fl[j] * c + ch) * sz + ky) * 8;
                v4f d = v4f_splat(dval[j]);
                t0 += d * v4f_load(wv);
                t1 += d * v4f_load(wv + 4);
            }
            float *row = work + ((ptrdiff_t)ch * WH + ky) * WW;
            v4f_store(row, v4f_load(row) + t0);
            v4f_store(row + 4, v4f_load(row + 4) + t1);
        }
}

static void ct_dx_scatter_any(int size, int c, const float *Wp, const int *fl, const float *dval, int cnt,
                              float *work, int WH, int WW)
{
    if (size == 5) {
        if (cnt == 1) ct_dx_scatter(5, 1, size, c, Wp, fl, dval, cnt, work, WH, WW);
        else if (cnt == 2) ct_dx_scatter(5, 2, size, c, Wp, fl, dval, cnt, work, WH, WW);
        else ct_dx_scatter(5, 0, size, c, Wp, fl, dval, cnt, work, WH, WW);
    } else if (size == 3) {
        ct_dx_scatter(3, 0, size, c, Wp, fl, dval, cnt, work, WH, WW);
    } else {
        ct_dx_scatter(0, 0, size, c, Wp, fl, dval, cnt, work, WH, WW);
    }
}

/* Bit r set when lane r of v is not zero (NaN counts as not zero). */
static inline unsigned ct_nonzero4(v4f v)
{
    v4i nz = v != v4f_splat(0.f);
#if defined(__wasm_simd128__)
    return (unsigned)__builtin_wasm_bitmask_i32x4(nz);
#elif defined(__SSE__)
    return (unsigned)__builtin_ia32_movmskps((v4f)nz);
#else
    return (nz[0] & 1) | (nz[1] & 2) | (nz[2] & 4) | (nz[3] & 8);
#endif
}

/* The nonzero deltas of one oh x ow plane, in order: off[j] = y*PW + x, val[j]; returns their count.
 * Four at a time: a group of zeros costs one compare. */
static int ct_compact(const float *d, int oh, int ow, int PW, int *off, float *val)
{
    int cnt = 0;
    for (int y = 0; y < oh; ++y) {
        const float *row = d + (ptrdiff_t)y * ow;
        int x0 = 0;
        for (; x0 + 4 <= ow; x0 += 4) {
            unsigned m = ct_nonzero4(v4f_load(row + x0));
            while (m) {
                int k = __builtin_ctz(m);
                m &= m - 1;
                off[cnt] = y * PW + x0 + k;
                val[cnt++] = row[x0 + k];
            }
        }
        for (; x0 < ow; ++x0) {
            float v = row[x0];
            off[cnt] = y * PW + x0;
            val[cnt] = v;
            cnt += v != 0.f;
        }
    }
    return cnt;
}

static PyObject *dlk_conv_backward(PyObject *self, PyObject *args)
{
    Py_buffer in, out, delta, weights, bupd, wupd, prev = {0};
    PyObject *prev_obj;
    int batch, c, h, w, n, size, pad, act, dbg = 0;
    if (!PyArg_ParseTuple(args, "y*iiiiy*w*iiiiy*w*w*O|i", &in, &batch, &c, &h, &w, &out, &delta, &n, &size, &pad,
                          &act, &weights, &bupd, &wupd, &prev_obj, &dbg))
        return NULL;
    PyObject *result = NULL;
    int have_prev = prev_obj != Py_None;
    float *pin = NULL, *val = NULL, *work = NULL, *Wp = NULL, *dval = NULL;
    int *off = NULL, *fl = NULL;
    ct_geom g;
    if (have_prev && PyObject_GetBuffer(prev_obj, &prev, PyBUF_WRITABLE) < 0) { have_prev = 0; goto done; }
    if (batch < 0 || act < 0 || act > 3) { PyErr_SetString(PyExc_ValueError, "_dlk.conv_backward: bad batch or activation"); goto done; }
    if (!ct_geometry(&g, c, h, w, n, size, pad, "conv_backward")) goto done;
    long long in_size = (long long)c * h * w, ohw = (long long)g.oh * g.ow, out_size = n * ohw;
    if (!NEED_F(in, batch * in_size, "conv input") || !NEED_F(out, batch * out_size, "conv output") ||
        !NEED_F(delta, batch * out_size, "conv delta") || !NEED_F(weights, (long long)n * g.K, "conv weights") ||
        !NEED_F(bupd, n, "conv bias updates") || !NEED_F(wupd, (long long)n * g.K, "conv weight updates") ||
        (have_prev && !NEED_F(prev, batch * in_size, "conv input delta"))) goto done;
    /* dW reads in_pad[ch][y + ky][x .. x + 7]: PW >= ow - 1 + 8 and size - 1 + ... covered by ct_geometry */
    size_t plane_floats = (size_t)c * g.PH * g.PW + 16;
    pin = calloc(plane_floats, sizeof(float));
    off = malloc(sizeof(int) * (size_t)(ohw + 1));
    val = malloc(sizeof(float) * (size_t)(ohw + 1));
    int WH = h + 2 * pad, WW = w + 2 * pad + 8;        /* work planes for the input gradient */
    if (have_prev) {
        work = calloc((size_t)c * WH * WW + 16, sizeof(float));
        Wp = calloc((size_t)n * c * size * 8, sizeof(float));
        fl = malloc(sizeof(int) * (size_t)(n + 1));
        dval = malloc(sizeof(float) * (size_t)(n + 1));
    }
    if (!pin || !off || !val || (have_prev && (!work || !Wp || !fl || !dval))) { PyErr_NoMemory(); goto done; }
    const float *W = F32(weights);
    float *D = F32(delta), *bu = F32(bupd), *wu = F32(wupd);
    if (!(dbg & 1)) ct_gradient(F32(out), D, batch * out_size, act);
    if (have_prev)                                      /* Wp[f][ch][ky][0..7] = W[f][ch][ky][kx], 0 past size */
        for (int f = 0; f < n; ++f)
            for (int ch = 0; ch < c; ++ch)
                for (int ky = 0; ky < size; ++ky)
                    memcpy(Wp + (((ptrdiff_t)f * c + ch) * size + ky) * 8, W + (ptrdiff_t)f * g.K + (ch * size + ky) * size,
                           sizeof(float) * size);
    float sums[CT_MAX_SIZE * 8] __attribute__((aligned(16)));
    long long plane = (long long)g.PH * g.PW;
    for (int b = 0; b < batch; ++b) {
        const float *src = F32(in) + b * in_size;
        ct_pad_image(&g, src, pin);
        int same = c > 1;                               /* all channel planes bit-identical? */
        for (int ch = 1; ch < c && same; ++ch) same = !memcmp(src, src + ch * (long long)h * w, sizeof(float) * h * w);
        const float *db = D + b * out_size;
        for (int f = 0; f < n; ++f) {
            const float *d = db + f * ohw;
            int cnt = (dbg & 4) ? 0 : ct_compact(d, g.oh, g.ow, g.PW, off, val);
            float bsum = 0;
            for (int j = 0; j < cnt; ++j) bsum += val[j];   /* Darknet's sum, without its zero terms */
            bu[f] += bsum;
            if (!cnt || (dbg & 2)) continue;
            float *wf = wu + (ptrdiff_t)f * g.K;
            for (int ch = 0; ch < c; ++ch) {
                if (!same || ch == 0) ct_dw_sums_any(size, pin + ch * plane, g.PW, off, val, cnt, sums);
                float *wk = wf + ch * size * size;
                for (int ky = 0; ky < size; ++ky)
                    for (int kx = 0; kx < size; ++kx) wk[ky * size + kx] += sums[8 * ky + kx];
            }
        }
        if (!have_prev) continue;
        /* input gradient: work = prev (shifted by pad), scatter, copy back */
        float *pb = F32(prev) + b * in_size;
        for (int ch = 0; ch < c; ++ch)
            for (int y = 0; y < h; ++y)
                ct_copy(work + ((ptrdiff_t)ch * WH + y + pad) * WW + pad, pb + ((ptrdiff_t)ch * h + y) * w, w);
        for (long long p = ohw - 1; p >= 0; --p) {
            int cnt = 0;
            for (int f = 0; f < n; ++f) {
                float v = db[f * ohw + p];
                fl[cnt] = f;
                dval[cnt] = v;
                cnt += v != 0.f;
            }
            if (!cnt) continue;
            int Y = (int)(p / g.ow), X = (int)(p % g.ow);
            float *at = work + (ptrdiff_t)Y * WW + X;
            ct_dx_scatter_any(size, c, Wp, fl, dval, cnt, at, WH, WW);
        }
        for (int ch = 0; ch < c; ++ch)
            for (int y = 0; y < h; ++y)
                ct_copy(pb + ((ptrdiff_t)ch * h + y) * w, work + ((ptrdiff_t)ch * WH + y + pad) * WW + pad, w);
    }
    result = Py_None; Py_INCREF(result);
done:
    free(pin); free(off); free(val); free(work); free(Wp); free(fl); free(dval);
    PyBuffer_Release(&in); PyBuffer_Release(&out); PyBuffer_Release(&delta); PyBuffer_Release(&weights);
    PyBuffer_Release(&bupd); PyBuffer_Release(&wupd);
    if (have_prev) PyBuffer_Release(&prev);
    return result;
}

/* ---------------------------------------------------------------- maxpool 2x2 / 2 */

/* best, bi := v, i in the lanes where v > best (strict: the first maximum wins) */
#define CT_TAKE(v, i) do { v4i m_ = (v) > best; best = (v4f)(((v4i)(v) & m_) | ((v4i)best & ~m_)); \
                           bi = ((i) & m_) | (bi & ~m_); } while (0)

static PyObject *dlk_maxpool_forward_2x2(PyObject *self, PyObject *args)
{
    Py_buffer in, out, idx;
    int planes, h, w;
    if (!PyArg_ParseTuple(args, "y*iiiw*w*", &in, &planes, &h, &w, &out, &idx)) return NULL;
    PyObject *result = NULL;
    if (planes < 0 || h <= 0 || w <= 0 || h % 2 || w % 2 || (long long)planes * h * w > 0x7FFFFFFF) {
        PyErr_SetString(PyExc_ValueError, "_dlk.maxpool_forward_2x2: bad geometry (h and w must be even)"); goto done;
    }
    int oh = h / 2, ow = w / 2;
    long long n_out = (long long)planes * oh * ow;
    if (!NEED_F(in, (long long)planes * h * w, "maxpool input") || !NEED_F(out, n_out, "maxpool output") ||
        !dlk_need(&idx, n_out, 4, "maxpool indexes")) goto done;
    const float *src = F32(in);
    float *dst = F32(out);
    int32_t *ix = (int32_t *)idx.buf;
    const v4i lane2 = {0, 2, 4, 6};
    for (int bc = 0; bc < planes; ++bc) {
        const float *plane = src + (long long)bc * h * w;
        int base = bc * h * w;
        for (int oy = 0; oy < oh; ++oy) {
            const float *r0 = plane + 2 * oy * w, *r1 = r0 + w;
            float *o = dst + ((long long)bc * oh + oy) * ow;
            int32_t *oi = ix + ((long long)bc * oh + oy) * ow;
            int i0 = base + 2 * oy * w;
            int ox = 0;
            for (; ox + 4 <= ow; ox += 4) {
                v4f a0 = v4f_load(r0 + 2 * ox), a1 = v4f_load(r0 + 2 * ox + 4);
                v4f b0 = v4f_load(r1 + 2 * ox), b1 = v4f_load(r1 + 2 * ox + 4);
                v4f e0 = __builtin_shufflevector(a0, a1, 0, 2, 4, 6), o0 = __builtin_shufflevector(a0, a1, 1, 3, 5, 7);
                v4f e1 = __builtin_shufflevector(b0, b1, 0, 2, 4, 6), o1 = __builtin_shufflevector(b0, b1, 1, 3, 5, 7);
                v4i at = lane2 + (i0 + 2 * ox);
                v4f best = v4f_splat(-FLT_MAX);
                v4i bi = {-1, -1, -1, -1};
                CT_TAKE(e0, at); CT_TAKE(o0, at + 1); CT_TAKE(e1, at + w); CT_TAKE(o1, at + w + 1);
                v4f_store(o + ox, best);
                memcpy(oi + ox, &bi, 16);
            }
            for (; ox < ow; ++ox) {
                int x = 2 * ox;
                float best = -FLT_MAX;
                int bi = -1;
                if (r0[x] > best) { best = r0[x]; bi = i0 + x; }
                if (r0[x + 1] > best) { best = r0[x + 1]; bi = i0 + x + 1; }
                if (r1[x] > best) { best = r1[x]; bi = i0 + w + x; }
                if (r1[x + 1] > best) { best = r1[x + 1]; bi = i0 + w + x + 1; }
                o[ox] = best;
                oi[ox] = bi;
            }
        }
    }
    result = Py_None; Py_INCREF(result);
done:
    PyBuffer_Release(&in); PyBuffer_Release(&out); PyBuffer_Release(&idx);
    return result;
}
