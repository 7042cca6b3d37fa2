/* General matrix multiply, Darknet's gemm(TA, TB, M, N, K, ALPHA, A, lda, B, ldb, BETA, C, ldc):
 *
 *   C[i][j] = BETA * C[i][j] + sum_k ALPHA * op(A)[i][k] * op(B)[k][j]
 *
 * with op(X) = X or X^T, row-major, leading dimensions lda, ldb, ldc.
 *
 * Float semantics: every element gets exactly the float operations of Darknet's gemm_cpu
 * in source order (built with -ffp-contract=off: no FMA), so results are bit-identical to
 * its plain C loops, for all four transposes:
 *   - C *= BETA first (skipped when BETA == 1, where it is the identity);
 *   - a = ALPHA * op(A)[i][k] is rounded to float, then the product a * op(B)[k][j];
 *   - NN, TN (Darknet gemm_nn / gemm_tn): the products are added onto C's running value,
 *     k = 0..K-1 in order;
 *   - NT, TT (Darknet gemm_nt / gemm_tt): sum = 0, the products are added to sum in order
 *     k = 0..K-1, then C += sum.
 * Nothing is reassociated, NT included: vector lanes hold different (i, j) elements, never
 * parts of one sum. (An earlier NT summed k in 4 interleaved lanes; Darknet's own wasm was
 * built with -Ofast, which may reassociate its NT dot products, so trained weights can
 * still differ from that build in the last bits, see docs/darknet-contract.md §10.1.)
 *
 * Layout of the computation (GotoBLAS-style, tuned for wasm SIMD128 under Cranelift, which
 * has 16 xmm registers and does not reschedule):
 *   - K is cut into blocks of GEMM_KC (deeper, up to GEMM_KC_MAX, when N is small) and N
 *     into blocks of GEMM_NC columns (wider, up to GEMM_NC_MAX, when the K block is
 *     shallow); a packed block of op(B) holds at most GEMM_KC * GEMM_NC floats.
 *   - op(B) is packed into panels of 4 columns (k-major: 4 floats per k), op(A) into
 *     panels of 8 or 4 rows (k-major, ALPHA applied). When op(A) has few rows
 *     (M <= GEMM_DIRECT_M) and op(B) = B, B is read in place instead of being copied.
 *   - A micro-kernel computes an 8x4 tile of C in 8 accumulator vectors: per k it loads
 *     the two A vectors (rows i..i+7) and one B vector (columns j..j+3) and multiplies the
 *     A vectors by the B vector rotated by s = 0..3 lanes, so accumulator (h, s) lane l
 *     holds element (4h + l, (l + s) mod 4) of the tile. No broadcasts: per k there are
 *     3 loads, 3 lane rotations, 8 multiplies and 8 adds, 15 xmm registers live (the
 *     4x16 broadcast kernel needed 21 and spilled). The tile is rotated/transposed into
 *     that "diagonal" layout when loaded and back when stored.
 *   - Between K blocks a tile's running value is stored to C (NN, TN) or, for NT/TT whose
 *     sum is added to C only at the end, to a float workspace; a float stored and reloaded
 *     is unchanged, so blocking does not alter any result.
 *   - Row panels: 8 rows while at least 7 remain (the last may be padded), then 4, then
 *     the last 1-3 rows as 2 + 1 with a broadcast kernel (gemm_rows_tile: 1 or 2 rows x 16
 *     columns, no padding rows computed, no diagonal layout).
 *   - Rows past M and columns past N are computed on zero padding and never stored.
 * Measured with scripts/bench_gemm.py.
 *
 * The pack buffers are static: the extension holds the GIL for the whole call (and the
 * guest is single-threaded), so gemm is never re-entered while they are in use. */
#include <stdlib.h>
#include "fast.h"
#include "kernels.h"
#include "simd.h"

#ifndef GEMM_KC
#define GEMM_KC 256                 /* depth of a K block */
#endif
#ifndef GEMM_KC_MAX
#define GEMM_KC_MAX 4096            /* ... at most, for narrow products (longer row runs) */
#endif
#ifndef GEMM_NC
#define GEMM_NC 512                 /* columns of op(B) per packed block at depth GEMM_KC */
#endif
#ifndef GEMM_NC_MAX
#define GEMM_NC_MAX 4096            /* ... at most, for shallow blocks (longer row runs) */
#endif
#ifndef GEMM_DIRECT_M
#define GEMM_DIRECT_M 8             /* NN/TN with at most this many rows read B in place */
#endif

