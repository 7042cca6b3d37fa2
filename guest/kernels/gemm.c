/* General matrix multiply, Darknet's gemm(TA, TB, M, N, K, ALPHA, A, lda, B, ldb, BETA, C, ldc):
 *
 *   C[i][j] = BETA * C[i][j] + sum_k ALPHA * op(A)[i][k] * op(B)[k][j]
 *
 * with op(X) = X or X^T, row-major, leading dimensions lda, ldb, ldc.
 *
 * Float semantics: every element gets exactly the float operations of Darknet's gemm_cpu
 * (built with -ffp-contract=off: no FMA), so results are bit-identical to its loops:
 *   - C *= BETA first (skipped when BETA == 1, where it is the identity);
 *   - a = ALPHA * op(A)[i][k] is rounded to float, then the product a * op(B)[k][j];
 *   - NN, TN (Darknet gemm_nn / gemm_tn): the products are added onto C's running value,
 *     k = 0..K-1 in order;
 *   - NT, TT (Darknet gemm_nt / gemm_tt): sum = 0, the products are added to sum in order
 *     k = 0..K-1, then C += sum.
 * Nothing is reassociated: the vector lanes below hold different (i, j) elements, never
 * parts of one sum. (Darknet's own wasm build used -Ofast and may have reassociated NT.)
 *
 * Layout of the computation (GotoBLAS-style, tuned for wasm SIMD128 under Cranelift, which
 * has 16 xmm registers and does not reschedule): K is cut into blocks of GEMM_KC, N into
 * blocks of GEMM_NC. For each block, op(B) is packed into panels of 4 columns (k-major:
 * 4 floats per k) and op(A) into panels of 8 (or 4) rows (k-major, ALPHA applied). A
 * micro-kernel then computes an 8x4 tile of C in 8 accumulator vectors: per k it loads
 * the two A vectors (rows i..i+7) and one B vector (columns j..j+3), and multiplies the A
 * vectors by the B vector rotated by s = 0..3 lanes, so accumulator (h, s) lane l holds
 * element (4h + l, (l + s) mod 4) of the tile. No broadcasts are needed: per k there are
 * 3 loads, 3 lane rotations, 8 multiplies and 8 adds, 15 xmm registers live. The tile is
 * rotated/transposed into that "diagonal" layout when loaded and back when stored.
 * Between K blocks a tile's running value is stored to C (NN, TN) or, for NT/TT whose sum
 * is added to C only at the end, to a float workspace; a float stored and reloaded is
 * unchanged, so blocking does not alter any result.
 *
 * The pack buffers are static: the extension holds the GIL for the whole call (and the
 * guest is single-threaded), so gemm is never re-entered while they are in use. */
#include "dlk_common.h"

#ifndef GEMM_KC
#define GEMM_KC 256                 /* depth of a K block */
#endif
#ifndef GEMM_KC_MAX
#define GEMM_KC_MAX 4096            /* ... and at most, for narrow products (longer row runs) */
#endif
#ifndef GEMM_NC
#define GEMM_NC 512                 /* columns of op(B) per packed block at full depth */
#endif
#ifndef GEMM_NC_MAX
#define GEMM_NC_MAX 4096            /* ... and at most, for shallow blocks (longer row runs) */
#endif

typedef float v4fu __attribute__((vector_size(16), aligned(4)));   /* unaligned vector access */
#define V4_ROT(v, s) __builtin_shufflevector(v, v, (s) & 3, ((s) + 1) & 3, ((s) + 2) & 3, ((s) + 3) & 3)
#define GEMM_INLINE static inline __attribute__((always_inline))

static float gemm_pack_a[8 * GEMM_KC_MAX] __attribute__((aligned(16)));
static float gemm_pack_b[GEMM_KC * GEMM_NC] __attribute__((aligned(16)));

GEMM_INLINE void v4_transpose(v4f r[4])
{
    v4f t0 = __builtin_shufflevector(r[0], r[1], 0, 4, 1, 5), t1 = __builtin_shufflevector(r[0], r[1], 2, 6, 3, 7);
    v4f t2 = __builtin_shufflevector(r[2], r[3], 0, 4, 1, 5), t3 = __builtin_shufflevector(r[2], r[3], 2, 6, 3, 7);
    r[0] = __builtin_shufflevector(t0, t2, 0, 1, 4, 5);
    r[1] = __builtin_shufflevector(t0, t2, 2, 3, 6, 7);
    r[2] = __builtin_shufflevector(t1, t3, 0, 1, 4, 5);
    r[3] = __builtin_shufflevector(t1, t3, 2, 3, 6, 7);
}

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
 * packed B (bp: 4 floats per k). The accumulators start as src[r][x] (INIT_LOAD),
 * src[r][x] * scale (INIT_LOAD_SCALED) or 0 (INIT_ZERO), and end as dst[r][x] = acc
 * (FIN_STORE), dst[r][x] + acc (FIN_ADD) or dst[r][x] * beta + acc (FIN_ADD_SCALED). */
