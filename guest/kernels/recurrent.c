/* Elementwise steps of the recurrent layers (Darknet rnn/gru/lstm layers: blas.c mul_cpu,
 * weighted_sum_cpu, weighted_delta_cpu), each element with its own float
 * operations in this order:
 *
 *   mul:            y[i] *= x[i]
 *   weighted_sum:   c[i] = s[i]*a[i] + (1 - s[i])*b[i]
 *   weighted_delta: da[i] += dc[i]*s[i];  db[i] += dc[i]*(1 - s[i]);  ds[i] += dc[i]*(a[i] - b[i])
 *   mult_add:       c[i] += a[i]*b[i]   (Darknet mult_add_into)
 * (tanh and its gradient are activation.h's, through activate/gradient.) */
#include "kernels.h"

void dlk_rnn_mul(ptrdiff_t n, const float *x, float *y)
{
    for (ptrdiff_t i = 0; i < n; ++i) y[i] *= x[i];
}

void dlk_rnn_weighted_sum(ptrdiff_t n, const float *a, const float *b, const float *s, float *c)
{
    for (ptrdiff_t i = 0; i < n; ++i) c[i] = s[i] * a[i] + (1 - s[i]) * b[i];
}

void dlk_rnn_weighted_delta(ptrdiff_t n, const float *a, const float *b, const float *s, float *da, float *db,
                            float *ds, const float *dc)
{
    for (ptrdiff_t i = 0; i < n; ++i) {
        if (da) da[i] += dc[i] * s[i];
        if (db) db[i] += dc[i] * (1 - s[i]);
        ds[i] += dc[i] * (a[i] - b[i]);
    }
}

void dlk_rnn_mult_add(ptrdiff_t n, const float *a, const float *b, float *c)
{
    for (ptrdiff_t i = 0; i < n; ++i) c[i] += a[i] * b[i];
}
