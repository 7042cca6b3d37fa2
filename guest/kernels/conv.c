/* Convolutions, square kernel `size` (ksize), zero padding `pad`, on planar float32 images
 * in[ch][y][x]; weights W[f][k] with k = (ch*size + ky)*size + kx.
 *
 * im2col / col2im (any stride):
 *   out_h = (h + 2*pad - ksize)/stride + 1, out_w likewise
 *   row k = (ch*ksize + ky)*ksize + kx, column p = oy*out_w + ox
 *   col[k][p] = im[ch][oy*stride + ky - pad][ox*stride + kx - pad], 0 outside the image
 *   col2im is its adjoint: im[...] += col[k][p], scattered in the same (k, p) order.
 *
 * conv2d_direct: stride 1, for layers with few input channels (no im2col buffer):
 *   out[b][f][y][x] = sum over k = (ch, ky, kx) in order of
 *                     W[f][k] * in[b][ch][y + ky - pad][x + kx - pad]   (0 outside the image)
 *   Each output element starts at 0 and adds its terms in the same k order as Darknet's
 *   im2col + gemm_nn, so results are the same floats. The input is first copied into a
 *   zero-padded plane per channel (workspace) so the inner loops have no bounds checks;
 *   blocks of NF filters x 8 columns stay in registers.
 *
 * conv_forward / conv_backward: convolution for training (stride 1, groups 1, size <= 8,
 * 0 <= pad < size), bias and activation fused.
 *
 * These give the same floats as Darknet's im2col + gemm loops (docs/darknet-contract.md §4.2, §4.5), but for the
 * sign of a zero result: terms that are exactly zero are skipped, and adding a zero to a float
 * sum never changes it (x + (+-0) == x for x != 0; a sum that starts at +0 stays +0).
 * [A skipped term 0 * inf or 0 * NaN would have made Darknet's sum NaN: only weights that are
 * already inf/NaN can do that.] tests/test_train_kernels.py checks them against the old loops.
 *
 * conv_forward (out_h = h + 2*pad - size + 1, out_w likewise):
 *   out[b][f][y][x] = act( (0 + sum over k = (ch, ky, kx) in order of
 *                              W[f][k] * in[b][ch][y + ky - pad][x + kx - pad])  + bias[f] )
 *   (0 outside the image). One float accumulator per output, adding in Darknet's k order; the
 *   vector lanes hold 8 neighbouring outputs (never parts of one sum), 3 or 4 filters share each input
 *   load. A kernel row (ch, ky) whose input segment under the 8 outputs is all zero is skipped
 *   (MNIST digits: ~57% of them in the first layer).
 *
 * conv_backward (delta is Darknet's negative gradient):
 *   delta[i] *= act'(out[i])                                         (written back)
 *   per image b, filter f:
 *     bias_upd[f] += (0 + sum_p delta[b][f][p])                      (p in order)
 *     W_upd[f][k] += (0 + sum_p delta[b][f][p] * in_pad[ch][y + ky][x + kx])   (p = (y, x) in order)
 *   and, if prev_delta is given, per image b, for each input pixel (ch, iy, ix):
 *     prev[ch][iy][ix] += t(k) for k = (ky, kx) in ascending order, where
 *     t(k) = sum over f in order of W[f][ch][ky][kx] * delta[b][f][iy + pad - ky][ix + pad - kx]
 *   (only positions inside the output) -- Darknet's colδ = W^T delta (gemm TN, f order) followed
 *   by col2im, which adds colδ[k][p] to each pixel in ascending k.
 *   How: the nonzero deltas of each (b, f) are listed in p order (after a 2x2 max pool at most a
 *   quarter of them are nonzero) and only they are visited; the kx of a kernel row sit in vector
 *   lanes. When an image's channel planes are bit-identical (a grayscale image given as R = G = B),
 *   channel 0's sums are every channel's: computed once, added to each (the same operations on
 *   the same values). Layers with size*c <= 32 work channel-last (kx, ch in the lanes: 30 of 32
 *   used for LeNet's 5x5x6). The input gradient is scattered from the positions p, descending,
 *   where some delta is nonzero: each pixel then receives its t(k) in ascending k, as in col2im. */
#include <limits.h>
#include <stdlib.h>
#include "fast.h"
#include "kernels.h"
#include "activation.h"
#include "simd.h"

#ifndef DLK_FAST  /* im2col, col2im: no arithmetic, exact units only */
/* ================================================================ im2col, col2im */

/* Columns ox of a kernel column kx whose image column x = ox*stride + kx - pad lies in
 * [0, w): the range [*lo, *hi), clamped to [0, ow]. */
static void conv_valid_range(int kx, int stride, int pad, int w, int ow, int *lo, int *hi)
{
    int first = pad - kx;                        /* ox*stride >= first */
    int end = w + pad - kx;                      /* ox*stride < end */
    int l = first <= 0 ? 0 : (first + stride - 1) / stride;
    int h = end <= 0 ? 0 : (end + stride - 1) / stride;
    if (h > ow) h = ow;
    if (l > h) l = h;
    *lo = l; *hi = h;
}

