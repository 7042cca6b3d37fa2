/* im2col / col2im for a convolution with square kernel `ksize`, `stride`, zero padding `pad`.
 *
 *   out_h = (h + 2*pad - ksize)/stride + 1, out_w likewise
 *   row k = (ch*ksize + ky)*ksize + kx, column p = oy*out_w + ox
 *   col[k][p] = im[ch][oy*stride + ky - pad][ox*stride + kx - pad], 0 outside the image
 *
 * col2im is its adjoint: im[...] += col[k][p], scattered in the same (k, p) order. */
#include "dlk_common.h"

static int conv_out(int n, int ksize, int stride, int pad) { return (n + 2 * pad - ksize) / stride + 1; }

/* Columns ox of a kernel column kx whose image column x = ox*stride + kx - pad lies in
 * [0, w): the range [*lo, *hi), clamped to [0, ow]. */
static void conv_valid_range(int kx, int stride, int pad, int w, int ow, int *lo, int *hi)
{
    int first = pad - kx;                        /* ox*stride >= first */
    int end = w + pad - kx;                      /* ox*stride < end */
    int l = first <= 0 ? 0 : (first + stride - 1) / stride;
    int h = end <= 0 ? 0 : (end + stride - 1) / stride;
    if (h > ow) h = ow;
    if (l > h) l = h;
    *lo = l; *hi = h;
}

static int conv_check(const char *name, Py_buffer *im, Py_buffer *col, int c, int h, int w, int ksize,
                      int stride, int pad, int *oh, int *ow)
{
    if (c <= 0 || h <= 0 || w <= 0 || ksize <= 0 || stride <= 0 || pad < 0) {
        PyErr_Format(PyExc_ValueError, "_dlk.%s: bad geometry", name); return 0;
    }
    *oh = conv_out(h, ksize, stride, pad); *ow = conv_out(w, ksize, stride, pad);
    if (*oh <= 0 || *ow <= 0) { PyErr_Format(PyExc_ValueError, "_dlk.%s: kernel larger than image", name); return 0; }
    return NEED_F(*im, (long long)c * h * w, "image") &&
           NEED_F(*col, (long long)c * ksize * ksize * *oh * *ow, "columns");
}

static PyObject *dlk_im2col(PyObject *self, PyObject *args)
{
    Py_buffer im, col;
    int c, h, w, ksize, stride, pad, oh, ow;
    if (!PyArg_ParseTuple(args, "y*iiiiiiw*", &im, &c, &h, &w, &ksize, &stride, &pad, &col)) return NULL;
    PyObject *result = NULL;
    if (!conv_check("im2col", &im, &col, c, h, w, ksize, stride, pad, &oh, &ow)) goto done;
    const float *src = F32(im);
    float *dst = F32(col);
    for (int k = 0; k < c * ksize * ksize; ++k) {
        int kx = k % ksize, ky = (k / ksize) % ksize, ch = k / ksize / ksize;
        const float *plane = src + (ptrdiff_t)ch * h * w;
        float *row = dst + (ptrdiff_t)k * oh * ow;
        int lo, hi;
        conv_valid_range(kx, stride, pad, w, ow, &lo, &hi);
        for (int oy = 0; oy < oh; ++oy) {
            int y = oy * stride + ky - pad;
            float *out = row + (ptrdiff_t)oy * ow;
            if (y < 0 || y >= h) { memset(out, 0, sizeof(float) * ow); continue; }
            ptrdiff_t base = (ptrdiff_t)y * w + kx - pad;   /* pixel of column ox: base + ox*stride */
            memset(out, 0, sizeof(float) * lo);
            if (stride == 1) memcpy(out + lo, plane + base + lo, sizeof(float) * (hi - lo));
            else for (int ox = lo; ox < hi; ++ox) out[ox] = plane[base + (ptrdiff_t)ox * stride];
            memset(out + hi, 0, sizeof(float) * (ow - hi));
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
    int c, h, w, ksize, stride, pad, oh, ow;
    if (!PyArg_ParseTuple(args, "y*iiiiiiw*", &col, &c, &h, &w, &ksize, &stride, &pad, &im)) return NULL;
    PyObject *result = NULL;
    if (!conv_check("col2im", &im, &col, c, h, w, ksize, stride, pad, &oh, &ow)) goto done;
    const float *src = F32(col);
    float *dst = F32(im);
    for (int k = 0; k < c * ksize * ksize; ++k) {
        int kx = k % ksize, ky = (k / ksize) % ksize, ch = k / ksize / ksize;
        float *plane = dst + (ptrdiff_t)ch * h * w;
        const float *row = src + (ptrdiff_t)k * oh * ow;
        int lo, hi;
        conv_valid_range(kx, stride, pad, w, ow, &lo, &hi);
        for (int oy = 0; oy < oh; ++oy) {
            int y = oy * stride + ky - pad;
            if (y < 0 || y >= h) continue;
            ptrdiff_t base = (ptrdiff_t)y * w + kx - pad;
            const float *in = row + (ptrdiff_t)oy * ow;
            if (stride == 1) {
                float *line = plane + base + lo;
                for (int ox = 0; ox < hi - lo; ++ox) line[ox] += in[lo + ox];
            } else {
                for (int ox = lo; ox < hi; ++ox) plane[base + (ptrdiff_t)ox * stride] += in[ox];
            }
        }
    }
    result = Py_None; Py_INCREF(result);
done:
    PyBuffer_Release(&col); PyBuffer_Release(&im);
    return result;
}