GEMM_INLINE void gemm_tile(const int MRV, const int init, const int fin, int kc, const float *ap,
                           const float *bp, const float *src, ptrdiff_t lds, float scale,
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
            acc[h][0] += a[h] * b;
            acc[h][1] += a[h] * b1;
            acc[h][2] += a[h] * b2;
            acc[h][3] += a[h] * b3;
        }
        ap += 4 * MRV;
        bp += 4;
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

/* All tiles of one row panel: MR full rows, nc columns (a multiple of 4). Packed B panel t
 * is at bp + t*kc*4; src and dst point at the panel's first element. */
GEMM_INLINE void gemm_sweep(const int MRV, const int init, const int fin, int nc, int kc, const float *ap,
                            const float *bp, const float *src, ptrdiff_t lds, float scale,
                            float *dst, ptrdiff_t ldd, float beta)
{
    for (int j = 0; j < nc; j += 4)
        gemm_tile(MRV, init, fin, kc, ap, bp + (ptrdiff_t)j * kc, src + j, lds, scale, dst + j, ldd, beta);
}

#define GEMM_SWEEP(MRV, INIT, FIN) \
    static void gemm_sweep_##MRV##_##INIT##_##FIN(int nc, int kc, const float *ap, const float *bp, \
        const float *src, ptrdiff_t lds, float scale, float *dst, ptrdiff_t ldd, float beta) \
    { gemm_sweep(MRV, INIT, FIN, nc, kc, ap, bp, src, lds, scale, dst, ldd, beta); }
#define GEMM_SWEEPS(MRV) \
    GEMM_SWEEP(MRV, INIT_LOAD, FIN_STORE) GEMM_SWEEP(MRV, INIT_LOAD_SCALED, FIN_STORE) \
    GEMM_SWEEP(MRV, INIT_ZERO, FIN_STORE) GEMM_SWEEP(MRV, INIT_ZERO, FIN_ADD) \
    GEMM_SWEEP(MRV, INIT_ZERO, FIN_ADD_SCALED) GEMM_SWEEP(MRV, INIT_LOAD, FIN_ADD) \
    GEMM_SWEEP(MRV, INIT_LOAD, FIN_ADD_SCALED)
GEMM_SWEEPS(1)
GEMM_SWEEPS(2)

typedef void (*gemm_sweep_fn)(int, int, const float *, const float *, const float *, ptrdiff_t, float,
                              float *, ptrdiff_t, float);

static gemm_sweep_fn gemm_pick_sweep(int MR, int init, int fin)
{
#define GEMM_PICK(MRV) \
    switch (init * 3 + fin) { \
    case INIT_LOAD * 3 + FIN_STORE: return gemm_sweep_##MRV##_INIT_LOAD_FIN_STORE; \
    case INIT_LOAD_SCALED * 3 + FIN_STORE: return gemm_sweep_##MRV##_INIT_LOAD_SCALED_FIN_STORE; \
    case INIT_ZERO * 3 + FIN_STORE: return gemm_sweep_##MRV##_INIT_ZERO_FIN_STORE; \
    case INIT_ZERO * 3 + FIN_ADD: return gemm_sweep_##MRV##_INIT_ZERO_FIN_ADD; \
    case INIT_ZERO * 3 + FIN_ADD_SCALED: return gemm_sweep_##MRV##_INIT_ZERO_FIN_ADD_SCALED; \
    case INIT_LOAD * 3 + FIN_ADD: return gemm_sweep_##MRV##_INIT_LOAD_FIN_ADD; \
    default: return gemm_sweep_##MRV##_INIT_LOAD_FIN_ADD_SCALED; \
    }
    if (MR == 8) { GEMM_PICK(2) } else { GEMM_PICK(1) }
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
    for (int k = 0; k < kc; ++k) {
        int r = r0;
        for (; r < mr; ++r) ap[k * MR + r] = alpha * A[(ptrdiff_t)(i0 + r) * lda + p0 + k];
        for (; r < MR; ++r) ap[k * MR + r] = 0.f;
    }
}

/* Pack columns j0..j0+nc-1, depth p0..p0+kc-1 of op(B) into panels of 4 columns:
 * panel t holds bp[t*kc*4 + k*4 + x] = op(B)[p0 + k][j0 + 4t + x], columns past nc zero. */