void dlk_im2col(const float *im, int c, int h, int w, int ksize, int stride, int pad, float *col)
{
    int oh = dlk_conv_out_size(h, ksize, stride, pad), ow = dlk_conv_out_size(w, ksize, stride, pad);
    const float *src = im;
    float *dst = col;
    for (int k = 0; k < c * ksize * ksize; ++k) {
        int kx = k % ksize, ky = (k / ksize) % ksize, ch = k / ksize / ksize;
        const float *plane = src + (ptrdiff_t)ch * h * w;
        float *row = dst + (ptrdiff_t)k * oh * ow;
        int lo, hi;
        conv_valid_range(kx, stride, pad, w, ow, &lo, &hi);
        for (int oy = 0; oy < oh; ++oy) {
            int y = oy * stride + ky - pad;
            float *out = row + (ptrdiff_t)oy * ow;
            if (y < 0 || y >= h) { memset(out, 0, sizeof(float) * ow); continue; }
            ptrdiff_t base = (ptrdiff_t)y * w + kx - pad;   /* pixel of column ox: base + ox*stride */
            memset(out, 0, sizeof(float) * lo);
            if (stride == 1) memcpy(out + lo, plane + base + lo, sizeof(float) * (hi - lo));
            else for (int ox = lo; ox < hi; ++ox) out[ox] = plane[base + (ptrdiff_t)ox * stride];
            memset(out + hi, 0, sizeof(float) * (ow - hi));
        }
    }
}

void dlk_col2im(const float *col, int c, int h, int w, int ksize, int stride, int pad, float *im)
{
    int oh = dlk_conv_out_size(h, ksize, stride, pad), ow = dlk_conv_out_size(w, ksize, stride, pad);
    const float *src = col;
    float *dst = im;
    for (int k = 0; k < c * ksize * ksize; ++k) {
        int kx = k % ksize, ky = (k / ksize) % ksize, ch = k / ksize / ksize;
        float *plane = dst + (ptrdiff_t)ch * h * w;
        const float *row = src + (ptrdiff_t)k * oh * ow;
        int lo, hi;
        conv_valid_range(kx, stride, pad, w, ow, &lo, &hi);
        for (int oy = 0; oy < oh; ++oy) {
            int y = oy * stride + ky - pad;
            if (y < 0 || y >= h) continue;
            ptrdiff_t base = (ptrdiff_t)y * w + kx - pad;
            const float *in = row + (ptrdiff_t)oy * ow;
            if (stride == 1) {
                float *line = plane + base + lo;
                for (int ox = 0; ox < hi - lo; ++ox) line[ox] += in[lo + ox];
            } else {
                for (int ox = lo; ox < hi; ++ox) plane[base + (ptrdiff_t)ox * stride] += in[ox];
            }
        }
    }
}

#endif

/* ================================================================ direct, stride 1 */

#ifndef DLK_FAST
/* In 64 bits (a cfg's padding=2000000000 overflows int: found by `make sanitize`); a size past
   what long long holds is LLONG_MAX, which no buffer budget allows. */
long long dlk_conv2d_direct_workspace(int c, int h, int w, int size, int pad)
{
    long long ow = (long long)w + 2LL * pad - size + 1;
    long long ow8 = (ow + 7) / 8 * 8;
    long long PH = (long long)h + 2LL * pad, PW = (long long)w + 2LL * pad;
    if (PW < ow8 + size - 1) PW = ow8 + size - 1;
    if (c < 1 || PH < 1 || PW < 1) return 8;
    if (PH > (LLONG_MAX - 8) / PW / c) return LLONG_MAX;
    return (long long)c * PH * PW + 8;
}
#endif

static inline void conv_block(int NF, const float *pad_in, int c, int PH, int PW, const float *W, int K,
                              int size, int y, int x0, float acc_out[4][8])
{
    v4f acc[4][2];
    for (int r = 0; r < NF; ++r) acc[r][0] = acc[r][1] = v4f_splat(0.f);
    for (int ch = 0; ch < c; ++ch)
        for (int ky = 0; ky < size; ++ky) {
            const float *row = pad_in + ((long long)ch * PH + y + ky) * PW + x0;
            const float *wk = W + (ch * size + ky) * size;
            for (int kx = 0; kx < size; ++kx) {
                v4f v0 = v4f_load(row + kx), v1 = v4f_load(row + kx + 4);
                for (int r = 0; r < NF; ++r) {
                    v4f wv = v4f_splat(wk[r * K + kx]);
                    acc[r][0] = v4f_madd(acc[r][0], wv, v0);
                    acc[r][1] = v4f_madd(acc[r][1], wv, v1);
                }
            }
        }
    for (int r = 0; r < NF; ++r) {
        v4f_store(acc_out[r], acc[r][0]);
        v4f_store(acc_out[r] + 4, acc[r][1]);
    }
}

static void conv_filters(int NF, const float *pad_in, int c, int PH, int PW, const float *W, int K, int size,
                         int oh, int ow, float *out)
{
    float acc[4][8];
    for (int y = 0; y < oh; ++y)
        for (int x0 = 0; x0 < ow; x0 += 8) {
            if (NF == 4) conv_block(4, pad_in, c, PH, PW, W, K, size, y, x0, acc);
            else if (NF == 2) conv_block(2, pad_in, c, PH, PW, W, K, size, y, x0, acc);
            else conv_block(1, pad_in, c, PH, PW, W, K, size, y, x0, acc);
            int nx = ow - x0 < 8 ? ow - x0 : 8;
            for (int r = 0; r < NF; ++r)
                memcpy(out + ((long long)r * oh + y) * ow + x0, acc[r], sizeof(float) * nx);
        }
}