typedef float v4fu __attribute__((vector_size(16), aligned(4)));   /* unaligned vector access */
#define V4_ROT(v, s) __builtin_shufflevector(v, v, (s) & 3, ((s) + 1) & 3, ((s) + 2) & 3, ((s) + 3) & 3)
#define GEMM_INLINE static inline __attribute__((always_inline))

static float gemm_pack_a[8 * GEMM_KC_MAX] __attribute__((aligned(16)));
static float gemm_pack_b[GEMM_KC * GEMM_NC] __attribute__((aligned(16)));

/* 4x4 block at p (row stride ld) to the diagonal layout: d[s][l] = p[l][(l + s) % 4]. */
GEMM_INLINE void tile_to_diag(const float *p, ptrdiff_t ld, v4f d[4])
{
    d[0] = v4f_load(p);
    d[1] = V4_ROT(v4f_load(p + ld), 1);
    d[2] = V4_ROT(v4f_load(p + 2 * ld), 2);
    d[3] = V4_ROT(v4f_load(p + 3 * ld), 3);
    v4_transpose(d);
}

/* Inverse of tile_to_diag: r[l] = row l of the block. */
GEMM_INLINE void diag_to_rows(const v4f d[4], v4f r[4])
{
    r[0] = d[0]; r[1] = d[1]; r[2] = d[2]; r[3] = d[3];
    v4_transpose(r);
    r[1] = V4_ROT(r[1], 3);
    r[2] = V4_ROT(r[2], 2);
    r[3] = V4_ROT(r[3], 1);
}

/* How a tile's accumulators start and end (see gemm_tile). */
enum { INIT_LOAD, INIT_LOAD_SCALED, INIT_ZERO };
enum { FIN_STORE, FIN_ADD, FIN_ADD_SCALED };

/* Tile of MR = 4*MRV rows x 4 columns over kc steps of packed A (ap: MR floats per k) and
 * B (bp: 4 floats per k, bs floats apart: 4 when packed, ldb when read in place).
 * The accumulators start as src[r][x] (INIT_LOAD), src[r][x] * scale (INIT_LOAD_SCALED)
 * or 0 (INIT_ZERO), and end as dst[r][x] = acc (FIN_STORE), dst[r][x] + acc (FIN_ADD) or
 * dst[r][x] * beta + acc (FIN_ADD_SCALED). */
#ifndef DLK_FAST_FMA
GEMM_INLINE void gemm_tile(const int MRV, const int init, const int fin, int kc, const float *ap,
                           const float *bp, ptrdiff_t bs, const float *src, ptrdiff_t lds, float scale,
                           float *dst, ptrdiff_t ldd, float beta)
{
    v4f acc[2][4];
#pragma clang loop unroll(full)
    for (int h = 0; h < MRV; ++h) {
        if (init == INIT_ZERO) {
            acc[h][0] = acc[h][1] = acc[h][2] = acc[h][3] = v4f_splat(0.f);
        } else {
            tile_to_diag(src + 4 * h * lds, lds, acc[h]);
            if (init == INIT_LOAD_SCALED)
                for (int s = 0; s < 4; ++s) acc[h][s] *= v4f_splat(scale);
        }
    }
    for (int k = 0; k < kc; ++k) {
        v4f a[2];
#pragma clang loop unroll(full)
        for (int h = 0; h < MRV; ++h) a[h] = ((const v4fu *)ap)[h];
        v4f b = *(const v4fu *)bp;
        v4f b1 = V4_ROT(b, 1), b2 = V4_ROT(b, 2), b3 = V4_ROT(b, 3);
#pragma clang loop unroll(full)
        for (int h = 0; h < MRV; ++h) {
            acc[h][0] = v4f_madd(acc[h][0], a[h], b);
            acc[h][1] = v4f_madd(acc[h][1], a[h], b1);
            acc[h][2] = v4f_madd(acc[h][2], a[h], b2);
            acc[h][3] = v4f_madd(acc[h][3], a[h], b3);
        }
        ap += 4 * MRV;
        bp += bs;
    }
#pragma clang loop unroll(full)
    for (int h = 0; h < MRV; ++h) {
        v4f r[4];
        diag_to_rows(acc[h], r);
        for (int l = 0; l < 4; ++l) {
            float *d = dst + (4 * h + l) * ldd;
            if (fin == FIN_ADD) r[l] = v4f_load(d) + r[l];
            if (fin == FIN_ADD_SCALED) r[l] = v4f_load(d) * v4f_splat(beta) + r[l];
            v4f_store(d, r[l]);
        }
    }
}

