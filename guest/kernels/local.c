/* Darknet's locally connected layer (local_layer.c): a convolution whose filters differ at
 * every output location. col = im2col(input) (K = size*size*c rows, L = out_h*out_w columns);
 * the weights of location l are W[l] (n x K, row-major), W[l][f][k] at (l*n + f)*K + k.
 *
 * local_forward (per image, before the activation, which the caller applies):
 *   out[f][l] = bias[f*L + l] + sum_k W[l][f][k] * col[k][l]   (k in order, float, as gemm_nn)
 * local_backward (delta already multiplied by act'(out); per image):
 *   bias_upd[f*L + l] += delta[f][l]                            (for each image in turn)
 *   weight_upd[l][f][k] += delta[f][l] * col[k][l]              (gemm_nt with K = 1)
 *   if prev: ws[k][l] = sum_f W[l][f][k] * delta[f][l] (f in order, from 0, as gemm_tn with
 *            beta 0), then prev += col2im(ws)
 * `workspace` holds K*L floats (the im2col of one image). */
#include "kernels.h"

void dlk_local_forward(const float *in, int batch, int c, int h, int w, int size, int stride, int pad, int n,
                       const float *weights, const float *biases, float *out, float *workspace)
{
    int oh = dlk_conv_out_size(h, size, stride, pad), ow = dlk_conv_out_size(w, size, stride, pad);
    long long L = (long long)oh * ow, K = (long long)size * size * c, outputs = L * n;
    for (int b = 0; b < batch; ++b) {
        float *o = out + b * outputs;
        for (long long i = 0; i < outputs; ++i) o[i] = biases[i];
        dlk_im2col(in + (long long)b * c * h * w, c, h, w, size, stride, pad, workspace);
        for (long long l = 0; l < L; ++l) {
            const float *W = weights + l * K * n;
            for (int f = 0; f < n; ++f) {
                float acc = o[f * L + l];
                const float *row = W + f * K;
                for (long long k = 0; k < K; ++k) acc += row[k] * workspace[k * L + l];
                o[f * L + l] = acc;
            }
        }
    }
}

void dlk_local_backward(const float *in, int batch, int c, int h, int w, int size, int stride, int pad, int n,
                        const float *weights, const float *delta, float *bias_upd, float *weight_upd, float *prev,
                        float *workspace)
{
    int oh = dlk_conv_out_size(h, size, stride, pad), ow = dlk_conv_out_size(w, size, stride, pad);
    long long L = (long long)oh * ow, K = (long long)size * size * c, outputs = L * n;
    for (int b = 0; b < batch; ++b) {
        const float *d = delta + b * outputs;
        for (long long i = 0; i < outputs; ++i) bias_upd[i] += d[i];
    }
    for (int b = 0; b < batch; ++b) {
        const float *d = delta + b * outputs;
        dlk_im2col(in + (long long)b * c * h * w, c, h, w, size, stride, pad, workspace);
        for (long long l = 0; l < L; ++l) {
            float *U = weight_upd + l * K * n;
            for (int f = 0; f < n; ++f) {
                float a = d[f * L + l];
                for (long long k = 0; k < K; ++k) {
                    float sum = 0;
                    sum += a * workspace[k * L + l];
                    U[f * K + k] += sum;
                }
            }
        }
        if (prev) {
            for (long long l = 0; l < L; ++l) {
                const float *W = weights + l * K * n;
                for (long long k = 0; k < K; ++k) {
                    float acc = workspace[k * L + l] * 0.0f;
                    for (int f = 0; f < n; ++f) acc += W[f * K + k] * d[f * L + l];
                    workspace[k * L + l] = acc;
                }
            }
            dlk_col2im(workspace, c, h, w, size, stride, pad, prev + (long long)b * c * h * w);
        }
    }
}