static void gemm_pack_b_block(int tb, const float *B, int ldb, int p0, int kc, int j0, int nc, float *bp)
{
    int full = nc / 4, w = nc % 4;               /* full panels, width of the last partial one */
    if (!tb) {                                   /* op(B)[k][j] = B[k][j]: walk rows of B in order */
        for (int k = 0; k < kc; ++k) {
            const float *src = B + (ptrdiff_t)(p0 + k) * ldb + j0;
            float *dst = bp + 4 * k;
            for (int t = 0; t < full; ++t) v4f_store(dst + (ptrdiff_t)t * kc * 4, v4f_load(src + 4 * t));
            if (w)
                for (int x = 0; x < 4; ++x) dst[(ptrdiff_t)full * kc * 4 + x] = x < w ? src[4 * full + x] : 0.f;
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
        for (; k < kc; ++k)
            for (int x = 0; x < 4; ++x) dst[4 * k + x] = x < wt ? src[x * (ptrdiff_t)ldb + k] : 0.f;
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

/* One row panel (mr <= MR rows, nc columns of the current op(B) block), any shape. */
static void gemm_panel(gemm_sweep_fn sweep, int init, int fin, int MR, int mr, int nc, int kc, const float *ap,
                       const float *bp, const float *src, ptrdiff_t lds, float scale, float *dst, ptrdiff_t ldd,
                       float beta)
{
    int full = mr == MR ? nc & ~3 : 0;           /* columns done in place */
    if (full) sweep(full, kc, ap, bp, src, lds, scale, dst, ldd, beta);
    for (int j = full; j < nc; j += GEMM_PAD_COLS) {
        int cols = nc - j < GEMM_PAD_COLS ? nc - j : GEMM_PAD_COLS, wide = (cols + 3) & ~3;
        memset(gemm_pad_src, 0, sizeof(float) * MR * wide);
        memset(gemm_pad_dst, 0, sizeof(float) * MR * wide);
        if (init != INIT_ZERO) gemm_copy_block(gemm_pad_src, wide, src + j, lds, mr, cols);
        if (fin != FIN_STORE) gemm_copy_block(gemm_pad_dst, wide, dst + j, ldd, mr, cols);
        sweep(wide, kc, ap, bp + (ptrdiff_t)j * kc, gemm_pad_src, wide, scale, gemm_pad_dst, wide, beta);
        gemm_copy_block(dst + j, ldd, gemm_pad_dst, wide, mr, cols);
    }
}

/* The whole product for M, N, K > 0 on checked buffers. Returns 0, or -1 when the NT/TT
 * workspace cannot be allocated. */
static int gemm_blocked(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                        const float *B, int ldb, float beta, float *C, int ldc)
{
    const int sum_first = tb;                    /* NT, TT: sum from 0, then C = C*BETA + sum */
    /* The packed block holds GEMM_KC * GEMM_NC floats: narrow products take deeper blocks. */
    int kc_max = GEMM_KC * GEMM_NC / ((N + 3) & ~3);
    kc_max = kc_max < GEMM_KC ? GEMM_KC : kc_max > GEMM_KC_MAX ? GEMM_KC_MAX : kc_max;
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
            gemm_pack_b_block(tb, B, ldb, p0, kc, j0, nc, gemm_pack_b);
            for (int i0 = 0; i0 < M;) {
                int MR = M - i0 > 4 ? 8 : 4, mr = M - i0 < MR ? M - i0 : MR;
                gemm_pack_a_panel(ta, A, lda, alpha, i0, mr, MR, p0, kc, gemm_pack_a);
                gemm_panel(gemm_pick_sweep(MR, init, fin), init, fin, MR, mr, nc, kc, gemm_pack_a, gemm_pack_b,
                           src ? src + i0 * lds + j0 : NULL, lds, beta,
                           dst + i0 * ldd + j0, ldd, beta);
                i0 += mr;
            }
        }
    }
    free(T);
    return 0;
}

static PyObject *dlk_gemm(PyObject *self, PyObject *args)
{
    int ta, tb, M, N, K, lda, ldb, ldc;
    float alpha, beta;
    Py_buffer A, B, C;
    if (!PyArg_ParseTuple(args, "iiiiify*iy*ifw*i", &ta, &tb, &M, &N, &K, &alpha,
                          &A, &lda, &B, &ldb, &beta, &C, &ldc))
        return NULL;
    PyObject *result = NULL;
    ta = ta != 0; tb = tb != 0;
    if (M < 0 || N < 0 || K < 0) { PyErr_SetString(PyExc_ValueError, "_dlk.gemm: negative size"); goto done; }
    if (M == 0 || N == 0) { result = Py_None; Py_INCREF(result); goto done; }
    if ((ta ? lda < M : lda < K) || (tb ? ldb < K : ldb < N) || ldc < N) {
        PyErr_SetString(PyExc_ValueError, "_dlk.gemm: leading dimension too small"); goto done;
    }
    /* elements touched: op(A) is M x K, stored K x M (ta) or M x K; op(B) likewise */
    long long a_need = K == 0 ? 0 : (ta ? (long long)(K - 1) * lda + M : (long long)(M - 1) * lda + K);
    long long b_need = K == 0 ? 0 : (tb ? (long long)(N - 1) * ldb + K : (long long)(K - 1) * ldb + N);
    if (!NEED_F(A, a_need, "gemm A") || !NEED_F(B, b_need, "gemm B") ||
        !NEED_F(C, (long long)(M - 1) * ldc + N, "gemm C"))
        goto done;
    float *c = F32(C);
    if (K == 0) {
        if (beta != 1.f)
            for (int i = 0; i < M; ++i)
                for (int j = 0; j < N; ++j) c[(ptrdiff_t)i * ldc + j] *= beta;
    } else if (gemm_blocked(ta, tb, M, N, K, alpha, F32(A), lda, F32(B), ldb, beta, c, ldc) < 0) {
        PyErr_NoMemory(); goto done;
    }
    result = Py_None; Py_INCREF(result);
done:
    PyBuffer_Release(&A); PyBuffer_Release(&B); PyBuffer_Release(&C);
    return result;
}