#else
/* The fused twin of gemm_tile (same packing, same start and end modes): acc[r] is row r of the
 * tile, and per k each A value is splat from memory into its own register: wasmtime (Cranelift)
 * lowers relaxed_madd to vfmadd213ps, whose destination is the first multiplicand, so a fresh
 * one per multiply-add needs no copy, and 8 accumulators + 1 B vector + 1 splat never spill. */
GEMM_INLINE void gemm_tile(const int MRV, const int init, const int fin, int kc, const float *ap,
                           const float *bp, ptrdiff_t bs, const float *src, ptrdiff_t lds, float scale,
                           float *dst, ptrdiff_t ldd, float beta)
{
    v4f acc[8];
#pragma clang loop unroll(full)
    for (int r = 0; r < 4 * MRV; ++r) {
        acc[r] = init == INIT_ZERO ? v4f_splat(0.f) : v4f_load(src + r * lds);
        if (init == INIT_LOAD_SCALED) acc[r] *= v4f_splat(scale);
    }
    for (int k = 0; k < kc; ++k) {
        v4f b = *(const v4fu *)bp;
#pragma clang loop unroll(full)
        for (int r = 0; r < 4 * MRV; ++r) acc[r] = v4f_madd(acc[r], v4f_splat(ap[r]), b);
        ap += 4 * MRV;
        bp += bs;
    }
#pragma clang loop unroll(full)
    for (int r = 0; r < 4 * MRV; ++r) {
        float *d = dst + r * ldd;
        v4f v = acc[r];
        if (fin == FIN_ADD) v = v4f_load(d) + v;
        if (fin == FIN_ADD_SCALED) v = v4f_load(d) * v4f_splat(beta) + v;
        v4f_store(d, v);
    }
}
#endif

/* All tiles of one row panel: MR full rows, nc columns (a multiple of 4). The B panel of
 * columns 4t.. is at bp + t*bpanel (4*kc when packed, 4 in place); src and dst point at the
 * panel's first element. */
GEMM_INLINE void gemm_sweep(const int MRV, const int init, const int fin, int nc, int kc, const float *ap,
                            const float *bp, ptrdiff_t bs, ptrdiff_t bpanel, const float *src, ptrdiff_t lds,
                            float scale, float *dst, ptrdiff_t ldd, float beta)
{
    for (int j = 0; j < nc; j += 4)
        gemm_tile(MRV, init, fin, kc, ap, bp + j / 4 * bpanel, bs, src + j, lds, scale, dst + j, ldd, beta);
}

/* One or two rows (R) x 4*Q columns, for the last rows of op(A) that do not fill a panel
 * of 4: acc[r][q] holds C[r][4q..4q+3] and gets splat(ap[r]) * B vector q per k, so no
 * padding rows are computed. A is packed 4 rows per k (ap[k*4 + r]), B as in gemm_tile,
 * vector q of step k at bp + q*bpanel + k*bs. Same start and end modes as gemm_tile. */
