/* Direct convolution, stride 1, for layers with few input channels (no im2col buffer):
 *
 *   out[b][f][y][x] = sum over k = (ch, ky, kx) in order of
 *                     W[f][k] * in[b][ch][y + ky - pad][x + kx - pad]   (0 outside the image)
 *
 * Each output element starts at 0 and adds its terms in the same k order as Darknet's
 * im2col + gemm_nn, so results are the same floats. The input is first copied into a
 * zero-padded plane per channel (workspace) so the inner loops have no bounds checks;
 * blocks of NF filters x 8 columns stay in registers. */
#include "dlk_common.h"

static long long conv2d_direct_workspace(int c, int h, int w, int size, int pad)
{
    int ow = w + 2 * pad - size + 1;
    int ow8 = (ow + 7) / 8 * 8;
    int PH = h + 2 * pad, PW = w + 2 * pad;
    if (PW < ow8 + size - 1) PW = ow8 + size - 1;
    return (long long)c * PH * PW + 8;
}

static inline void conv_block(int NF, const float *pad_in, int c, int PH, int PW, const float *W, int K,
                              int size, int y, int x0, float acc_out[4][8])
{
    v4f acc[4][2];
    for (int r = 0; r < NF; ++r) acc[r][0] = acc[r][1] = v4f_splat(0.f);
    for (int ch = 0; ch < c; ++ch)
        for (int ky = 0; ky < size; ++ky) {
            const float *row = pad_in + ((long long)ch * PH + y + ky) * PW + x0;
            const float *wk = W + (ch * size + ky) * size;
            for (int kx = 0; kx < size; ++kx) {
                v4f v0 = v4f_load(row + kx), v1 = v4f_load(row + kx + 4);
                for (int r = 0; r < NF; ++r) {
                    v4f wv = v4f_splat(wk[r * K + kx]);
                    acc[r][0] += wv * v0;
                    acc[r][1] += wv * v1;
                }
            }
        }
    for (int r = 0; r < NF; ++r) {
        v4f_store(acc_out[r], acc[r][0]);
        v4f_store(acc_out[r] + 4, acc[r][1]);
    }
}

static void conv_filters(int NF, const float *pad_in, int c, int PH, int PW, const float *W, int K, int size,
                         int oh, int ow, float *out)
{
    float acc[4][8];
    for (int y = 0; y < oh; ++y)
        for (int x0 = 0; x0 < ow; x0 += 8) {
            if (NF == 4) conv_block(4, pad_in, c, PH, PW, W, K, size, y, x0, acc);
            else if (NF == 2) conv_block(2, pad_in, c, PH, PW, W, K, size, y, x0, acc);
            else conv_block(1, pad_in, c, PH, PW, W, K, size, y, x0, acc);
            int nx = ow - x0 < 8 ? ow - x0 : 8;
            for (int r = 0; r < NF; ++r)
                memcpy(out + ((long long)r * oh + y) * ow + x0, acc[r], sizeof(float) * nx);
        }
}

static PyObject *dlk_conv2d_direct(PyObject *self, PyObject *args)
{
    Py_buffer in, weights, out, ws;
    int batch, c, h, w, n, size, pad;
    if (!PyArg_ParseTuple(args, "y*iiiiy*iiiw*w*", &in, &batch, &c, &h, &w, &weights, &n, &size, &pad,
                          &out, &ws))
        return NULL;
    PyObject *result = NULL;
    if (batch < 0 || c <= 0 || h <= 0 || w <= 0 || n <= 0 || size <= 0 || pad < 0) {
        PyErr_SetString(PyExc_ValueError, "_dlk.conv2d_direct: bad geometry"); goto done;
    }
    int oh = h + 2 * pad - size + 1, ow = w + 2 * pad - size + 1;
    if (oh <= 0 || ow <= 0) { PyErr_SetString(PyExc_ValueError, "_dlk.conv2d_direct: kernel larger than image"); goto done; }
    int K = c * size * size;
    int ow8 = (ow + 7) / 8 * 8;
    int PH = h + 2 * pad, PW = w + 2 * pad;
    if (PW < ow8 + size - 1) PW = ow8 + size - 1;
    long long in_size = (long long)c * h * w, out_size = (long long)n * oh * ow;
    if (!NEED_F(in, batch * in_size, "conv input") || !NEED_F(weights, (long long)n * K, "conv weights") ||
        !NEED_F(out, batch * out_size, "conv output") ||
        !NEED_F(ws, conv2d_direct_workspace(c, h, w, size, pad), "conv workspace")) goto done;
    float *pad_in = F32(ws);
    memset(pad_in, 0, sizeof(float) * (size_t)c * PH * PW);
    for (int b = 0; b < batch; ++b) {
        const float *src = F32(in) + b * in_size;
        for (int ch = 0; ch < c; ++ch)
            for (int y = 0; y < h; ++y)
                memcpy(pad_in + ((long long)ch * PH + y + pad) * PW + pad, src + ((long long)ch * h + y) * w,
                       sizeof(float) * w);
        float *dst = F32(out) + b * out_size;
        int f = 0;
        for (; f + 4 <= n; f += 4)
            conv_filters(4, pad_in, c, PH, PW, F32(weights) + (long long)f * K, K, size, oh, ow,
                         dst + (long long)f * oh * ow);
        for (; f + 2 <= n; f += 2)
            conv_filters(2, pad_in, c, PH, PW, F32(weights) + (long long)f * K, K, size, oh, ow,
                         dst + (long long)f * oh * ow);
        for (; f < n; ++f)
            conv_filters(1, pad_in, c, PH, PW, F32(weights) + (long long)f * K, K, size, oh, ow,
                         dst + (long long)f * oh * ow);
    }
    result = Py_None; Py_INCREF(result);
done:
    PyBuffer_Release(&in); PyBuffer_Release(&weights); PyBuffer_Release(&out); PyBuffer_Release(&ws);
    return result;
}

/* Floats of workspace conv2d_direct needs: c zero-padded planes. */
static PyObject *dlk_conv2d_direct_workspace(PyObject *self, PyObject *args)
{
    int c, h, w, size, pad;
    if (!PyArg_ParseTuple(args, "iiiii", &c, &h, &w, &size, &pad)) return NULL;
    return PyLong_FromLongLong(conv2d_direct_workspace(c, h, w, size, pad));
}
