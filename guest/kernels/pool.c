/* Max pooling (Darknet maxpool_layer.c), window `size`, `stride`, padding `pad`:
 *
 *   out_h = (h + pad - size)/stride + 1, window origin offset = -(pad/2)
 *   out[b][c][oy][ox] = max over ky, kx (ky outer) of in[b][c][oy*stride+ky-pad/2][ox*stride+kx-pad/2]
 *
 * positions outside the image count as -FLT_MAX; the first strict maximum wins and
 * its flat input index is kept for the backward pass: in_delta[idx] += out_delta.
 * A window with no value above -FLT_MAX (all -inf or NaN) keeps index -1 and output
 * -FLT_MAX, as in Darknet; the backward pass skips it (Darknet would write in_delta[-1]). */
#include "dlk_common.h"

static PyObject *dlk_maxpool_forward(PyObject *self, PyObject *args)
{
    Py_buffer in, out, idx;
    int batch, c, h, w, size, stride, pad;
    if (!PyArg_ParseTuple(args, "y*iiiiiiiw*w*", &in, &batch, &c, &h, &w, &size, &stride, &pad, &out, &idx))
        return NULL;
    PyObject *result = NULL;
    if (batch < 0 || c <= 0 || h <= 0 || w <= 0 || size <= 0 || stride <= 0 || pad < 0) {
        PyErr_SetString(PyExc_ValueError, "_dlk.maxpool_forward: bad geometry"); goto done;
    }
    int oh = (h + pad - size) / stride + 1, ow = (w + pad - size) / stride + 1;
    int off = -(pad / 2);
    if (oh <= 0 || ow <= 0) { PyErr_SetString(PyExc_ValueError, "_dlk.maxpool_forward: window larger than image"); goto done; }
    long long n_out = (long long)batch * c * oh * ow;
    if (!NEED_F(in, (long long)batch * c * h * w, "maxpool input") || !NEED_F(out, n_out, "maxpool output") ||
        !dlk_need(&idx, n_out, 4, "maxpool indexes")) goto done;
    const float *src = F32(in);
    float *dst = F32(out);
    int32_t *ix = (int32_t *)idx.buf;
    for (int bc = 0; bc < batch * c; ++bc) {
        const float *plane = src + (long long)bc * h * w;
        for (int oy = 0; oy < oh; ++oy)
            for (int ox = 0; ox < ow; ++ox) {
                float best = -FLT_MAX;
                int best_i = -1;
                for (int ky = 0; ky < size; ++ky)
                    for (int kx = 0; kx < size; ++kx) {
                        int y = off + oy * stride + ky, x = off + ox * stride + kx;
                        int valid = y >= 0 && y < h && x >= 0 && x < w;
                        float v = valid ? plane[y * w + x] : -FLT_MAX;
                        if (v > best) { best = v; best_i = bc * h * w + y * w + x; }
                    }
                long long o = ((long long)bc * oh + oy) * ow + ox;
                dst[o] = best;
                ix[o] = best_i;
            }
    }
    result = Py_None; Py_INCREF(result);
done:
    PyBuffer_Release(&in); PyBuffer_Release(&out); PyBuffer_Release(&idx);
    return result;
}

static PyObject *dlk_maxpool_backward(PyObject *self, PyObject *args)
{
    Py_buffer out_delta, idx, in_delta;
    Py_ssize_t n, n_in;
    if (!PyArg_ParseTuple(args, "y*y*nw*n", &out_delta, &idx, &n, &in_delta, &n_in)) return NULL;
    PyObject *result = NULL;
    if (!NEED_F(out_delta, n, "maxpool delta") || !dlk_need(&idx, n, 4, "maxpool indexes") ||
        !NEED_F(in_delta, n_in, "maxpool input delta")) goto done;
    const float *d = F32(out_delta);
    const int32_t *ix = (const int32_t *)idx.buf;
    float *id = F32(in_delta);
    /* all indexes are checked before anything is written */
    for (Py_ssize_t i = 0; i < n; ++i)
        if (ix[i] < -1 || ix[i] >= n_in) {
            PyErr_Format(PyExc_ValueError, "_dlk.maxpool_backward: index %d out of range", (int)ix[i]);
            goto done;
        }
    for (Py_ssize_t i = 0; i < n; ++i)
        if (ix[i] >= 0) id[ix[i]] += d[i];
    result = Py_None; Py_INCREF(result);
done:
    PyBuffer_Release(&out_delta); PyBuffer_Release(&idx); PyBuffer_Release(&in_delta);
    return result;
}
