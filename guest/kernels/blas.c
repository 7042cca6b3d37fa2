/* Vector arithmetic (Darknet blas.c, activations.c, convolutional_layer.c), in float32, each
 * element with its own float operations in this order:
 *
 *   axpy:            y[i] += a*x[i]
 *   scal:            x[i] *= a
 *   fill:            x[i] = a
 *   activate:        x[i] = act(x[i])                 (activation.h)
 *   gradient:        delta[i] *= act'(y[i])           (y: the activated output)
 *   add_bias:        out[b][f][p] += bias[f]
 *   backward_bias:   bias_upd[f] += sum_p delta[b][f][p]   (per b, a sequential float sum first)
 *   batchnorm_infer: x = f32(x - mean[f]) / (sqrt(var[f]) + .000001f), divided in double, stored
 *                    as float; then x = x*scales[f] + biases[f] (two float steps)
 *                    (Darknet normalize_cpu, scale_bias, add_bias)
 *   sgd_update:      bias += step * bias_upd;  bias_upd *= momentum
 *                    W_upd += decay * W;  W += step * W_upd;  W_upd *= momentum
 *                    (Darknet update_convolutional_layer / update_connected_layer, per element,
 *                    with step = f32(lr / B) and decay = f32(-decay * B) given by the caller: the
 *                    same float operations as its five axpy/scal passes) */
#include <math.h>
#include "kernels.h"
#include "activation.h"

void dlk_axpy(ptrdiff_t n, float a, const float *x, float *y)
{
    for (ptrdiff_t i = 0; i < n; ++i) y[i] += a * x[i];
}

void dlk_scal(ptrdiff_t n, float a, float *x)
{
    for (ptrdiff_t i = 0; i < n; ++i) x[i] *= a;
}

void dlk_fill(ptrdiff_t n, float a, float *x)
{
    for (ptrdiff_t i = 0; i < n; ++i) x[i] = a;
}

void dlk_activate(float *x, ptrdiff_t n, int act) { act_array(x, n, act); }

void dlk_gradient(const float *y, ptrdiff_t n, int act, float *delta) { grad_array(y, delta, n, act); }

void dlk_add_bias(float *out, const float *biases, int batch, int n, int size)
{
    for (int b = 0; b < batch; ++b)
        for (int f = 0; f < n; ++f) {
            float *row = out + ((long long)b * n + f) * size;
            float v = biases[f];
            for (int p = 0; p < size; ++p) row[p] += v;
        }
}

void dlk_backward_bias(float *bias_upd, const float *delta, int batch, int n, int size)
{
    for (int b = 0; b < batch; ++b)
        for (int f = 0; f < n; ++f) {
            const float *row = delta + ((long long)b * n + f) * size;
            float sum = 0;
            for (int p = 0; p < size; ++p) sum += row[p];
            bias_upd[f] += sum;
        }
}

void dlk_batchnorm_infer(float *x, const float *mean, const float *var, const float *scales, const float *biases,
                         int batch, int n, int size)
{
    for (int b = 0; b < batch; ++b)
        for (int f = 0; f < n; ++f) {
            float *row = x + ((long long)b * n + f) * size;
            float m = mean[f];
            double den = sqrt((double)var[f]) + .000001f;
            float s = scales[f], bias = biases[f];
            for (int p = 0; p < size; ++p) {
                float diff = row[p] - m;
                float t = (float)(diff / den);
                t *= s;
                row[p] = t + bias;
            }
        }
}

void dlk_sgd_update(float *biases, float *bias_upd, ptrdiff_t nb, float *weights, float *weight_upd, ptrdiff_t nw,
                    float step, float momentum, float decay)
{
    float *b = biases, *bu = bias_upd, *x = weights, *xu = weight_upd;
    for (ptrdiff_t i = 0; i < nb; ++i) b[i] += step * bu[i];
    for (ptrdiff_t i = 0; i < nb; ++i) bu[i] *= momentum;
    for (ptrdiff_t i = 0; i < nw; ++i) {
        float u = xu[i] + decay * x[i];
        x[i] += step * u;
        xu[i] = u * momentum;
    }
}

/* Darknet's shortcut_cpu: `add` (batch x c1 x h1 x w1) into `out` (batch x c2 x h2 x w2),
 *
 *   stride = max(1, w1/w2), sample = max(1, w2/w1) (the caller checks h1/h2 and h2/h1 agree)
 *   for b, k < min(c1,c2), j < min(h1,h2), i < min(w1,w2) (in that nesting):
 *     o = i*sample + w2*(j*sample + h2*(k + c2*b)),  a = i*stride + w1*(j*stride + h1*(k + c1*b))
 *     out[o] = s1*out[o] + s2*add[a]                 (two float products, then their float sum)
 *
 * Elements of `out` not hit keep their value. */
void dlk_shortcut(int batch, int w1, int h1, int c1, const float *add, int w2, int h2, int c2, float s1, float s2,
                  float *out)
{
    int stride = w1 / w2, sample = w2 / w1;
    if (stride < 1) stride = 1;
    if (sample < 1) sample = 1;
    int minw = w1 < w2 ? w1 : w2, minh = h1 < h2 ? h1 : h2, minc = c1 < c2 ? c1 : c2;
    for (int b = 0; b < batch; ++b)
        for (int k = 0; k < minc; ++k)
            for (int j = 0; j < minh; ++j)
                for (int i = 0; i < minw; ++i) {
                    long long o = i * sample + w2 * (j * sample + (long long)h2 * (k + (long long)c2 * b));
                    long long a = i * stride + w1 * (j * stride + (long long)h1 * (k + (long long)c1 * b));
                    out[o] = s1 * out[o] + s2 * add[a];
                }
}
