/* Winograd convolution F(m x m, 3 x 3) for the fast mode (fast.h; Lavin & Gray 2016), for
 * 3x3 kernels, stride 1, one group, any pad, on planar images in[c][h][w]:
 *
 *   out[f][y][x] = sum over ch, ky, kx of W[f][ch][ky][kx] * in[ch][y + ky - pad][x + kx - pad]
 *
 * computed by tiles of m x m outputs from a x a input patches (a = m + 2):
 *   U[xi][f][ch] = (G g G^T)[xi],   g = W[f][ch] (3 x 3), G: a x 3   (winograd_weights, once per layer,
 *                                   4 filters in the lanes, stored as the gemm's packed panels)
 *   V[xi][t][ch] = (B^T d B)[xi],   d = patch of tile t of channel ch (a x a, zero outside)
 *   M[xi]        = U[xi] . V[xi]^T  (n x T: one gemm per xi = 0 .. a*a-1, dlk_gemm_prepacked)
 *   out tile t of filter f = A^T M[.][f][t] A   (m x m, cut at the image's edge)
 * with m = 2 (F(2x2,3x3): 16 products per 4 outputs, 2.25x fewer than direct) or m = 4
 * (F(4x4,3x3): 36 per 16, 4x fewer; transforms with 4, 5, 8 and 1/6, 1/24: about 2-3 bits
 * less accurate). Neither is Darknet's summation: results agree with the exact path to a
 * relative error of ~1e-6 (m = 2) or ~1e-5 (m = 4) of the sums of |terms| (tests/test_fast_mode.py).
 *
 * Vector lanes: 4 channels in the input transform (the input is first interleaved by 4
 * channels: pin4[y][x][l] = in[ch0 + l][y - pad][x - pad], 0 outside), 4 tiles in the output
 * transform. Zero entries of B^T and A^T are skipped at compile time (constant tables,
 * loops fully unrolled). Bias, batch normalisation and activation follow as on the gemm path. */
#define DLK_FAST 1
#include <stdlib.h>
#include "fast.h"
#include "kernels.h"
#include "simd.h"

#define WG_INLINE static inline __attribute__((always_inline))
#define WG_UNROLL _Pragma("clang loop unroll(full)")

static const float WG_BT2[4][4] = {{1, 0, -1, 0}, {0, 1, 1, 0}, {0, -1, 1, 0}, {0, 1, 0, -1}};
static const float WG_AT2[2][4] = {{1, 1, 1, 0}, {0, 1, -1, -1}};
static const float WG_BT4[6][6] = {{4, 0, -5, 0, 1, 0},  {0, -4, -4, 1, 1, 0}, {0, 4, -4, -1, 1, 0},
                                   {0, -2, -1, 2, 1, 0}, {0, 2, -1, -2, 1, 0}, {0, 4, 0, -5, 0, 1}};
static const float WG_AT4[4][6] = {{1, 1, 1, 1, 1, 0}, {0, 1, -1, 2, -2, 0}, {0, 1, 1, 4, 4, 0}, {0, 1, -1, 8, -8, 1}};

/* s += t * x for a table constant t: an add or a subtract for +-1, nothing for 0 (all decided at
 * compile time: the tables are constant and the loops fully unrolled). */
#define WG_TERM(s, t, x)                                                          \
    do {                                                                          \
        const float t_ = (t);                                                     \
        if (t_ == 1.f) s += (x);                                                  \
        else if (t_ == -1.f) s -= (x);                                            \
        else if (t_ != 0.f) s = v4f_madd(s, v4f_splat(t_), (x));                  \
    } while (0)

/* r = T . d: r[i][k] = sum_j T[i][j] d[j][k], i < R, k < C, j < A (entries of d, r: vectors) */
#define WG_LEFT(R, C, A, T, d, r)                                                 \
    WG_UNROLL for (int i_ = 0; i_ < (R); ++i_) WG_UNROLL for (int k_ = 0; k_ < (C); ++k_) { \
        v4f s_ = v4f_splat(0.f);                                                  \
        WG_UNROLL for (int j_ = 0; j_ < (A); ++j_) WG_TERM(s_, (T)[i_][j_], (d)[j_][k_]); \
        (r)[i_][k_] = s_;                                                         \
    }

