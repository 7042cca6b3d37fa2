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