void dlk_conv2d_direct(const float *in, int batch, int c, int h, int w, const float *weights, int n, int size,
                       int pad, float *out, float *workspace)
{
#ifndef DLK_FAST
    if (dlk_fast_mode) { dlk_conv2d_direct_fast(in, batch, c, h, w, weights, n, size, pad, out, workspace); return; }
#endif
    int oh = h + 2 * pad - size + 1, ow = w + 2 * pad - size + 1;
    int K = c * size * size;
    int ow8 = (ow + 7) / 8 * 8;
    int PH = h + 2 * pad, PW = w + 2 * pad;
    if (PW < ow8 + size - 1) PW = ow8 + size - 1;
    long long in_size = (long long)c * h * w, out_size = (long long)n * oh * ow;
    float *pad_in = workspace;
    memset(pad_in, 0, sizeof(float) * (size_t)c * PH * PW);
    for (int b = 0; b < batch; ++b) {
        const float *src = in + b * in_size;
        for (int ch = 0; ch < c; ++ch)
            for (int y = 0; y < h; ++y)
                memcpy(pad_in + ((long long)ch * PH + y + pad) * PW + pad, src + ((long long)ch * h + y) * w,
                       sizeof(float) * w);
        float *dst = out + b * out_size;
        int f = 0;
        for (; f + 4 <= n; f += 4)
            conv_filters(4, pad_in, c, PH, PW, weights + (long long)f * K, K, size, oh, ow,
                         dst + (long long)f * oh * ow);
        for (; f + 2 <= n; f += 2)
            conv_filters(2, pad_in, c, PH, PW, weights + (long long)f * K, K, size, oh, ow,
                         dst + (long long)f * oh * ow);
        for (; f < n; ++f)
            conv_filters(1, pad_in, c, PH, PW, weights + (long long)f * K, K, size, oh, ow,
                         dst + (long long)f * oh * ow);
    }
}

/* ================================================================ training: forward */

#define CT_INLINE static inline __attribute__((always_inline))
#define CT_UNROLL _Pragma("clang loop unroll(full)")
#pragma clang diagnostic ignored "-Wpass-failed"  /* loops with a run-time bound (generic sizes) stay loops */
#define CT_MAX_SIZE DLK_CONV_MAX_SIZE

/* NF filters x 4*V outputs (row y, columns x0 ..) in NF*V accumulators. S: kernel size known at
 * compile time (0: use size). W: the group's weights packed as [ch][ky][kx][r], each repeated in
 * 4 lanes (one vector load instead of a load and a splat; constant offsets from one pointer).
 * The tile visits only the kernel rows (ch, ky) whose input segment is not all zero: `cnt` of
 * them, kernel rows ks[i] = ch*size + ky, at row offsets rows[ks[i]] from the tile's corner. */
CT_INLINE void ct_fwd_tile(const int NF, const int S, const int V, int size, const float *at, const int *rows,
                           const int *ks, int cnt, const float *W, v4f acc[][2])
{
    const int sz = S ? S : size;
    CT_UNROLL for (int r = 0; r < NF; ++r) acc[r][0] = acc[r][1] = v4f_splat(0.f);
    for (int i = 0; i < cnt; ++i) {
        const float *row = at + rows[ks[i]];
        const float *wk = W + ks[i] * sz * NF * 4;
        _Pragma("clang loop unroll(disable)")
        for (int kx = 0; kx < sz; ++kx) {
            v4f v0 = v4f_load(row + kx), v1 = V == 2 ? v4f_load(row + kx + 4) : v0;
            CT_UNROLL for (int r = 0; r < NF; ++r) {
                v4f wv = v4f_load(wk + (kx * NF + r) * 4);
                acc[r][0] = v4f_madd(acc[r][0], wv, v0);
                if (V == 2) acc[r][1] = v4f_madd(acc[r][1], wv, v1);
            }
        }
    }
}

CT_INLINE void ct_fwd_store(v4f acc, float bias, int act, float *dst, int nx)
{
    v4f v = acc + v4f_splat(bias);
    if (act == ACT_RELU) v = act_relu4(v);              /* others: act_array after */
    if (nx >= 4) { v4f_store(dst, v); return; }
    switch (nx) {                                      /* no loop: it would become a memory.copy */
    case 3: dst[2] = v[2]; /* fall through */
    case 2: dst[1] = v[1]; /* fall through */
    case 1: dst[0] = v[0]; /* fall through */
    default: break;
    }
}

/* All output rows of NF filters. Tile (y, blk) has rc[y*nblk + blk] kernel rows to visit, listed
 * at kl + (y*nblk + blk)*c*size; rl[ch*size + ky] = (ch*PH + ky)*PW. */
CT_INLINE void ct_fwd_filters(const int NF, const int S, int size, const float *pin, int c, int PW, int nblk,
                              const int *rl, const int *kl, const int *rc, const float *W, const float *bias,
                              int act, int oh, int ow, float *out)
{
    v4f acc[6][2];
    ptrdiff_t plane = (ptrdiff_t)oh * ow;
    int per = c * size;
    for (int y = 0; y < oh; ++y)
        for (int blk = 0; blk < nblk; ++blk) {
            int x0 = 8 * blk, nx = ow - x0 < 8 ? ow - x0 : 8, t = y * nblk + blk;
            const float *at = pin + (ptrdiff_t)y * PW + x0;
            if (nx > 4) ct_fwd_tile(NF, S, 2, size, at, rl, kl + t * per, rc[t], W, acc);
            else ct_fwd_tile(NF, S, 1, size, at, rl, kl + t * per, rc[t], W, acc);
            float *o = out + (ptrdiff_t)y * ow + x0;
            CT_UNROLL for (int r = 0; r < NF; ++r) {
                ct_fwd_store(acc[r][0], bias[r], act, o + r * plane, nx);
                if (nx > 4) ct_fwd_store(acc[r][1], bias[r], act, o + r * plane + 4, nx - 4);
            }
        }
}

#define CT_FWD_VARIANT(NF, S) \
    static void ct_fwd_##NF##_##S(int size, const float *pin, int c, int PW, int nblk, const int *rl, const int *kl, \
                                  const int *rc, const float *W, const float *bias, int act, int oh, int ow, float *out) \
    { ct_fwd_filters(NF, S, size, pin, c, PW, nblk, rl, kl, rc, W, bias, act, oh, ow, out); }