/* r = d . T^T: r[i][k] = sum_j d[i][j] T[k][j], i < R, k < C, j < A */
#define WG_RIGHT(R, C, A, T, d, r)                                                \
    WG_UNROLL for (int i_ = 0; i_ < (R); ++i_) WG_UNROLL for (int k_ = 0; k_ < (C); ++k_) { \
        v4f s_ = v4f_splat(0.f);                                                  \
        WG_UNROLL for (int j_ = 0; j_ < (A); ++j_) WG_TERM(s_, (T)[k_][j_], (d)[i_][j_]); \
        (r)[i_][k_] = s_;                                                         \
    }

/* U is stored as the gemm's packed op(A) (dlk_gemm_prepacked): per xi, panels of 8 filters at full
 * depth c, U[xi][p][ch][r] = (G W[8p + r][ch] G^T)[xi], filters past n zero. */
#define WG_ROWS(n) (((n) + 7) / 8 * 8)

long long dlk_winograd_weights_size(int n, int c, int m)
{
    return (long long)(m + 2) * (m + 2) * WG_ROWS(n) * c;
}

/* y = G x for one column x = (x0, x1, x2) (vectors: 4 filters in the lanes), with the rows of G
 * that share terms computed once: F(2x2): G = [1 0 0; h h h; h -h h; 0 0 1], h = 1/2; F(4x4):
 * G = [1/4 0 0; -1/6 -1/6 -1/6; -1/6 1/6 -1/6; 1/24 1/12 1/6; 1/24 -1/12 1/6; 0 0 1]. */
WG_INLINE void wg_g(const int M, v4f x0, v4f x1, v4f x2, v4f *y)
{
    if (M == 2) {
        v4f a = (x0 + x2) * v4f_splat(.5f), b = x1 * v4f_splat(.5f);
        y[0] = x0; y[1] = a + b; y[2] = a - b; y[3] = x2;
    } else {
        v4f a = (x0 + x2) * v4f_splat(-1.f / 6), b = x1 * v4f_splat(-1.f / 6);
        v4f c = x0 * v4f_splat(1.f / 24) + x2 * v4f_splat(1.f / 6), d = x1 * v4f_splat(1.f / 12);
        y[0] = x0 * v4f_splat(1.f / 4); y[1] = a + b; y[2] = a - b; y[3] = c + d; y[4] = c - d; y[5] = x2;
    }
}

/* Filters f0 .. f0+3 (lanes), channels ch0 .. ch0+3: w[ch * 9 + k] = W[f0 + l][ch0 + ch][k] by 4x4
 * transposes of the rows of W (36 consecutive floats each), zero past n and c; then per channel
 * u = G g G^T stored into the packed panel of these filters (a vector of 4 filters per xi, the
 * planes of the xi `plane` floats apart). */
WG_INLINE void wg_weights_block(const int M, const float *W, int n, int c, int f0, int ch0, float *panel,
                                ptrdiff_t plane)
{
    const int A = M + 2;
    v4f w[36];
    if (f0 + 4 <= n && ch0 + 4 <= c) {
        const float *src = W + ((ptrdiff_t)f0 * c + ch0) * 9;
        for (int j = 0; j < 36; j += 4) {
            v4f t[4];
            for (int l = 0; l < 4; ++l) t[l] = v4f_load(src + (ptrdiff_t)l * c * 9 + j);
            v4_transpose(t);
            for (int x = 0; x < 4; ++x) w[j + x] = t[x];
        }
    } else {
        for (int j = 0; j < 36; ++j) {
            float l4[4];
            for (int l = 0; l < 4; ++l)
                l4[l] = f0 + l < n && ch0 + j / 9 < c ? W[((ptrdiff_t)(f0 + l) * c + ch0) * 9 + j] : 0.f;
            w[j] = v4f_load(l4);
        }
    }
    float *dst = panel + f0 % 8;                           /* panel: filters f0 / 8 * 8 .., xi = 0 */
    for (int x = 0; x < 4 && ch0 + x < c; ++x) {
        const v4f *g = w + 9 * x;
        v4f t[6][3], col[6], u[6];
        WG_UNROLL for (int k = 0; k < 3; ++k) {
            wg_g(M, g[k], g[3 + k], g[6 + k], col);
            WG_UNROLL for (int i = 0; i < A; ++i) t[i][k] = col[i];
        }
        WG_UNROLL for (int i = 0; i < A; ++i) {
            wg_g(M, t[i][0], t[i][1], t[i][2], u);
            WG_UNROLL for (int j = 0; j < A; ++j) v4f_store(dst + (i * A + j) * plane + (ch0 + x) * 8, u[j]);
        }
    }
}

