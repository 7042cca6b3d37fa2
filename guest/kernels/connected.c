/* Connected layer backward, in Darknet's float order (docs/darknet-contract.md §4.6).
 *
 * connected_backward (delta: batch x outputs, input: batch x inputs, W: outputs x inputs):
 *   delta[i] *= act'(out[i])
 *   bias_upd[o] += delta[b][o]                       for b = 0.. in order   (backward_bias, size 1)
 *   W_upd[o][k] += delta[b][o] * in[b][k]            for o, then b in order (gemm TN onto W_upd)
 *   prev[b][k]  += delta[b][o] * W[o][k]             for b, then o in order (gemm NN onto prev)
 * Each element gets its terms one by one in Darknet's order; terms with delta == 0 are skipped
 * (adding a zero product never changes a float sum but for the sign of a zero). After dropout
 * (p = .8) and relu most deltas are zero. */
#include <stdlib.h>
#include "kernels.h"
#include "activation.h"
#include "simd.h"

/* row[0..len) += sum_j coef[j] * src[j][0..len), the terms added one after the other. */
static void fc_rows_axpy(float *row, int len, const float *const *src, const float *coef, int cnt)
{
    int j0 = 0;
    for (; j0 + 8 <= len; j0 += 8) {
        v4f a0 = v4f_load(row + j0), a1 = v4f_load(row + j0 + 4);
        for (int t = 0; t < cnt; ++t) {
            v4f c = v4f_splat(coef[t]);
            a0 += c * v4f_load(src[t] + j0);
            a1 += c * v4f_load(src[t] + j0 + 4);
        }
        v4f_store(row + j0, a0);
        v4f_store(row + j0 + 4, a1);
    }
    for (; j0 < len; ++j0) {
        float a = row[j0];
        for (int t = 0; t < cnt; ++t) a += coef[t] * src[t][j0];
        row[j0] = a;
    }
}

/* prev: the input delta, or NULL; bias_upd: NULL for a batch-normalised layer. */
int dlk_connected_backward(const float *in, int batch, int inputs, const float *out, float *delta, int outputs,
                           int act, const float *weights, float *bias_upd, float *weight_upd, float *prev)
{
    int status = 0;
    const float **src = NULL;
    float *coef = NULL;
    long long nd = (long long)batch * outputs;
    int most = batch > outputs ? batch : outputs;
    src = malloc(sizeof(float *) * (size_t)(most + 1));
    coef = malloc(sizeof(float) * (size_t)(most + 1));
    if (!src || !coef) { status = DLK_ERR_NOMEM; goto done; }
    float *D = delta, *bu = bias_upd, *wu = weight_upd;
    const float *X = in, *W = weights;
    grad_array(out, D, nd, act);
    if (bu) /* NULL: batch-normalised, batchnorm_backward did the biases */
        for (int b = 0; b < batch; ++b)
            for (int o = 0; o < outputs; ++o) bu[o] += D[(long long)b * outputs + o];
    for (int o = 0; o < outputs; ++o) {
        int cnt = 0;
        for (int b = 0; b < batch; ++b) {                 /* branch-free: most deltas are zero */
            float d = D[(long long)b * outputs + o];
            src[cnt] = X + (long long)b * inputs;
            coef[cnt] = d;
            cnt += d != 0.f;
        }
        if (cnt) fc_rows_axpy(wu + (long long)o * inputs, inputs, src, coef, cnt);
    }
    if (prev) {
        float *P = prev;
        for (int b = 0; b < batch; ++b) {
            int cnt = 0;
            for (int o = 0; o < outputs; ++o) {
                float d = D[(long long)b * outputs + o];
                src[cnt] = W + (long long)o * inputs;
                coef[cnt] = d;
                cnt += d != 0.f;
            }
            if (cnt) fc_rows_axpy(P + (long long)b * inputs, inputs, src, coef, cnt);
        }
    }
done:
    free(src); free(coef);
    return status;
}