#define CT_FWD_SIZES(NF) CT_FWD_VARIANT(NF, 0) CT_FWD_VARIANT(NF, 3) CT_FWD_VARIANT(NF, 5)
CT_FWD_SIZES(1) CT_FWD_SIZES(2) CT_FWD_SIZES(3) CT_FWD_SIZES(4)

typedef void (*ct_fwd_fn)(int, const float *, int, int, int, const int *, const int *, const int *, const float *,
                          const float *, int, int, int, float *);

static ct_fwd_fn ct_pick_fwd(int nf, int size)
{
#define CT_ROW(NF) {ct_fwd_##NF##_0, ct_fwd_##NF##_3, ct_fwd_##NF##_5}
    static const ct_fwd_fn table[4][3] = {CT_ROW(1), CT_ROW(2), CT_ROW(3), CT_ROW(4)};
#undef CT_ROW
    return table[nf - 1][size == 3 ? 1 : size == 5 ? 2 : 0];
}

/* 0, or why the layer cannot be computed here (a DLK_CONV_* code); fills g. */
#ifndef DLK_FAST
int dlk_conv_geometry(dlk_conv_geom *g, int c, int h, int w, int n, int size, int pad)
{
    if (c <= 0 || h <= 0 || w <= 0 || n <= 0 || size <= 0 || size > DLK_CONV_MAX_SIZE || pad < 0 || pad >= size)
        return DLK_CONV_BAD_GEOMETRY;
    g->c = c; g->h = h; g->w = w; g->n = n; g->size = size; g->pad = pad;
    g->oh = h + 2 * pad - size + 1;
    g->ow = w + 2 * pad - size + 1;
    if (g->oh <= 0 || g->ow <= 0) return DLK_CONV_KERNEL_TOO_LARGE;
    if ((long long)c * h * w > (1 << 26) || (long long)n * g->oh * g->ow > (1 << 26) || n > (1 << 16))
        return DLK_CONV_TOO_LARGE;
    g->K = c * size * size;
    g->nblk = (g->ow + 7) / 8;
    g->PH = h + 2 * pad;
    g->PW = w + 2 * pad;
    if (g->PW < 8 * g->nblk + size - 1) g->PW = 8 * g->nblk + size - 1;
    return 0;
}
#endif

/* dst[0..n) = src[0..n), without a memory.copy call (a libcall under wasmtime). */
static inline __attribute__((no_builtin("memcpy"))) void ct_copy(float *dst, const float *src, int n)
{
    int i = 0;
    for (; i + 4 <= n; i += 4) v4f_store(dst + i, v4f_load(src + i));
    for (; i < n; ++i) dst[i] = src[i];
}

/* Copies image `src` (c x h x w) into the interior of the zero-bordered planes at `pin`. */
static void ct_pad_image(const dlk_conv_geom *g, const float *src, float *pin)
{
    for (int ch = 0; ch < g->c; ++ch)
        for (int y = 0; y < g->h; ++y)
            ct_copy(pin + ((ptrdiff_t)ch * g->PH + y + g->pad) * g->PW + g->pad,
                    src + ((ptrdiff_t)ch * g->h + y) * g->w, g->w);
}
/* Workspace of conv_forward for one image at a time (sized for g's c; an image of fewer channels fits). */
typedef struct {
    float *pin;                  /* c zero-bordered PH x PW planes */
    int *rl;                     /* per kernel row ch*size + ky: its offset (ch*PH + ky)*PW */
    int *kl, *rc;                /* per tile: the kernel rows to visit, their count */
    unsigned char *nz;           /* per padded row and block: any nonzero input */
} ct_fwd_work;

/* Filters per tile: 4, or 3 when n is a multiple of 3 but not of 4 (LeNet's 6 = 3 + 3 ran 3-5%
 * faster in wasm than 4 + 2; a 6-filter tile spills registers under Cranelift). */
static inline int ct_group(int n) { return n % 4 && n % 3 == 0 ? 3 : 4; }

/* One image: src (g->c planes) -> dst (g->n planes), with wpack packed for g (groups of 4 filters). */
static void ct_forward_image(const dlk_conv_geom *geom, const float *src, const float *wpack, const float *biases,
                             int act, float *dst, const ct_fwd_work *ws)
{
    const dlk_conv_geom g = *geom;           /* a local copy: the wasm loops keep its fields in registers */
    const int c = g.c, size = g.size, per = c * size;
    float *pin = ws->pin;
    int *rl = ws->rl, *kl = ws->kl, *rc = ws->rc;
    unsigned char *nz = ws->nz;
    int span = 8 + size - 1;                        /* columns one block of 8 outputs reads */
    ct_pad_image(&g, src, pin);
    /* nz[(ch*PH + r)*nblk + blk]: padded row r has a nonzero among the `span` columns of block blk */
    for (int r = 0; r < c * g.PH; ++r) {
        const float *row = pin + (ptrdiff_t)r * g.PW;
        for (int blk = 0; blk < g.nblk; ++blk) {
            v4i any = {0, 0, 0, 0};
            int j = 0;
            for (; j + 4 <= span; j += 4) any |= v4f_load(row + 8 * blk + j) != v4f_splat(0.f);
            int a = any[0] | any[1] | any[2] | any[3];
            for (; j < span; ++j) a |= row[8 * blk + j] != 0.f;
            nz[r * g.nblk + blk] = (unsigned char)(a != 0);
        }
    }
    for (int ch = 0; ch < c; ++ch)
        for (int ky = 0; ky < size; ++ky) rl[ch * size + ky] = (ch * g.PH + ky) * g.PW;
    /* the kernel rows each tile visits: those whose input segment is not all zero */
    for (int y = 0; y < g.oh; ++y)
        for (int blk = 0; blk < g.nblk; ++blk) {
            int t = y * g.nblk + blk, cnt = 0;
            for (int ch = 0; ch < c; ++ch)
                for (int ky = 0; ky < size; ++ky) {
                    kl[t * per + cnt] = ch * size + ky;
                    cnt += nz[(ch * g.PH + y + ky) * g.nblk + blk];
                }
            rc[t] = cnt;
        }
    int grp = ct_group(g.n);
    for (int f = 0; f < g.n; f += grp) {
        int nf = g.n - f < grp ? g.n - f : grp;
        ct_pick_fwd(nf, size)(size, pin, c, g.PW, g.nblk, rl, kl, rc, wpack + (ptrdiff_t)f * g.K * 4, biases + f, act,
                              g.oh, g.ow, dst + (ptrdiff_t)f * g.oh * g.ow);
    }
    if (act >= ACT_LEAKY) act_array(dst, (long long)g.n * g.oh * g.ow, act);
}

