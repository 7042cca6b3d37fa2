/* General matrix multiply, Darknet's gemm(TA, TB, M, N, K, ALPHA, A, lda, B, ldb, BETA, C, ldc):
 *
 *   C[i][j] = BETA * C[i][j] + sum_k ALPHA * op(A)[i][k] * op(B)[k][j]
 *
 * with op(X) = X or X^T, row-major, leading dimensions lda, ldb, ldc.
 * BETA is applied first; the k-sum for NN and TN is accumulated onto C in order
 * k = 0..K-1 (Darknet's loop order), so C's value is the running sum. */
#include "dlk_common.h"

/* NN, 4x16 register block: acc[r][0..15] starts as C[i+r][j..j+15]; for each k,
 * acc[r] += (ALPHA*A[i+r][k]) * B[k][j..j+15]. Same per-element order as Darknet. */
static void gemm_nn(int M, int N, int K, float ALPHA, const float *A, int lda,
                    const float *B, int ldb, float *C, int ldc)
{
    int i = 0;
    for (; i + 4 <= M; i += 4) {
        int j = 0;
        for (; j + 16 <= N; j += 16) {
            v4f acc[4][4];
            for (int r = 0; r < 4; ++r)
                for (int q = 0; q < 4; ++q) acc[r][q] = v4f_load(C + (i + r) * ldc + j + 4 * q);
            for (int k = 0; k < K; ++k) {
                const float *b = B + k * ldb + j;
                v4f b0 = v4f_load(b), b1 = v4f_load(b + 4), b2 = v4f_load(b + 8), b3 = v4f_load(b + 12);
                for (int r = 0; r < 4; ++r) {
                    v4f a = v4f_splat(ALPHA * A[(i + r) * lda + k]);
                    acc[r][0] += a * b0; acc[r][1] += a * b1;
                    acc[r][2] += a * b2; acc[r][3] += a * b3;
                }
            }
            for (int r = 0; r < 4; ++r)
                for (int q = 0; q < 4; ++q) v4f_store(C + (i + r) * ldc + j + 4 * q, acc[r][q]);
        }
        for (; j + 4 <= N; j += 4) {
            v4f acc[4];
            for (int r = 0; r < 4; ++r) acc[r] = v4f_load(C + (i + r) * ldc + j);
            for (int k = 0; k < K; ++k) {
                v4f b = v4f_load(B + k * ldb + j);
                for (int r = 0; r < 4; ++r) acc[r] += v4f_splat(ALPHA * A[(i + r) * lda + k]) * b;
            }
            for (int r = 0; r < 4; ++r) v4f_store(C + (i + r) * ldc + j, acc[r]);
        }
        for (; j < N; ++j)
            for (int r = 0; r < 4; ++r) {
                float s = C[(i + r) * ldc + j];
                for (int k = 0; k < K; ++k) s += ALPHA * A[(i + r) * lda + k] * B[k * ldb + j];
                C[(i + r) * ldc + j] = s;
            }
    }
    for (; i < M; ++i) {
        float *c = C + i * ldc;
        for (int k = 0; k < K; ++k) {
            float a = ALPHA * A[i * lda + k];
            const float *b = B + k * ldb;
            int j = 0;
            for (; j + 4 <= N; j += 4) v4f_store(c + j, v4f_load(c + j) + v4f_splat(a) * v4f_load(b + j));
            for (; j < N; ++j) c[j] += a * b[j];
        }
    }
}

/* NT: C[i][j] += sum_k ALPHA*A[i][k]*B[j][k], a dot product of two rows,
 * summed in four interleaved lanes (k mod 4) then combined: lanes are a
 * reassociation of Darknet's sequential sum (the -Ofast original does the same). */
static void gemm_nt(int M, int N, int K, float ALPHA, const float *A, int lda,
                    const float *B, int ldb, float *C, int ldc)
{
    for (int i = 0; i < M; ++i) {
        const float *a = A + i * lda;
        for (int j = 0; j < N; ++j) {
            const float *b = B + j * ldb;
            v4f acc = v4f_splat(0.f);
            int k = 0;
            for (; k + 4 <= K; k += 4) acc += v4f_load(a + k) * v4f_load(b + k);
            float sum = (acc[0] + acc[1]) + (acc[2] + acc[3]);
            for (; k < K; ++k) sum += a[k] * b[k];
            C[i * ldc + j] += ALPHA * sum;
        }
    }
}

/* TN: C[i][j] += sum_k ALPHA*A[k][i]*B[k][j], k outer as in Darknet. */
static void gemm_tn(int M, int N, int K, float ALPHA, const float *A, int lda,
                    const float *B, int ldb, float *C, int ldc)
{
    for (int i = 0; i < M; ++i) {
        float *c = C + i * ldc;
        for (int k = 0; k < K; ++k) {
            float a = ALPHA * A[k * lda + i];
            const float *b = B + k * ldb;
            int j = 0;
            for (; j + 4 <= N; j += 4) v4f_store(c + j, v4f_load(c + j) + v4f_splat(a) * v4f_load(b + j));
            for (; j < N; ++j) c[j] += a * b[j];
        }
    }
}

/* TT: C[i][j] += sum_k ALPHA*A[k][i]*B[j][k]. */
static void gemm_tt(int M, int N, int K, float ALPHA, const float *A, int lda,
                    const float *B, int ldb, float *C, int ldc)
{
    for (int i = 0; i < M; ++i)
        for (int j = 0; j < N; ++j) {
            float sum = 0;
            for (int k = 0; k < K; ++k) sum += ALPHA * A[i + k * lda] * B[k + j * ldb];
            C[i * ldc + j] += sum;
        }
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
    if (M < 0 || N < 0 || K < 0) { PyErr_SetString(PyExc_ValueError, "_dlk.gemm: negative size"); goto done; }
    if (M == 0 || N == 0) { result = Py_None; Py_INCREF(result); goto done; }
    /* last element touched: A[(M-1)*lda + K-1] (NN), B[(K-1)*ldb + N-1] (NN) ... */
    long long a_need = K == 0 ? 0 : (ta ? (long long)(K - 1) * lda + M : (long long)(M - 1) * lda + K);
    long long b_need = K == 0 ? 0 : (tb ? (long long)(N - 1) * ldb + K : (long long)(K - 1) * ldb + N);
    if ((ta ? lda < M : lda < K) || (tb ? ldb < K : ldb < N) || ldc < N) {
        PyErr_SetString(PyExc_ValueError, "_dlk.gemm: leading dimension too small"); goto done;
    }
    if (!NEED_F(A, a_need, "gemm A") || !NEED_F(B, b_need, "gemm B") ||
        !NEED_F(C, (long long)(M - 1) * ldc + N, "gemm C"))
        goto done;
    float *c = F32(C);
    if (beta != 1.f)
        for (int i = 0; i < M; ++i)
            for (int j = 0; j < N; ++j) c[i * ldc + j] *= beta;
    if (K > 0) {
        if (!ta && !tb) gemm_nn(M, N, K, alpha, F32(A), lda, F32(B), ldb, c, ldc);
        else if (ta && !tb) gemm_tn(M, N, K, alpha, F32(A), lda, F32(B), ldb, c, ldc);
        else if (!ta && tb) gemm_nt(M, N, K, alpha, F32(A), lda, F32(B), ldb, c, ldc);
        else gemm_tt(M, N, K, alpha, F32(A), lda, F32(B), ldb, c, ldc);
    }
    result = Py_None; Py_INCREF(result);
done:
    PyBuffer_Release(&A); PyBuffer_Release(&B); PyBuffer_Release(&C);
    return result;
}