GEMM_INLINE void gemm_rows_tile(const int R, const int Q, const int init, const int fin, int kc,
                                const float *ap, const float *bp, ptrdiff_t bs, ptrdiff_t bpanel,
                                const float *src, ptrdiff_t lds, float scale, float *dst, ptrdiff_t ldd,
                                float beta)
{
    v4f acc[2][4];
#pragma clang loop unroll(full)
    for (int r = 0; r < R; ++r)
#pragma clang loop unroll(full)
        for (int q = 0; q < Q; ++q) {
            if (init == INIT_ZERO) acc[r][q] = v4f_splat(0.f);
            else acc[r][q] = v4f_load(src + r * lds + 4 * q);
            if (init == INIT_LOAD_SCALED) acc[r][q] *= v4f_splat(scale);
        }
    for (int k = 0; k < kc; ++k) {
        v4f b[4];
#pragma clang loop unroll(full)
        for (int q = 0; q < Q; ++q) b[q] = *(const v4fu *)(bp + q * bpanel);
#pragma clang loop unroll(full)
        for (int r = 0; r < R; ++r) {
            v4f a = v4f_splat(ap[r]);
#pragma clang loop unroll(full)
            for (int q = 0; q < Q; ++q) acc[r][q] = v4f_madd(acc[r][q], a, b[q]);
        }
        ap += 4;
        bp += bs;
    }
#pragma clang loop unroll(full)
    for (int r = 0; r < R; ++r)
#pragma clang loop unroll(full)
        for (int q = 0; q < Q; ++q) {
            float *d = dst + r * ldd + 4 * q;
            v4f v = acc[r][q];
            if (fin == FIN_ADD) v = v4f_load(d) + v;
            if (fin == FIN_ADD_SCALED) v = v4f_load(d) * v4f_splat(beta) + v;
            v4f_store(d, v);
        }
}

/* The row panel of gemm_rows_tile: R rows, nc columns (a multiple of 4). */
GEMM_INLINE void gemm_rows_sweep(const int R, const int init, const int fin, int nc, int kc, const float *ap,
                                 const float *bp, ptrdiff_t bs, ptrdiff_t bpanel, const float *src,
                                 ptrdiff_t lds, float scale, float *dst, ptrdiff_t ldd, float beta)
{
    int j = 0;
    for (; j + 16 <= nc; j += 16)
        gemm_rows_tile(R, 4, init, fin, kc, ap, bp + j / 4 * bpanel, bs, bpanel, src + j, lds, scale,
                       dst + j, ldd, beta);
    for (; j < nc; j += 4)
        gemm_rows_tile(R, 1, init, fin, kc, ap, bp + j / 4 * bpanel, bs, bpanel, src + j, lds, scale,
                       dst + j, ldd, beta);
}

/* Kernels by panel kind (KIND: rows of 8 or 4 with gemm_tile; 1 or 2 rows with
 * gemm_rows_tile) and start/end mode, all with one signature. */
enum { PANEL_8, PANEL_4, PANEL_ROWS_1, PANEL_ROWS_2 };
#define GEMM_SWEEP(KIND, INIT, FIN) \
    static void gemm_sweep_##KIND##_##INIT##_##FIN(int nc, int kc, const float *ap, const float *bp, \
        ptrdiff_t bs, ptrdiff_t bpanel, const float *src, ptrdiff_t lds, float scale, float *dst, \
        ptrdiff_t ldd, float beta) \
    { \
        if (KIND == PANEL_8 || KIND == PANEL_4) \
            gemm_sweep(KIND == PANEL_8 ? 2 : 1, INIT, FIN, nc, kc, ap, bp, bs, bpanel, src, lds, scale, \
                       dst, ldd, beta); \
        else \
            gemm_rows_sweep(KIND == PANEL_ROWS_2 ? 2 : 1, INIT, FIN, nc, kc, ap, bp, bs, bpanel, src, lds, \
                            scale, dst, ldd, beta); \
    }
#define GEMM_SWEEPS(KIND) \
    GEMM_SWEEP(KIND, INIT_LOAD, FIN_STORE) GEMM_SWEEP(KIND, INIT_LOAD_SCALED, FIN_STORE) \
    GEMM_SWEEP(KIND, INIT_ZERO, FIN_STORE) GEMM_SWEEP(KIND, INIT_ZERO, FIN_ADD) \
    GEMM_SWEEP(KIND, INIT_ZERO, FIN_ADD_SCALED) GEMM_SWEEP(KIND, INIT_LOAD, FIN_ADD) \
    GEMM_SWEEP(KIND, INIT_LOAD, FIN_ADD_SCALED)
GEMM_SWEEPS(PANEL_8)
GEMM_SWEEPS(PANEL_4)
GEMM_SWEEPS(PANEL_ROWS_1)
GEMM_SWEEPS(PANEL_ROWS_2)

typedef void (*gemm_sweep_fn)(int, int, const float *, const float *, ptrdiff_t, ptrdiff_t, const float *,
                              ptrdiff_t, float, float *, ptrdiff_t, float);