void dlk_winograd_weights(const float *W, int n, int c, int m, float *U)
{
    /* both halves of a panel before the next channels: each 64-byte line (2 channels x 8 filters)
     * is written whole while in cache */
    for (int p0 = 0; p0 < WG_ROWS(n); p0 += 8)
        for (int ch0 = 0; ch0 < c; ch0 += 4)
            for (int f0 = p0; f0 < p0 + 8; f0 += 4)
                if (m == 2) wg_weights_block(2, W, n, c, f0, ch0, U + (ptrdiff_t)p0 * c, (ptrdiff_t)WG_ROWS(n) * c);
                else wg_weights_block(4, W, n, c, f0, ch0, U + (ptrdiff_t)p0 * c, (ptrdiff_t)WG_ROWS(n) * c);
}

/* V rows of tile (ty, tx) for 4 channels: V[xi][t][ch0 .. ch0+3] */
WG_INLINE void wg_input_tile(const int M, const float *pin4, int PW, int ty, int tx, float *V, ptrdiff_t xstride)
{
    const int A = M + 2;
    v4f d[6][6], r[6][6], v[6][6];
    WG_UNROLL for (int j = 0; j < A; ++j)
        WG_UNROLL for (int k = 0; k < A; ++k)
            d[j][k] = v4f_load(pin4 + (((ptrdiff_t)ty * M + j) * PW + tx * M + k) * 4);
    if (M == 2) {
        WG_LEFT(4, 4, 4, WG_BT2, d, r);
        WG_RIGHT(4, 4, 4, WG_BT2, r, v);
    } else {
        WG_LEFT(6, 6, 6, WG_BT4, d, r);
        WG_RIGHT(6, 6, 6, WG_BT4, r, v);
    }
    WG_UNROLL for (int i = 0; i < A; ++i)
        WG_UNROLL for (int k = 0; k < A; ++k) v4f_store(V + (i * A + k) * xstride, v[i][k]);
}

/* Output tiles t0 .. t0+3 (of T) of one filter from Mf[xi * xstride + l], cut at oh x ow. */
WG_INLINE void wg_output_tiles(const int M, const float *Mf, ptrdiff_t xstride, int t0, int T, int tw, int oh, int ow,
                               float *out)
{
    const int A = M + 2;
    v4f d[6][6], r[4][6], y[4][4];
    WG_UNROLL for (int j = 0; j < A; ++j)
        WG_UNROLL for (int k = 0; k < A; ++k) d[j][k] = v4f_load(Mf + (j * A + k) * xstride);
    if (M == 2) {
        WG_LEFT(2, 4, 4, WG_AT2, d, r);
        WG_RIGHT(2, 2, 4, WG_AT2, r, y);
    } else {
        WG_LEFT(4, 6, 6, WG_AT4, d, r);
        WG_RIGHT(4, 4, 6, WG_AT4, r, y);
    }
    for (int l = 0; l < 4 && t0 + l < T; ++l) {
        int ty = (t0 + l) / tw, tx = (t0 + l) % tw;
        int ny = oh - ty * M < M ? oh - ty * M : M, nx = ow - tx * M < M ? ow - tx * M : M;
        float *o = out + (ptrdiff_t)ty * M * ow + tx * M;
        if (ny == M && nx == M) {
            WG_UNROLL for (int i = 0; i < M; ++i)
                WG_UNROLL for (int k = 0; k < M; ++k) o[(ptrdiff_t)i * ow + k] = y[i][k][l];
        } else {
            for (int i = 0; i < ny; ++i)
                for (int k = 0; k < nx; ++k) o[(ptrdiff_t)i * ow + k] = y[i][k][l];
        }
    }
}

