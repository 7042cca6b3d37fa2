/* im2col / col2im for a convolution with square kernel `ksize`, `stride`, zero padding `pad`.
 *
 *   out_h = (h + 2*pad - ksize)/stride + 1, out_w likewise
 *   row k = (ch*ksize + ky)*ksize + kx, column p = oy*out_w + ox
 *   col[k][p] = im[ch][oy*stride + ky - pad][ox*stride + kx - pad], 0 outside the image
 *
 * col2im is its adjoint: im[...] += col[k][p], scattered in the same (k, p) order. */
#include "dlk_common.h"

static int conv_out(int n, int ksize, int stride, int pad) { return (n + 2 * pad - ksize) / stride + 1; }

static PyObject *dlk_im2col(PyObject *self, PyObject *args)
{
    Py_buffer im, col;
    int c, h, w, ksize, stride, pad;
    if (!PyArg_ParseTuple(args, "y*iiiiiiw*", &im, &c, &h, &w, &ksize, &stride, &pad, &col)) return NULL;
    PyObject *result = NULL;
    if (c <= 0 || h <= 0 || w <= 0 || ksize <= 0 || stride <= 0 || pad < 0) {
        PyErr_SetString(PyExc_ValueError, "_dlk.im2col: bad geometry"); goto done;
    }
    int oh = conv_out(h, ksize, stride, pad), ow = conv_out(w, ksize, stride, pad);
    if (oh <= 0 || ow <= 0) { PyErr_SetString(PyExc_ValueError, "_dlk.im2col: kernel larger than image"); goto done; }
    if (!NEED_F(im, (long long)c * h * w, "im2col image") ||
        !NEED_F(col, (long long)c * ksize * ksize * oh * ow, "im2col columns")) goto done;
    const float *src = F32(im);
    float *dst = F32(col);
    for (int k = 0; k < c * ksize * ksize; ++k) {
        int kx = k % ksize, ky = (k / ksize) % ksize, ch = k / ksize / ksize;
        const float *plane = src + ch * h * w;
        float *row = dst + (long long)k * oh * ow;
        for (int oy = 0; oy < oh; ++oy) {
            int y = oy * stride + ky - pad;
            float *out = row + oy * ow;
            if (y < 0 || y >= h) { memset(out, 0, sizeof(float) * ow); continue; }
            const float *line = plane + y * w;
            if (stride == 1) {
                int x0 = kx - pad;
                for (int ox = 0; ox < ow; ++ox) {
                    int x = x0 + ox;
                    out[ox] = (x >= 0 && x < w) ? line[x] : 0.f;
                }
            } else {
                for (int ox = 0; ox < ow; ++ox) {
                    int x = ox * stride + kx - pad;
                    out[ox] = (x >= 0 && x < w) ? line[x] : 0.f;
                }
            }
        }
    }
    result = Py_None; Py_INCREF(result);
done:
    PyBuffer_Release(&im); PyBuffer_Release(&col);
    return result;
}

static PyObject *dlk_col2im(PyObject *self, PyObject *args)
{
    Py_buffer col, im;
    int c, h, w, ksize, stride, pad;
    if (!PyArg_ParseTuple(args, "y*iiiiiiw*", &col, &c, &h, &w, &ksize, &stride, &pad, &im)) return NULL;
    PyObject *result = NULL;
    if (c <= 0 || h <= 0 || w <= 0 || ksize <= 0 || stride <= 0 || pad < 0) {
        PyErr_SetString(PyExc_ValueError, "_dlk.col2im: bad geometry"); goto done;
    }
    int oh = conv_out(h, ksize, stride, pad), ow = conv_out(w, ksize, stride, pad);
    if (oh <= 0 || ow <= 0) { PyErr_SetString(PyExc_ValueError, "_dlk.col2im: kernel larger than image"); goto done; }
    if (!NEED_F(im, (long long)c * h * w, "col2im image") ||
        !NEED_F(col, (long long)c * ksize * ksize * oh * ow, "col2im columns")) goto done;
    const float *src = F32(col);
    float *dst = F32(im);
    for (int k = 0; k < c * ksize * ksize; ++k) {
        int kx = k % ksize, ky = (k / ksize) % ksize, ch = k / ksize / ksize;
        float *plane = dst + ch * h * w;
        const float *row = src + (long long)k * oh * ow;
        for (int oy = 0; oy < oh; ++oy) {
            int y = oy * stride + ky - pad;
            if (y < 0 || y >= h) continue;
            for (int ox = 0; ox < ow; ++ox) {
                int x = ox * stride + kx - pad;
                if (x >= 0 && x < w) plane[y * w + x] += row[oy * ow + ox];
            }
        }
    }
    result = Py_None; Py_INCREF(result);
done:
    PyBuffer_Release(&col); PyBuffer_Release(&im);
    return result;
}