static gemm_sweep_fn gemm_pick_sweep(int kind, int init, int fin)
{
#define GEMM_PICK(KIND) \
    switch (init * 3 + fin) { \
    case INIT_LOAD * 3 + FIN_STORE: return gemm_sweep_##KIND##_INIT_LOAD_FIN_STORE; \
    case INIT_LOAD_SCALED * 3 + FIN_STORE: return gemm_sweep_##KIND##_INIT_LOAD_SCALED_FIN_STORE; \
    case INIT_ZERO * 3 + FIN_STORE: return gemm_sweep_##KIND##_INIT_ZERO_FIN_STORE; \
    case INIT_ZERO * 3 + FIN_ADD: return gemm_sweep_##KIND##_INIT_ZERO_FIN_ADD; \
    case INIT_ZERO * 3 + FIN_ADD_SCALED: return gemm_sweep_##KIND##_INIT_ZERO_FIN_ADD_SCALED; \
    case INIT_LOAD * 3 + FIN_ADD: return gemm_sweep_##KIND##_INIT_LOAD_FIN_ADD; \
    default: return gemm_sweep_##KIND##_INIT_LOAD_FIN_ADD_SCALED; \
    }
    switch (kind) {
    case PANEL_8: GEMM_PICK(PANEL_8)
    case PANEL_4: GEMM_PICK(PANEL_4)
    case PANEL_ROWS_2: GEMM_PICK(PANEL_ROWS_2)
    default: GEMM_PICK(PANEL_ROWS_1)
    }
#undef GEMM_PICK
}

/* Pack rows i0..i0+mr-1 (mr <= MR), depth p0..p0+kc-1 of op(A), times ALPHA:
 * ap[k*MR + r] = ALPHA * op(A)[i0 + r][p0 + k], rows mr..MR-1 zero. */
static void gemm_pack_a_panel(int ta, const float *A, int lda, float alpha, int i0, int mr, int MR,
                              int p0, int kc, float *ap)
{
    if (ta) {                                    /* op(A)[i][k] = A[k][i]: rows of A are contiguous */
        for (int k = 0; k < kc; ++k) {
            const float *src = A + (ptrdiff_t)(p0 + k) * lda + i0;
            float *dst = ap + k * MR;
            int r = 0;
            if (mr == MR)
                for (; r < MR; r += 4) v4f_store(dst + r, v4f_load(src + r) * v4f_splat(alpha));
            for (; r < mr; ++r) dst[r] = alpha * src[r];
            for (; r < MR; ++r) dst[r] = 0.f;
        }
        return;
    }
    int r0 = 0;
    for (; r0 + 4 <= mr; r0 += 4) {              /* 4 rows at a time, 4x4 transposes */
        const float *src = A + (ptrdiff_t)(i0 + r0) * lda + p0;
        int k = 0;
        for (; k + 4 <= kc; k += 4) {
            v4f t[4];
            for (int x = 0; x < 4; ++x) t[x] = v4f_load(src + x * (ptrdiff_t)lda + k);
            v4_transpose(t);
            for (int x = 0; x < 4; ++x) v4f_store(ap + (k + x) * MR + r0, t[x] * v4f_splat(alpha));
        }
        for (; k < kc; ++k)
            for (int x = 0; x < 4; ++x) ap[k * MR + r0 + x] = alpha * src[x * (ptrdiff_t)lda + k];
    }
    for (int r = r0; r < MR; ++r) {              /* the last rows one by one, then zero rows */
        float *dst = ap + r;
        if (r < mr) {
            const float *src = A + (ptrdiff_t)(i0 + r) * lda + p0;
            for (int k = 0; k < kc; ++k) dst[k * MR] = alpha * src[k];
        } else {
            for (int k = 0; k < kc; ++k) dst[k * MR] = 0.f;
        }
    }
}

/* Pack columns j0..j0+nc-1, depth p0..p0+kc-1 of op(B) into panels of 4 columns:
 * panel t holds bp[t*kc*4 + k*4 + x] = op(B)[p0 + k][j0 + 4t + x], columns past nc zero. */