/* pin[g][y][x][l] = in[4g + l][y - pad][x - pad] (PH x PW, zero outside the image and past c) */
static void wg_interleave(const float *src, int c, int h, int w, int pad, int PH, int PW, float *pin)
{
    const int cp = (c + 3) & ~3;
    memset(pin, 0, sizeof(float) * (size_t)PH * PW * cp);
    for (int ch = 0; ch < c; ++ch)
        for (int y = 0; y < h && y + pad < PH; ++y) {
            const float *row = src + ((ptrdiff_t)ch * h + y) * w;
            float *dst = pin + (((ptrdiff_t)(ch / 4) * PH + y + pad) * PW + pad) * 4 + ch % 4;
            int nx = w < PW - pad ? w : PW - pad;
            for (int x = 0; x < nx; ++x) dst[(ptrdiff_t)x * 4] = row[x];
        }
}

/* V[xi][t - t0][ch] for tiles t0 .. t0+nb-1 (tb rows per xi), rows up to nb rounded to 4 zero */
WG_INLINE void wg_input_block(const int M, const float *pin, int c, int PH, int PW, int tw, int t0, int nb, int tb,
                              float *V)
{
    const int A = M + 2, cp = (c + 3) & ~3, nbp = (nb + 3) & ~3;
    for (int xi = 0; xi < A * A && nbp > nb; ++xi)
        memset(V + ((ptrdiff_t)xi * tb + nb) * cp, 0, sizeof(float) * (size_t)(nbp - nb) * cp);
    for (int ch0 = 0; ch0 < c; ch0 += 4)
        for (int t = t0; t < t0 + nb; ++t)
            wg_input_tile(M, pin + (ptrdiff_t)ch0 * PH * PW, PW, t / tw, t % tw, V + (ptrdiff_t)(t - t0) * cp + ch0,
                          (ptrdiff_t)tb * cp);
}

/* Tiles per block: a block's V and M (a*a*(cp + np) floats per tile) in about this many floats
 * (cache-sized), but at least WG_BLOCK_MIN_TILES so that each element of U, read once per block,
 * serves that many tiles. */
#define WG_BLOCK_FLOATS (128 * 1024)
#define WG_BLOCK_MIN_TILES 64

WG_INLINE int wg_conv(const int M, const float *in, int batch, int c, int h, int w, const float *U, int n, int pad,
                      float *out)
{
    const int A = M + 2;
    const int oh = h + 2 * pad - 2, ow = w + 2 * pad - 2;
    const int th = (oh + M - 1) / M, tw = (ow + M - 1) / M, T = th * tw, Tp = (T + 3) & ~3;
    const int np = WG_ROWS(n), cp = (c + 3) & ~3, PH = th * M + 2, PW = tw * M + 2;
    int tb = WG_BLOCK_FLOATS / (A * A * (cp + np));
    tb = tb < WG_BLOCK_MIN_TILES ? WG_BLOCK_MIN_TILES : (tb + 3) & ~3;
    if (tb > Tp) tb = Tp;
    float *pin = malloc(sizeof(float) * (size_t)PH * PW * cp);    /* pin[g][y][x][l]: channel 4g + l */
    float *V = malloc(sizeof(float) * (size_t)A * A * tb * cp);    /* V[xi][t][ch] of a block */
    float *Mx = malloc(sizeof(float) * (size_t)A * A * np * tb);   /* M[xi][f][t] of a block */
    int status = 0;
    if (!pin || !V || !Mx) { status = DLK_ERR_NOMEM; goto done; }
    for (int b = 0; b < batch; ++b) {
        const float *src = in + (ptrdiff_t)b * c * h * w;
        wg_interleave(src, c, h, w, pad, PH, PW, pin);
        float *dst = out + (ptrdiff_t)b * n * oh * ow;
        for (int t0 = 0; t0 < T; t0 += tb) {
            const int nb = T - t0 < tb ? T - t0 : tb, nbp = (nb + 3) & ~3;
            wg_input_block(M, pin, c, PH, PW, tw, t0, nb, tb, V);
            for (int xi = 0; xi < A * A; ++xi)
                dlk_gemm_prepacked(n, nbp, c, U + (ptrdiff_t)xi * np * c, V + (ptrdiff_t)xi * tb * cp, cp,
                                   Mx + (ptrdiff_t)xi * np * tb, tb);
            for (int f = 0; f < n; ++f)
                for (int l = 0; l < nb; l += 4)
                    wg_output_tiles(M, Mx + (ptrdiff_t)f * tb + l, (ptrdiff_t)np * tb, t0 + l, T, tw, oh, ow,
                                    dst + (ptrdiff_t)f * oh * ow);
        }
    }
done:
    free(pin); free(V); free(Mx);
    return status;
}