/* weights W[f][k] (n x K) in groups of ct_group(n) filters (8 accumulators or fewer), packed per group as
 * [ch][ky][kx][r], each weight repeated in 4 lanes */
static void ct_pack_weights(const float *weights, int n, int K, float *wpack)
{
    int grp = ct_group(n);
    for (int f = 0; f < n; f += grp) {
        int nf = n - f < grp ? n - f : grp;
        for (int k = 0; k < K; ++k)
            for (int r = 0; r < nf; ++r)
                v4f_store(wpack + ((ptrdiff_t)f * K + k * nf + r) * 4, v4f_splat(weights[(ptrdiff_t)(f + r) * K + k]));
    }
}

#ifdef DLK_FAST
/* Fast mode only, grayscale images given as R = G = B (MNIST): when an image's c channel planes
 * are bit-identical, sum over ch of W[f][ch][ky][kx] * x[ky][kx] = (sum over ch of W[f][ch][ky][kx]) * x,
 * so the image is convolved as one channel with the summed weights (c times fewer multiply-adds;
 * the weights' sum, ch in order, rounds otherwise than Darknet's sum of products). */
static inline __attribute__((no_builtin("memcmp"))) int ct_planes_equal(const float *src, int c, ptrdiff_t plane)
{
    for (int ch = 1; ch < c; ++ch) {                /* bits compared as ints, 4 lanes (no memcmp libcall) */
        const float *other = src + ch * plane;
        v4i diff = {0, 0, 0, 0};
        ptrdiff_t i = 0;
        for (; i + 4 <= plane; i += 4) {
            v4i a, b;
            memcpy(&a, src + i, 16);
            memcpy(&b, other + i, 16);
            diff |= a ^ b;
        }
        int d = diff[0] | diff[1] | diff[2] | diff[3];
        for (; i < plane; ++i) {
            int32_t a, b;
            memcpy(&a, src + i, 4);
            memcpy(&b, other + i, 4);
            d |= a ^ b;
        }
        if (d) return 0;
    }
    return 1;
}

/* merged[f][j] = sum over ch in order of W[f][ch*ss + j], j < ss = size*size */
static void ct_merge_channels(const float *weights, int n, int c, int ss, float *merged)
{
    for (int f = 0; f < n; ++f)
        for (int j = 0; j < ss; ++j) {
            float s = 0.f;
            for (int ch = 0; ch < c; ++ch) s += weights[((ptrdiff_t)f * c + ch) * ss + j];
            merged[(ptrdiff_t)f * ss + j] = s;
        }
}
#endif

int dlk_conv_forward(const dlk_conv_geom *geom, int batch, const float *in, const float *weights, const float *biases,
                     int act, float *out)
{
#ifndef DLK_FAST
    if (dlk_fast_mode) return dlk_conv_forward_fast(geom, batch, in, weights, biases, act, out);
#endif
    const dlk_conv_geom g = *geom;
    const int c = g.c, n = g.n, size = g.size;
    int status = 0;
    float *wpack = NULL, *wgray = NULL;
    long long in_size = (long long)c * g.h * g.w, out_size = (long long)n * g.oh * g.ow;
    int per = c * size, tiles = g.oh * g.nblk;
    ct_fwd_work ws;
    ws.pin = calloc((size_t)c * g.PH * g.PW + 8, sizeof(float));
    ws.rl = malloc(sizeof(int) * (size_t)per);
    ws.kl = malloc(sizeof(int) * (size_t)tiles * per);
    ws.rc = malloc(sizeof(int) * (size_t)tiles);
    ws.nz = malloc((size_t)c * g.PH * g.nblk);
    wpack = malloc(sizeof(float) * 4 * (size_t)n * g.K);
    if (!ws.pin || !ws.rl || !ws.kl || !ws.rc || !wpack || !ws.nz) { status = DLK_ERR_NOMEM; goto done; }
    ct_pack_weights(weights, n, g.K, wpack);
#ifdef DLK_FAST
    dlk_conv_geom g1;                               /* the one-channel layer of grayscale images */
    int ss = size * size;
    if (c > 1 && dlk_conv_geometry(&g1, 1, g.h, g.w, n, size, g.pad) == 0) {
        float *merged = malloc(sizeof(float) * (size_t)n * ss);
        wgray = malloc(sizeof(float) * 4 * (size_t)n * ss);
        if (!merged || !wgray) { free(merged); status = DLK_ERR_NOMEM; goto done; }
        ct_merge_channels(weights, n, c, ss, merged);
        ct_pack_weights(merged, n, ss, wgray);
        free(merged);
    }
#endif
    for (int b = 0; b < batch; ++b) {
        const float *src = in + b * in_size;
#ifdef DLK_FAST
        if (wgray && ct_planes_equal(src, c, (ptrdiff_t)g.h * g.w)) {
            ct_forward_image(&g1, src, wgray, biases, act, out + b * out_size, &ws);
            continue;
        }
#endif
        ct_forward_image(&g, src, wpack, biases, act, out + b * out_size, &ws);
    }
done:
    free(ws.pin); free(wpack); free(wgray); free(ws.rl); free(ws.kl); free(ws.rc); free(ws.nz);
    return status;
}