static void gemm_pack_b_block(int tb, const float *B, int ldb, int p0, int kc, int j0, int nc, float *bp)
{
    int full = nc / 4, w = nc % 4;               /* full panels, width of the last partial one */
    if (!tb) {                                   /* op(B)[k][j] = B[k][j] */
        /* 4 rows of B at a time, left to right: each panel gets a whole 64-byte line per
         * step (writing one vector per panel per row would hit one cache set over and over,
         * panels being kc*16 bytes apart) */
        int k = 0;
        for (; k + 4 <= kc; k += 4) {
            const float *src = B + (ptrdiff_t)(p0 + k) * ldb + j0;
            float *dst = bp + 4 * k;
            for (int t = 0; t < full; ++t) {
                float *d = dst + (ptrdiff_t)t * kc * 4;
                for (int x = 0; x < 4; ++x) v4f_store(d + 4 * x, v4f_load(src + x * (ptrdiff_t)ldb + 4 * t));
            }
        }
        for (; k < kc; ++k) {
            const float *src = B + (ptrdiff_t)(p0 + k) * ldb + j0;
            for (int t = 0; t < full; ++t) v4f_store(bp + (ptrdiff_t)t * kc * 4 + 4 * k, v4f_load(src + 4 * t));
        }
        if (w)
            for (k = 0; k < kc; ++k) {
                const float *src = B + (ptrdiff_t)(p0 + k) * ldb + j0 + 4 * full;
                float *dst = bp + (ptrdiff_t)full * kc * 4 + 4 * k;
                for (int x = 0; x < 4; ++x) dst[x] = x < w ? src[x] : 0.f;
            }
        return;
    }
    for (int t = 0; 4 * t < nc; ++t) {           /* op(B)[k][j] = B[j][k]: 4 rows of B per panel */
        int wt = t < full ? 4 : w;
        const float *src = B + (ptrdiff_t)(j0 + 4 * t) * ldb + p0;
        float *dst = bp + (ptrdiff_t)t * kc * 4;
        int k = 0;
        if (wt == 4)
            for (; k + 4 <= kc; k += 4) {
                v4f r[4];
                for (int x = 0; x < 4; ++x) r[x] = v4f_load(src + x * (ptrdiff_t)ldb + k);
                v4_transpose(r);
                for (int x = 0; x < 4; ++x) v4f_store(dst + 4 * (k + x), r[x]);
            }
        for (int x = 0; x < 4; ++x) {            /* the rest column by column */
            if (x < wt)
                for (int kk = k; kk < kc; ++kk) dst[4 * kk + x] = src[x * (ptrdiff_t)ldb + kk];
            else
                for (int kk = k; kk < kc; ++kk) dst[4 * kk + x] = 0.f;
        }
    }
}

/* Copies of partial panels (fewer than MR rows, or a last panel narrower than 4 columns),
 * padded with zeros to full tiles. */
#define GEMM_PAD_COLS 512
static float gemm_pad_src[8 * GEMM_PAD_COLS] __attribute__((aligned(16)));
static float gemm_pad_dst[8 * GEMM_PAD_COLS] __attribute__((aligned(16)));

static void gemm_copy_block(float *dst, ptrdiff_t ldd, const float *src, ptrdiff_t lds, int rows, int cols)
{
    for (int r = 0; r < rows; ++r) memcpy(dst + r * ldd, src + r * lds, sizeof(float) * cols);
}

/* One row panel (mr valid rows of the MR the kernel computes, nc columns of the current
 * op(B) block), any shape; B as in gemm_sweep (in place only if nc is a multiple of 4: a
 * padded tile reads 4 columns). */
static void gemm_panel(gemm_sweep_fn sweep, int init, int fin, int MR, int mr, int nc, int kc, const float *ap,
                       const float *bp, ptrdiff_t bs, ptrdiff_t bpanel, const float *src, ptrdiff_t lds,
                       float scale, float *dst, ptrdiff_t ldd, float beta)
{
    int full = mr == MR ? nc & ~3 : 0;           /* columns done in place */
    if (full) sweep(full, kc, ap, bp, bs, bpanel, src, lds, scale, dst, ldd, beta);
    for (int j = full; j < nc; j += GEMM_PAD_COLS) {
        int cols = nc - j < GEMM_PAD_COLS ? nc - j : GEMM_PAD_COLS, wide = (cols + 3) & ~3;
        memset(gemm_pad_src, 0, sizeof(float) * MR * wide);
        memset(gemm_pad_dst, 0, sizeof(float) * MR * wide);
        if (init != INIT_ZERO) gemm_copy_block(gemm_pad_src, wide, src + j, lds, mr, cols);
        if (fin != FIN_STORE) gemm_copy_block(gemm_pad_dst, wide, dst + j, ldd, mr, cols);
        sweep(wide, kc, ap, bp + j / 4 * bpanel, bs, bpanel, gemm_pad_src, wide, scale, gemm_pad_dst, wide, beta);
        gemm_copy_block(dst + j, ldd, gemm_pad_dst, wide, mr, cols);
    }
}