int dlk_conv_winograd(const float *in, int batch, int c, int h, int w, const float *U, int n, int pad, int m,
                      float *out)
{
    return m == 2 ? wg_conv(2, in, batch, c, h, w, U, n, pad, out) : wg_conv(4, in, batch, c, h, w, U, n, pad, out);
}

/* The same convolution with the weights transformed as they are used, nothing kept (for a single
 * forward of small images, where U would be written and read once: YOLOv3-tiny's 13x13 layer 12
 * has 8.4M floats of U): all tiles in one block, V packed once per xi; then per panel of 8
 * filters its transformed weights (a*a*8*c floats), its a*a gemms and its output tiles. */
WG_INLINE int wg_conv_fused(const int M, const float *in, int batch, int c, int h, int w, const float *W, int n,
                            int pad, float *out)
{
    const int A = M + 2;
    const int oh = h + 2 * pad - 2, ow = w + 2 * pad - 2;
    const int th = (oh + M - 1) / M, tw = (ow + M - 1) / M, T = th * tw, Tp = (T + 3) & ~3;
    const int cp = (c + 3) & ~3, PH = th * M + 2, PW = tw * M + 2;
    float *pin = malloc(sizeof(float) * (size_t)PH * PW * cp);
    float *V = malloc(sizeof(float) * (size_t)A * A * Tp * cp);
    float *Bp = malloc(sizeof(float) * (size_t)A * A * Tp * c);    /* V[xi] packed for the gemm */
    float *Ap = malloc(sizeof(float) * (size_t)A * A * 8 * c);     /* U of one panel */
    float *Mx = malloc(sizeof(float) * (size_t)A * A * 8 * Tp);    /* M[xi][f][t] of one panel */
    int status = 0;
    if (!pin || !V || !Bp || !Ap || !Mx) { status = DLK_ERR_NOMEM; goto done; }
    for (int b = 0; b < batch; ++b) {
        wg_interleave(in + (ptrdiff_t)b * c * h * w, c, h, w, pad, PH, PW, pin);
        wg_input_block(M, pin, c, PH, PW, tw, 0, T, Tp, V);
        for (int xi = 0; xi < A * A; ++xi)
            dlk_gemm_pack_bt(Tp, c, V + (ptrdiff_t)xi * Tp * cp, cp, Bp + (ptrdiff_t)xi * Tp * c);
        float *dst = out + (ptrdiff_t)b * n * oh * ow;
        for (int p0 = 0; p0 < n; p0 += 8) {
            for (int ch0 = 0; ch0 < c; ch0 += 4)
                for (int f0 = p0; f0 < p0 + 8; f0 += 4) wg_weights_block(M, W, n, c, f0, ch0, Ap, (ptrdiff_t)8 * c);
            for (int xi = 0; xi < A * A; ++xi)
                dlk_gemm_panel8(Tp, c, Ap + (ptrdiff_t)xi * 8 * c, Bp + (ptrdiff_t)xi * Tp * c,
                                Mx + (ptrdiff_t)xi * 8 * Tp, Tp);
            for (int f = p0; f < p0 + 8 && f < n; ++f)
                for (int l = 0; l < T; l += 4)
                    wg_output_tiles(M, Mx + (ptrdiff_t)(f - p0) * Tp + l, (ptrdiff_t)8 * Tp, l, T, tw, oh, ow,
                                    dst + (ptrdiff_t)f * oh * ow);
        }
    }
done:
    free(pin); free(V); free(Bp); free(Ap); free(Mx);
    return status;
}

int dlk_conv_winograd_fused(const float *in, int batch, int c, int h, int w, const float *W, int n, int pad, int m,
                            float *out)
{
    return m == 2 ? wg_conv_fused(2, in, batch, c, h, w, W, n, pad, out)
                  : wg_conv_fused(4, in, batch, c, h, w, W, n, pad, out);
}