/* ================================================================ training: backward */

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
            acc[ky][0] = v4f_madd(acc[ky][0], d, v4f_load(p + ky * PW));
            if (L == 2) acc[ky][1] = v4f_madd(acc[ky][1], d, v4f_load(p + ky * PW + 4));
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
                t0 = v4f_madd(t0, d, v4f_load(wv));
                t1 = v4f_madd(t1, d, v4f_load(wv + 4));
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
 * With relu (fused): first d *= (y > 0), written back. Four at a time, without branches on the
 * data: every lane is written at off/val[cnt] and cnt moves on past the nonzero ones (off and val
 * hold 4 spare slots). */
static int ct_compact(float *d, const float *out, int relu, int oh, int ow, int PW, int *off, float *val)
{
    int cnt = 0;
    for (int y = 0; y < oh; ++y) {
        float *row = d + (ptrdiff_t)y * ow;
        const float *orow = out + (ptrdiff_t)y * ow;
        int x0 = 0;
        for (; x0 + 4 <= ow; x0 += 4) {
            v4f v = v4f_load(row + x0);
            if (relu) {
                v = v * grad_relu4(v4f_load(orow + x0));
                v4f_store(row + x0, v);
            }
            unsigned m = ct_nonzero4(v);
            int at = y * PW + x0;
            off[cnt] = at;     val[cnt] = v[0]; cnt += m & 1;
            off[cnt] = at + 1; val[cnt] = v[1]; cnt += (m >> 1) & 1;
            off[cnt] = at + 2; val[cnt] = v[2]; cnt += (m >> 2) & 1;
            off[cnt] = at + 3; val[cnt] = v[3]; cnt += (m >> 3) & 1;
        }
        for (; x0 < ow; ++x0) {
            float v = row[x0];
            if (relu) row[x0] = v *= grad(orow[x0], ACT_RELU);
            off[cnt] = y * PW + x0;
            val[cnt] = v;
            cnt += v != 0.f;
        }
    }
    return cnt;
}

/* All +0.0 (bit patterns 0)? */
static int ct_all_zero(const float *a, long long n)
{
    long long i = 0;
    v4i any = {0, 0, 0, 0};
    for (; i + 4 <= n; i += 4) {
        v4i x;
        memcpy(&x, a + i, 16);
        any |= x;
    }
    for (; i < n; ++i) {
        int32_t x;
        memcpy(&x, a + i, 4);
        any[0] |= x;
    }
    return !(any[0] | any[1] | any[2] | any[3]);
}

/* a[0..n) = 0 without a memory.fill call (n a multiple of 4 or not) */
static void ct_zero(float *a, long long n)
{
    long long i = 0;
    for (; i + 4 <= n; i += 4) v4f_store(a + i, v4f_splat(0.f));
    for (; i < n; ++i) a[i] = 0.f;
}

/* Bit-identical float arrays? (wasi-libc's memcmp goes byte by byte) */
static int ct_same(const float *a, const float *b, long long n)
{
    long long i = 0;
    for (; i + 4 <= n; i += 4) {
        v4i x, y;
        memcpy(&x, a + i, 16);
        memcpy(&y, b + i, 16);
        v4i ne = x != y;
        if (ne[0] | ne[1] | ne[2] | ne[3]) return 0;
    }
    for (; i < n; ++i)
        if (memcmp(a + i, b + i, 4)) return 0;
    return 1;
}

/* Channel-last ("NHWC") variants for multi-channel layers with size*c <= 32 (LeNet's second
 * conv: 5*6 = 30): the size*c values of one kernel row -- kx outer, ch inner -- are contiguous
 * in both the padded input and the input-gradient work area, so 8 vectors cover them (94% of
 * the lanes used, against 5/8 with one 8-lane row per channel). Lanes past size*c read or add
 * values that are discarded (dW) or zero (dX: the packed weights are 0 there). */
#define CT_NHWC_LANES 32

/* dW sums of one (image, filter): sums[ky][kx*c + ch] = 0 + sum_j val[j] * inn[(off[j] + ky*PW)*c + kx*c + ch] */
CT_INLINE void ct_dw_nhwc(const int S, int size, const float *inn, int PW, int c, const int *off, const float *val,
                          int cnt, float *sums /* [size][32] */)
{
    const int sz = S ? S : size;
    for (int ky = 0; ky < sz; ++ky) {
        v4f acc[8];
        CT_UNROLL for (int v = 0; v < 8; ++v) acc[v] = v4f_splat(0.f);
        const float *base = inn + (ptrdiff_t)ky * PW * c;
        for (int j = 0; j < cnt; ++j) {
            const float *p = base + (ptrdiff_t)off[j] * c;
            v4f d = v4f_splat(val[j]);
            CT_UNROLL for (int v = 0; v < 8; ++v) acc[v] = v4f_madd(acc[v], d, v4f_load(p + 4 * v));
        }
        CT_UNROLL for (int v = 0; v < 8; ++v) v4f_store(sums + ky * CT_NHWC_LANES + 4 * v, acc[v]);
    }
}

/* dX scatter of one output position: for each ky, t = sum_j dval[j] * Wq[fl[j]][ky][0..31] (the first
 * term as is, then the others added in order), added to work[(ky*WN)*c + 0..31] (row Y + ky, from
 * column X). */