/* The whole product for M, N, K > 0 on checked buffers. Returns 0, or -1 when the NT/TT
 * workspace cannot be allocated. */
static int gemm_blocked(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                        const float *B, int ldb, float beta, float *C, int ldc)
{
    const int sum_first = tb;                    /* NT, TT: sum from 0, then C = C*BETA + sum */
    /* Few rows: op(B) = B is read in place, packing would only copy it once more. */
    const int direct = !tb && M <= GEMM_DIRECT_M;
    /* The packed block holds GEMM_KC * GEMM_NC floats: narrow products take deeper blocks. */
    long long kc_fit = (long long)GEMM_KC * GEMM_NC / (((long long)N + 3) / 4 * 4);
    int kc_max = kc_fit < GEMM_KC ? GEMM_KC : kc_fit > GEMM_KC_MAX ? GEMM_KC_MAX : (int)kc_fit;
    float *T = NULL;                             /* running sums between K blocks (NT, TT) */
    if (sum_first && K > kc_max) {
        T = malloc(sizeof(float) * (size_t)M * N);
        if (!T) return -1;
    }
    for (int p0 = 0; p0 < K; p0 += kc_max) {
        int kc = K - p0 < kc_max ? K - p0 : kc_max;
        int first = p0 == 0, last = p0 + kc == K;
        int init, fin;
        float *src, *dst;                        /* matrices the tiles start from and end in */
        ptrdiff_t lds, ldd;
        if (!sum_first) {
            init = first && beta != 1.f ? INIT_LOAD_SCALED : INIT_LOAD;
            fin = FIN_STORE;
            src = dst = C; lds = ldd = ldc;
        } else {
            init = first ? INIT_ZERO : INIT_LOAD;
            fin = !last ? FIN_STORE : beta != 1.f ? FIN_ADD_SCALED : FIN_ADD;
            src = T; lds = N;
            dst = last ? C : T; ldd = last ? ldc : N;
        }
        /* ... and shallow blocks are wider */
        int nc_max = GEMM_KC * GEMM_NC / kc / 4 * 4;
        if (nc_max > GEMM_NC_MAX) nc_max = GEMM_NC_MAX;
        for (int j0 = 0; j0 < N; j0 += nc_max) {
            int nc = N - j0 < nc_max ? N - j0 : nc_max;
            /* in place: all panels of 4 columns; a narrower last one is still packed (padded) */
            int in_place = direct ? nc & ~3 : 0;
            if (in_place < nc) gemm_pack_b_block(tb, B, ldb, p0, kc, j0 + in_place, nc - in_place, gemm_pack_b);
            for (int i0 = 0; i0 < M;) {
                /* row panels: 8 rows (the last one may be 7, padded); then 4; then 2 and 1 */
                int rem = M - i0, MR, mr, kind;
                if (rem >= 7) { MR = 8; mr = rem < 8 ? rem : 8; kind = PANEL_8; }
                else if (rem >= 4) { MR = mr = 4; kind = PANEL_4; }
                else { MR = 4; mr = rem >= 2 ? 2 : 1; kind = mr == 2 ? PANEL_ROWS_2 : PANEL_ROWS_1; }
                gemm_sweep_fn sweep = gemm_pick_sweep(kind, init, fin);
                int krows = kind == PANEL_8 || kind == PANEL_4 ? MR : mr;   /* rows the kernel writes */
                const float *s = src ? src + i0 * lds + j0 : NULL;
                float *d = dst + i0 * ldd + j0;
                gemm_pack_a_panel(ta, A, lda, alpha, i0, mr, MR, p0, kc, gemm_pack_a);
                if (in_place)
                    gemm_panel(sweep, init, fin, krows, mr, in_place, kc, gemm_pack_a, B + (ptrdiff_t)p0 * ldb + j0,
                               ldb, 4, s, lds, beta, d, ldd, beta);
                if (in_place < nc)
                    gemm_panel(sweep, init, fin, krows, mr, nc - in_place, kc, gemm_pack_a, gemm_pack_b, 4, 4 * kc,
                               s ? s + in_place : NULL, lds, beta, d + in_place, ldd, beta);
                i0 += mr;
            }
        }
    }
    free(T);
    return 0;
}

