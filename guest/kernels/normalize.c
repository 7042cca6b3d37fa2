/* Darknet's normalisations across channels: [l2norm] (blas.c l2normalize_cpu) and [lrn] /
 * [normalization] (normalization_layer.c), for batch images of c channel planes of h*w pixels.
 *
 * l2norm_forward (out = a copy of in, then per pixel i of each image):
 *   s = 0; s += out[f][i]^2 for f = 0 .. c-1 (a sequential float sum); s = sqrtf(s);
 *   out[f][i] /= s          (an all-zero pixel gives 0/0 = NaN, as Darknet)
 *   Darknet's backward is prev_delta += delta (its derivative is commented out): no kernel.
 *
 * lrn_forward, per image (Darknet's running window; norms[0] misses channel size/2, as Darknet):
 *   sq[k] = f32(in[k]^2)
 *   norms[0] = kappa; norms[0] += alpha*sq[k] for k = 0 .. size/2 - 1
 *   norms[k] = norms[k-1]; - alpha*sq[k - (size-1)/2 - 1] if that is >= 0;
 *              + alpha*sq[k + size/2] if that is < c          (k = 1 .. c-1)
 *   out = f32(pow(norms, -beta)) * in
 * lrn_backward (Darknet's "approximate" backward, which overwrites prev_delta):
 *   prev_delta = f32(pow(norms, -beta)) * delta
 * Each axpy step is a float product then a float sum (alpha*sq rounded, then added). */
#include <math.h>
#include "kernels.h"

void dlk_l2norm_forward(const float *in, int batch, int c, int spatial, float *out)
{
    for (int b = 0; b < batch; ++b) {
        const float *x = in + (long long)b * c * spatial;
        float *y = out + (long long)b * c * spatial;
        for (long long j = 0; j < (long long)c * spatial; ++j) y[j] = x[j];
        for (int i = 0; i < spatial; ++i) {
            float sum = 0;
            for (int f = 0; f < c; ++f) {
                float v = y[(long long)f * spatial + i];
                sum += v * v;
            }
            sum = sqrtf(sum);
            for (int f = 0; f < c; ++f) y[(long long)f * spatial + i] /= sum;
        }
    }
}

void dlk_lrn_forward(const float *in, int batch, int c, int spatial, int size, float alpha, float beta, float kappa,
                     float *squared, float *norms, float *out)
{
    long long n = (long long)c * spatial;
    for (int b = 0; b < batch; ++b) {
        const float *x = in + b * n;
        float *sq = squared + b * n, *nm = norms + b * n;
        for (long long j = 0; j < n; ++j) sq[j] = (float)pow((double)x[j], 2.0);
        for (int i = 0; i < spatial; ++i) nm[i] = kappa;
        for (int k = 0; k < size / 2 && k < c; ++k)
            for (int i = 0; i < spatial; ++i) nm[i] += alpha * sq[(long long)k * spatial + i];
        for (int k = 1; k < c; ++k) {
            float *cur = nm + (long long)k * spatial;
            const float *prev_row = nm + (long long)(k - 1) * spatial;
            for (int i = 0; i < spatial; ++i) cur[i] = prev_row[i];
            int prev = k - ((size - 1) / 2) - 1;
            int next = k + (size / 2);
            if (prev >= 0)
                for (int i = 0; i < spatial; ++i) cur[i] += -alpha * sq[(long long)prev * spatial + i];
            if (next < c)
                for (int i = 0; i < spatial; ++i) cur[i] += alpha * sq[(long long)next * spatial + i];
        }
    }
    long long total = (long long)batch * n;
    for (long long j = 0; j < total; ++j) out[j] = (float)pow((double)norms[j], (double)-beta);
    for (long long j = 0; j < total; ++j) out[j] *= in[j];
}

void dlk_lrn_backward(const float *norms, const float *delta, ptrdiff_t n, float beta, float *prev_delta)
{
    for (ptrdiff_t j = 0; j < n; ++j) prev_delta[j] = (float)pow((double)norms[j], (double)-beta);
    for (ptrdiff_t j = 0; j < n; ++j) prev_delta[j] *= delta[j];
}
