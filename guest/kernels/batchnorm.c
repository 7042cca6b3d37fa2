/* Batch normalisation in training (Darknet batchnorm_layer.c forward_batchnorm_layer and
 * backward_batchnorm_layer with net.train = 1, and the blas.c loops they call), in Darknet's
 * float order. x is batch x n x size (n channels of `size` values: out_h*out_w for a
 * convolution, 1 for a connected layer); statistics are per channel over batch and space,
 * M = batch*size values each. eps = .00001f (the deltas), .000001f (normalize_cpu).
 *
 * batchnorm_forward_train (on out, in place):
 *   mean[f] = (sum_{b,p} out[b][f][p], a float sum in b, p order) * f32(1./M)         (mean_cpu)
 *   var[f]  = (sum_{b,p} f32((double)var + (double)(out - mean[f])^2)) * f32(1./(M-1))
 *             (variance_cpu: pow(d, 2) is exact in double, each partial sum rounded to float)
 *   rolling_mean = rolling_mean * .99f, then += .01f * mean   (scal_cpu, axpy_cpu); same for var
 *   x = out                                                    (kept for backward)
 *   out = (float)((double)f32(out - mean) / (sqrt((double)var) + (double).000001f)) (normalize_cpu)
 *   x_norm = out
 *   out = out * scales[f], then out + biases[f]                (scale_bias, add_bias)
 *
 * batchnorm_backward (on delta, in place; mean and var are the batch's, from the forward):
 *   bias_upd[f]  += per b: (sum_p delta, a float sum)          (backward_bias)
 *   scale_upd[f] += (sum_{b,p} delta * x_norm, one float sum)  (backward_scale_cpu)
 *   delta *= scales[f]                                         (scale_bias)
 *   s = f32(var[f] + .00001f)
 *   mean_delta[f] = f32((sum_{b,p} delta, float) * (-1./sqrt(s)))                  (mean_delta_cpu)
 *   var_delta[f]  = f32((sum_{b,p} delta * f32(x - mean), float) * (-.5 * pow(s, -1.5)))
 *                                                                                 (variance_delta_cpu)
 *   delta = f32(delta / sqrt(s) + var_delta * 2. * f32(x - mean) / M + (double)f32(mean_delta / (float)M))
 *           (the first two terms in double, left to right)                   (normalize_delta_cpu)
 * The caller applies the activation's gradient before (delta *= act'(y)). */
#include <math.h>
#include "kernels.h"

void dlk_batchnorm_forward_train(float *out, float *x, float *x_norm, float *mean, float *var, float *rolling_mean,
                                 float *rolling_var, const float *scales, const float *biases, int batch, int n,
                                 int size)
{
    long long M = (long long)batch * size;
    float mean_scale = 1. / (int)M, var_scale = 1. / ((int)M - 1);
    for (int f = 0; f < n; ++f) {
        float s = 0;
        for (int b = 0; b < batch; ++b) {
            const float *row = out + ((long long)b * n + f) * size;
            for (int p = 0; p < size; ++p) s += row[p];
        }
        mean[f] = s * mean_scale;
    }
    for (int f = 0; f < n; ++f) {
        float v = 0, m = mean[f];
        for (int b = 0; b < batch; ++b) {
            const float *row = out + ((long long)b * n + f) * size;
            for (int p = 0; p < size; ++p) {
                float d = row[p] - m;
                v = (float)((double)v + (double)d * (double)d);
            }
        }
        var[f] = v * var_scale;
    }
    for (int f = 0; f < n; ++f) rolling_mean[f] *= .99f;
    for (int f = 0; f < n; ++f) rolling_mean[f] += .01f * mean[f];
    for (int f = 0; f < n; ++f) rolling_var[f] *= .99f;
    for (int f = 0; f < n; ++f) rolling_var[f] += .01f * var[f];
    memcpy(x, out, sizeof(float) * (size_t)(M * n));
    for (int b = 0; b < batch; ++b)
        for (int f = 0; f < n; ++f) {
            float *row = out + ((long long)b * n + f) * size;
            float m = mean[f];
            double den = sqrt((double)var[f]) + .000001f;
            for (int p = 0; p < size; ++p) {
                float diff = row[p] - m;
                row[p] = (float)(diff / den);
            }
        }
    memcpy(x_norm, out, sizeof(float) * (size_t)(M * n));
    for (int b = 0; b < batch; ++b)
        for (int f = 0; f < n; ++f) {
            float *row = out + ((long long)b * n + f) * size;
            float sc = scales[f], bias = biases[f];
            for (int p = 0; p < size; ++p) row[p] *= sc;
            for (int p = 0; p < size; ++p) row[p] += bias;
        }
}

void dlk_batchnorm_backward(const float *x, const float *x_norm, float *delta, const float *mean, const float *var,
                            const float *scales, float *scale_upd, float *bias_upd, float *mean_delta,
                            float *var_delta, int batch, int n, int size)
{
    long long M = (long long)batch * size;
    dlk_backward_bias(bias_upd, delta, batch, n, size);
    for (int f = 0; f < n; ++f) {
        float s = 0;
        for (int b = 0; b < batch; ++b) {
            long long o = ((long long)b * n + f) * size;
            for (int p = 0; p < size; ++p) s += delta[o + p] * x_norm[o + p];
        }
        scale_upd[f] += s;
    }
    for (int b = 0; b < batch; ++b)
        for (int f = 0; f < n; ++f) {
            float *row = delta + ((long long)b * n + f) * size;
            float sc = scales[f];
            for (int p = 0; p < size; ++p) row[p] *= sc;
        }
    for (int f = 0; f < n; ++f) {
        float md = 0, vd = 0, m = mean[f];
        for (int b = 0; b < batch; ++b) {
            long long o = ((long long)b * n + f) * size;
            for (int p = 0; p < size; ++p) md += delta[o + p];
        }
        for (int b = 0; b < batch; ++b) {
            long long o = ((long long)b * n + f) * size;
            for (int p = 0; p < size; ++p) vd += delta[o + p] * (x[o + p] - m);
        }
        float s = var[f] + .00001f;
        mean_delta[f] = (float)(md * (-1. / sqrt(s)));
        var_delta[f] = (float)(vd * (-.5 * pow(s, (float)(-3. / 2.))));
    }
    int count = (int)M;
    for (int b = 0; b < batch; ++b)
        for (int f = 0; f < n; ++f) {
            float *row = delta + ((long long)b * n + f) * size;
            const float *xr = x + ((long long)b * n + f) * size;
            float m = mean[f], vd = var_delta[f];
            double den = sqrt((float)(var[f] + .00001f));
            float mterm = mean_delta[f] / count;
            for (int p = 0; p < size; ++p) {
                float d = xr[p] - m;
                row[p] = (float)(row[p] * 1. / den + vd * 2. * d / count + mterm);
            }
        }
}