#ifndef DLK_FAST
int dlk_fast_mode = 0;

int dlk_fast_supported(void)
{
#if defined(__x86_64__) && defined(DLK_FAST_FMA_NATIVE)
    /* the native fast units are built with -mfma (VEX encoded): CPUID.1 ECX has FMA (12),
     * OSXSAVE (27) and AVX (28), and the OS saves the xmm and ymm state (XCR0 bits 1, 2) */
    unsigned a, b, c, d;
    __asm__("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(1), "c"(0));
    const unsigned need = 1u << 12 | 1u << 27 | 1u << 28;
    if ((c & need) != need) return 0;
    unsigned lo, hi;
    __asm__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (lo & 6) == 6;
#else
    return 1;       /* wasm: the module validated, so any relaxed SIMD in it is there; natively: plain C */
#endif
}
#endif

int dlk_gemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
             float beta, float *C, int ldc)
{
#ifndef DLK_FAST
    if (dlk_fast_mode) return dlk_gemm_fast(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
#endif
    if (M == 0 || N == 0) return 0;
    if (K == 0) {                                /* C *= BETA */
        if (beta != 1.f)
            for (int i = 0; i < M; ++i)
                for (int j = 0; j < N; ++j) C[(ptrdiff_t)i * ldc + j] *= beta;
        return 0;
    }
    return gemm_blocked(ta != 0, tb != 0, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc) < 0 ? DLK_ERR_NOMEM : 0;
}

#ifdef DLK_FAST
/* Fast mode only (winograd_fast.c): C = Ap . B^T with op(A) already packed in panels of 8 rows at
 * full depth K (Ap[p*8*K + k*8 + r] = A[8p + r][k], ALPHA = 1, rows past M zero), B: N x K (ldb),
 * C: M rounded up to 8 rows (ldc apart), N a multiple of 4, K <= GEMM_KC * GEMM_NC / 4. The same
 * tiles as gemm_blocked's NT product with one K block (sums from 0, stored): no copy of A per call. */
void dlk_gemm_prepacked(int M, int N, int K, const float *Ap, const float *B, int ldb, float *C, int ldc)
{
    int nc_max = GEMM_KC * GEMM_NC / K / 4 * 4;
    if (nc_max > GEMM_NC_MAX) nc_max = GEMM_NC_MAX;
    for (int j0 = 0; j0 < N; j0 += nc_max) {
        int nc = N - j0 < nc_max ? N - j0 : nc_max;
        gemm_pack_b_block(1, B, ldb, 0, K, j0, nc, gemm_pack_b);
        for (int i0 = 0; i0 < M; i0 += 8)
            gemm_sweep_PANEL_8_INIT_ZERO_FIN_STORE(nc, K, Ap + (ptrdiff_t)i0 * K, gemm_pack_b, 4, 4 * K, NULL, 0,
                                                   1.f, C + (ptrdiff_t)i0 * ldc + j0, ldc, 1.f);
    }
}

/* Fast mode only (winograd_fast.c): op(B) = B^T (B: N x K, ldb) packed at full depth into bp
 * (N rounded up to 4 columns, times K floats), as gemm_blocked packs a block. */
void dlk_gemm_pack_bt(int N, int K, const float *B, int ldb, float *bp)
{
    gemm_pack_b_block(1, B, ldb, 0, K, 0, N, bp);
}

/* Fast mode only: C (8 rows x N, ldc) = one packed panel of op(A) (ap[k*8 + r], depth K) times
 * op(B) packed by dlk_gemm_pack_bt; N a multiple of 4. */
void dlk_gemm_panel8(int N, int K, const float *ap, const float *bp, float *C, int ldc)
{
    gemm_sweep_PANEL_8_INIT_ZERO_FIN_STORE(N, K, ap, bp, 4, 4 * K, NULL, 0, 1.f, C, ldc, 1.f);
}
#endif