CT_INLINE void ct_dx_nhwc(const int S, const int CNT, int size, const float *Wq, const int *fl, const float *dval,
                          int cnt, float *work, int WN, int c)
{
    const int sz = S ? S : size;
    const int nj = CNT ? CNT : cnt;
    for (int ky = 0; ky < sz; ++ky) {
        v4f t[8];
        const float *w0 = Wq + ((ptrdiff_t)fl[0] * sz + ky) * CT_NHWC_LANES;
        v4f d0 = v4f_splat(dval[0]);
        CT_UNROLL for (int v = 0; v < 8; ++v) t[v] = d0 * v4f_load(w0 + 4 * v);
        for (int j = 1; j < nj; ++j) {
            const float *wj = Wq + ((ptrdiff_t)fl[j] * sz + ky) * CT_NHWC_LANES;
            v4f d = v4f_splat(dval[j]);
            CT_UNROLL for (int v = 0; v < 8; ++v) t[v] = v4f_madd(t[v], d, v4f_load(wj + 4 * v));
        }
        float *row = work + (ptrdiff_t)ky * WN * c;
        CT_UNROLL for (int v = 0; v < 8; ++v) v4f_store(row + 4 * v, v4f_load(row + 4 * v) + t[v]);
    }
}

static void ct_dx_nhwc_any(int size, const float *Wq, const int *fl, const float *dval, int cnt, float *work,
                           int WN, int c)
{
    if (size == 5) {
        if (cnt == 1) ct_dx_nhwc(5, 1, size, Wq, fl, dval, cnt, work, WN, c);
        else if (cnt == 2) ct_dx_nhwc(5, 2, size, Wq, fl, dval, cnt, work, WN, c);
        else ct_dx_nhwc(5, 0, size, Wq, fl, dval, cnt, work, WN, c);
    } else {
        ct_dx_nhwc(0, 0, size, Wq, fl, dval, cnt, work, WN, c);
    }
}
/* prev: the input delta, or NULL. */
int dlk_conv_backward(const dlk_conv_geom *g, int batch, const float *in, const float *out, float *delta, int act,
                      const float *weights, float *bias_upd, float *weight_upd, float *prev)
{
#ifndef DLK_FAST
    if (dlk_fast_mode) return dlk_conv_backward_fast(g, batch, in, out, delta, act, weights, bias_upd, weight_upd, prev);
#endif
    const int c = g->c, h = g->h, w = g->w, n = g->n, size = g->size, pad = g->pad;
    int have_prev = prev != NULL;
    int status = 0;
    float *pin = NULL, *val = NULL, *work = NULL, *Wp = NULL, *dval = NULL, *inn = NULL;
    int *off = NULL, *fl = NULL, *fmask = NULL;
    long long in_size = (long long)c * h * w, ohw = (long long)g->oh * g->ow, out_size = n * ohw;
    /* dW reads in_pad[ch][y + ky][x .. x + 7]: lanes past the row (size < 8) are discarded; the last
     * row's run past the planes needs the 16 spare floats */
    size_t plane_floats = (size_t)c * g->PH * g->PW + 16;
    pin = calloc(plane_floats, sizeof(float));
    off = malloc(sizeof(int) * (size_t)(ohw + 4));
    val = malloc(sizeof(float) * (size_t)(ohw + 4));
    int WH = h + 2 * pad, WW = w + 2 * pad + 8;        /* work planes for the input gradient */
    int nhwc = c > 1 && size * c <= CT_NHWC_LANES && n <= 31;
    if (nhwc) inn = calloc((size_t)g->PH * g->PW * c + CT_NHWC_LANES, sizeof(float));
    if (have_prev) {
        work = calloc((size_t)c * WH * WW + 2 * CT_NHWC_LANES, sizeof(float));
        Wp = calloc((size_t)n * (nhwc ? size * CT_NHWC_LANES : c * size * 8), sizeof(float));
        fl = malloc(sizeof(int) * (size_t)(n + 1));
        dval = malloc(sizeof(float) * (size_t)(n + 1));
        fmask = malloc(sizeof(int) * (size_t)(ohw + 4));
    }
    if (!pin || !off || !val || (nhwc && !inn) || (have_prev && (!work || !Wp || !fl || !dval || !fmask))) {
        status = DLK_ERR_NOMEM; goto done;
    }
    const float *W = weights;
    float *D = delta, *bu = bias_upd, *wu = weight_upd;
    int fuse_relu = act == 1;                           /* relu: applied while compacting */
    if (!fuse_relu) grad_array(out, D, batch * out_size, act);
    if (have_prev && nhwc)                              /* Wp[f][ky][kx*c + ch] = W[f][ch][ky][kx], 0 past size*c */
        for (int f = 0; f < n; ++f)
            for (int ch = 0; ch < c; ++ch)
                for (int ky = 0; ky < size; ++ky)
                    for (int kx = 0; kx < size; ++kx)
                        Wp[((ptrdiff_t)f * size + ky) * CT_NHWC_LANES + kx * c + ch] = W[(ptrdiff_t)f * g->K + (ch * size + ky) * size + kx];
    else if (have_prev)                                 /* Wp[f][ch][ky][0..7] = W[f][ch][ky][kx], 0 past size */
        for (int f = 0; f < n; ++f)
            for (int ch = 0; ch < c; ++ch)
                for (int ky = 0; ky < size; ++ky)
                    memcpy(Wp + (((ptrdiff_t)f * c + ch) * size + ky) * 8, W + (ptrdiff_t)f * g->K + (ch * size + ky) * size,
                           sizeof(float) * size);
    float sums[CT_MAX_SIZE * CT_NHWC_LANES] __attribute__((aligned(16)));
    long long plane = (long long)g->PH * g->PW;
    for (int b = 0; b < batch; ++b) {
        const float *src = in + b * in_size;
        int same = c > 1;                               /* all channel planes bit-identical? */
        for (int ch = 1; ch < c && same; ++ch) same = ct_same(src, src + ch * (long long)h * w, (long long)h * w);
        int use_nhwc = nhwc && !same;
        if (!use_nhwc) ct_pad_image(g, src, pin);
        else                                            /* inn[y + pad][x + pad][ch] = in[ch][y][x] */
            for (int ch = 0; ch < c; ++ch)
                for (int y = 0; y < h; ++y) {
                    const float *srow = src + ((ptrdiff_t)ch * h + y) * w;
                    float *drow = inn + ((ptrdiff_t)(y + pad) * g->PW + pad) * c + ch;
                    for (int x = 0; x < w; ++x) drow[(ptrdiff_t)x * c] = srow[x];
                }
        const float *db = D + b * out_size;
        for (int f = 0; f < n; ++f) {
            int cnt = ct_compact(D + b * out_size + f * ohw, out + b * out_size + f * ohw, fuse_relu,
                                 g->oh, g->ow, g->PW, off, val);
            float bsum = 0;
            for (int j = 0; j < cnt; ++j) bsum += val[j];   /* Darknet's sum, without its zero terms */
            bu[f] += bsum;
            if (!cnt) continue;
            float *wf = wu + (ptrdiff_t)f * g->K;
            if (use_nhwc) {
                if (size == 5) ct_dw_nhwc(5, size, inn, g->PW, c, off, val, cnt, sums);
                else ct_dw_nhwc(0, size, inn, g->PW, c, off, val, cnt, sums);
                for (int ch = 0; ch < c; ++ch)
                    for (int ky = 0; ky < size; ++ky)
                        for (int kx = 0; kx < size; ++kx)
                            wf[(ch * size + ky) * size + kx] += sums[ky * CT_NHWC_LANES + kx * c + ch];
                continue;
            }
            for (int ch = 0; ch < c; ++ch) {
                if (!same || ch == 0) ct_dw_sums_any(size, pin + ch * plane, g->PW, off, val, cnt, sums);
                float *wk = wf + ch * size * size;
                for (int ky = 0; ky < size; ++ky)
                    for (int kx = 0; kx < size; ++kx) wk[ky * size + kx] += sums[8 * ky + kx];
            }
        }
        if (!have_prev) continue;
        float *pb = prev + b * in_size;
        if (nhwc) {                                     /* work[y + pad][x + pad][ch] = prev[ch][y][x] */
            if (ct_all_zero(pb, in_size))                /* (in training it is: zero the area instead) */
                ct_zero(work, (long long)WH * WW * c);
            else
                for (int ch = 0; ch < c; ++ch)
                    for (int y = 0; y < h; ++y) {
                        const float *srow = pb + ((ptrdiff_t)ch * h + y) * w;
                        float *drow = work + ((ptrdiff_t)(y + pad) * WW + pad) * c + ch;
                        for (int x = 0; x < w; ++x) drow[(ptrdiff_t)x * c] = srow[x];
                    }
            /* fmask[p]: bit f set when delta[f][p] != 0 (n <= 32 here), four positions at a time */
            long long p0 = 0;
            for (; p0 + 4 <= ohw; p0 += 4) {
                v4i m = {0, 0, 0, 0};
                for (int f = 0; f < n; ++f)
                    m |= (v4f_load(db + f * ohw + p0) != v4f_splat(0.f)) & (v4i){1 << f, 1 << f, 1 << f, 1 << f};
                memcpy(fmask + p0, &m, 16);
            }
            for (; p0 < ohw; ++p0) {
                int m = 0;
                for (int f = 0; f < n; ++f) m |= (db[f * ohw + p0] != 0.f) << f;
                fmask[p0] = m;
            }
            for (long long p = ohw - 1; p >= 0; --p) {
                unsigned m = (unsigned)fmask[p];
                if (!m) continue;
                int cnt = 0;
                while (m) {
                    int f = __builtin_ctz(m);
                    m &= m - 1;
                    fl[cnt] = f;
                    dval[cnt++] = db[f * ohw + p];
                }
                int Y = (int)(p / g->ow), X = (int)(p % g->ow);
                ct_dx_nhwc_any(size, Wp, fl, dval, cnt, work + ((ptrdiff_t)Y * WW + X) * c, WW, c);
            }
            for (int ch = 0; ch < c; ++ch)
                for (int y = 0; y < h; ++y) {
                    float *drow = pb + ((ptrdiff_t)ch * h + y) * w;
                    const float *srow = work + ((ptrdiff_t)(y + pad) * WW + pad) * c + ch;
                    for (int x = 0; x < w; ++x) drow[x] = srow[(ptrdiff_t)x * c];
                }
            continue;
        }
        /* input gradient: work = prev (shifted by pad), scatter, copy back */
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
            int Y = (int)(p / g->ow), X = (int)(p % g->ow);
            float *at = work + (ptrdiff_t)Y * WW + X;
            ct_dx_scatter_any(size, c, Wp, fl, dval, cnt, at, WH, WW);
        }
        for (int ch = 0; ch < c; ++ch)
            for (int y = 0; y < h; ++y)
                ct_copy(pb + ((ptrdiff_t)ch * h + y) * w, work + ((ptrdiff_t)ch * WH + y + pad) * WW + pad, w);
    }
done:
    free(pin); free(off); free(val); free(work); free(Wp); free(fl); free(dval); free(inn); free(fmask);
    return status;
}
