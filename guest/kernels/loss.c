/* The classifier's last layers (Darknet softmax_layer.c, cost_layer.c):
 *
 *   softmax (groups = 1, each row of n values, temperature T):
 *     m = max_i x_i;  e_i = f32(exp(x_i/T - m/T));  s = sum_i e_i (sequential float);  y_i = e_i / s
 *   softmax_cost (cross-entropy):  delta_i = t_i - y_i;  cost = sum_i (t_i ? f32(-log(y_i)) : 0)
 *   sse_cost:                      delta_i = t_i - x_i;  cost = sum_i delta_i^2
 * Costs are summed sequentially in float, as Darknet's sum_array; delta is Darknet's
 * negative gradient. */
#include <float.h>
#include <math.h>
#include "kernels.h"

void dlk_softmax(const float *in, int batch, int n, float temp, float *out)
{
    for (int b = 0; b < batch; ++b) {
        const float *x = in + (long long)b * n;
        float *y = out + (long long)b * n;
        float largest = -FLT_MAX, sum = 0;
        for (int i = 0; i < n; ++i) if (x[i] > largest) largest = x[i];
        for (int i = 0; i < n; ++i) {
            float e = (float)exp((double)(x[i] / temp - largest / temp));
            sum += e;
            y[i] = e;
        }
        for (int i = 0; i < n; ++i) y[i] /= sum;
    }
}

float dlk_softmax_cost(const float *y, const float *truth, float *delta, ptrdiff_t n)
{
    const float *p = y, *t = truth;
    float *d = delta, cost = 0;
    for (ptrdiff_t i = 0; i < n; ++i) {
        float err = t[i] != 0 ? (float)-log((double)p[i]) : 0.f;
        d[i] = t[i] - p[i];
        cost += err;
    }
    return cost;
}

float dlk_sse_cost(const float *x, const float *truth, float *delta, ptrdiff_t n)
{
    const float *p = x, *t = truth;
    float *d = delta, cost = 0;
    for (ptrdiff_t i = 0; i < n; ++i) {
        d[i] = t[i] - p[i];
        cost += d[i] * d[i];
    }
    return cost;
}

/* Darknet's [cost] layer on the CPU (cost_layer.c forward_cost_layer, blas.c l2/l1/smooth_l1),
 * over n = batch*inputs values, with d = t - x:
 *   COST_L2 (sse; also seg and wgan, which the CPU build computes as sse):
 *            err = d*d;  delta = d
 *   COST_MASKED: first x[i] = -1234 where t[i] == -1234 (SECRET_NUM; x is the previous
 *            layer's output, changed in place as Darknet does), then as L2
 *   COST_SMOOTH: |d| < 1: err = d*d, delta = d;  else err = 2|d| - 1, delta = d < 0 ? 1 : -1
 *            (Darknet's sign: away from the truth outside the quadratic zone)
 *   COST_L1: err = |d|;  delta = d > 0 ? 1 : -1
 * cost = sum of err (sequential float sum, as sum_array). err is Darknet's l.output. */
float dlk_cost_forward(int type, float *x, const float *truth, float *delta, float *err, ptrdiff_t n)
{
    if (type == COST_MASKED)
        for (ptrdiff_t i = 0; i < n; ++i)
            if (truth[i] == -1234.f) x[i] = -1234.f;
    for (ptrdiff_t i = 0; i < n; ++i) {
        float d = truth[i] - x[i];
        if (type == COST_SMOOTH) {
            float a = fabsf(d);
            if (a < 1) { err[i] = d * d; delta[i] = d; }
            else { err[i] = 2 * a - 1; delta[i] = d < 0 ? 1.f : -1.f; }
        } else if (type == COST_L1) {
            err[i] = fabsf(d);
            delta[i] = d > 0 ? 1.f : -1.f;
        } else {
            err[i] = d * d;
            delta[i] = d;
        }
    }
    float cost = 0;
    for (ptrdiff_t i = 0; i < n; ++i) cost += err[i];
    return cost;
}

/* [logistic] (logistic_layer.c, blas.c logistic_x_ent_cpu), p the layer's logistic output:
 *   err = f32(-t*log(p) - (1-t)*log(1-p))  (logs in double);  delta = t - p;  cost = sum err */
float dlk_logistic_x_ent(const float *p, const float *truth, float *delta, float *err, ptrdiff_t n)
{
    for (ptrdiff_t i = 0; i < n; ++i) {
        float t = truth[i], q = p[i];
        err[i] = (float)(-t * log((double)q) - (1 - t) * log((double)(1 - q)));
        delta[i] = t - q;
    }
    float cost = 0;
    for (ptrdiff_t i = 0; i < n; ++i) cost += err[i];
    return cost;
}
