/* PNG scanline reconstruction (PNG spec section 9), bytes per pixel `bpp`, row length `rowbytes`:
 *
 *   each input row = 1 filter byte + rowbytes filtered bytes; a = left, b = up, c = up-left (0 outside)
 *   0 None: x   1 Sub: x + a   2 Up: x + b   3 Average: x + floor((a + b)/2)   4 Paeth: x + paeth(a, b, c)
 *   paeth: p = a + b - c; the one of a, b, c closest to p (ties in that order); all mod 256 */
#include "dlk_common.h"

/* Reconstruct `height` rows (each: filter byte + rowbytes bytes) into o; returns -1, or the
 * index of the first row whose filter type is past 4. */
static int png_unfilter_rows(const unsigned char *in, int height, int rowbytes, int bpp, unsigned char *o)
{
    for (int y = 0; y < height; ++y) {
        int filter = in[(long long)y * (rowbytes + 1)];
        const unsigned char *x = in + (long long)y * (rowbytes + 1) + 1;
        unsigned char *row = o + (long long)y * rowbytes;
        const unsigned char *up = y ? row - rowbytes : NULL;
        switch (filter) {
        case 0: memcpy(row, x, rowbytes); break;
        case 1:
            for (int i = 0; i < rowbytes; ++i) row[i] = x[i] + (i >= bpp ? row[i - bpp] : 0);
            break;
        case 2:
            for (int i = 0; i < rowbytes; ++i) row[i] = x[i] + (up ? up[i] : 0);
            break;
        case 3:
            for (int i = 0; i < rowbytes; ++i) {
                int a = i >= bpp ? row[i - bpp] : 0, b = up ? up[i] : 0;
                row[i] = x[i] + ((a + b) >> 1);
            }
            break;
        case 4:
            for (int i = 0; i < rowbytes; ++i) {
                int a = i >= bpp ? row[i - bpp] : 0, b = up ? up[i] : 0;
                int c = (i >= bpp && up) ? up[i - bpp] : 0;
                int p = a + b - c, pa = abs(p - a), pb = abs(p - b), pc = abs(p - c);
                row[i] = x[i] + ((pa <= pb && pa <= pc) ? a : (pb <= pc ? b : c));
            }
            break;
        default:
            return y;
        }
    }
    return -1;
}

static PyObject *dlk_png_unfilter(PyObject *self, PyObject *args)
{
    Py_buffer src, out;
    int height, rowbytes, bpp;
    if (!PyArg_ParseTuple(args, "y*iiiw*", &src, &height, &rowbytes, &bpp, &out)) return NULL;
    PyObject *result = NULL;
    if (height < 0 || rowbytes < 0 || bpp < 1 || bpp > 8) {
        PyErr_SetString(PyExc_ValueError, "bad scanline geometry"); goto done;
    }
    if (src.len < (Py_ssize_t)height * (rowbytes + 1)) {
        PyErr_Format(PyExc_ValueError, "image data too short: %zd bytes, %lld needed",
                     src.len, (long long)height * (rowbytes + 1));
        goto done;
    }
    if (!dlk_need(&out, (long long)height * rowbytes, 1, "png output")) goto done;
    int bad = png_unfilter_rows((const unsigned char *)src.buf, height, rowbytes, bpp, (unsigned char *)out.buf);
    if (bad >= 0) {
        PyErr_Format(PyExc_ValueError, "bad filter type %d in row %d",
                     ((const unsigned char *)src.buf)[(long long)bad * (rowbytes + 1)], bad);
        goto done;
    }
    result = Py_None; Py_INCREF(result);
done:
    PyBuffer_Release(&src); PyBuffer_Release(&out);
    return result;
}

/* Palette expansion: out[i*comps + k] = palette[idx[i]*comps + k]; an index past the
 * palette is an error (PNG spec 11.2.3). */
static PyObject *dlk_png_expand_palette(PyObject *self, PyObject *args)
{
    Py_buffer idx, pal, out;
    Py_ssize_t n;
    int comps;
    if (!PyArg_ParseTuple(args, "y*y*niw*", &idx, &pal, &n, &comps, &out)) return NULL;
    PyObject *result = NULL;
    if (comps < 1 || comps > 4) { PyErr_SetString(PyExc_ValueError, "bad palette entry size"); goto done; }
    if (!dlk_need(&idx, n, 1, "palette indexes") || !dlk_need(&out, n * comps, 1, "palette output")) goto done;
    Py_ssize_t entries = pal.len / comps;
    const unsigned char *ix = (const unsigned char *)idx.buf, *p = (const unsigned char *)pal.buf;
    unsigned char *o = (unsigned char *)out.buf;
    for (Py_ssize_t i = 0; i < n; ++i) {
        if (ix[i] >= entries) {
            PyErr_Format(PyExc_ValueError, "palette index %d past the %zd-entry palette", ix[i], entries);
            goto done;
        }
        memcpy(o + i * comps, p + ix[i] * comps, comps);
    }
    result = Py_None; Py_INCREF(result);
done:
    PyBuffer_Release(&idx); PyBuffer_Release(&pal); PyBuffer_Release(&out);
    return result;
}
