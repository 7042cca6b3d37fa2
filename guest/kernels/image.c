/* Pixel conversion (stb_image with req_comp = 3, then Darknet load_image_color):
 *
 *   src: height x width pixels of `comps` interleaved bytes (1 gray, 2 gray+alpha, 3 RGB, 4 RGBA)
 *   out[ch][y][x] = f32(byte/255.0) for ch in 0..2; gray is replicated, alpha dropped. */
#include "dlk_common.h"

static PyObject *dlk_pixels_to_chw(PyObject *self, PyObject *args)
{
    Py_buffer src, out;
    int width, height, comps;
    if (!PyArg_ParseTuple(args, "y*iiiw*", &src, &width, &height, &comps, &out)) return NULL;
    PyObject *result = NULL;
    if (width <= 0 || height <= 0 || comps < 1 || comps > 4) {
        PyErr_SetString(PyExc_ValueError, "_dlk.pixels_to_chw: bad geometry"); goto done;
    }
    long long plane = (long long)width * height;
    if (!dlk_need(&src, plane * comps, 1, "pixels") || !NEED_F(out, 3 * plane, "image")) goto done;
    float lut[256];
    for (int i = 0; i < 256; ++i) lut[i] = (float)(i / 255.0);
    const unsigned char *p = (const unsigned char *)src.buf;
    float *o = F32(out);
    if (comps <= 2) {
        for (long long i = 0; i < plane; ++i) {
            float v = lut[p[i * comps]];
            o[i] = v; o[plane + i] = v; o[2 * plane + i] = v;
        }
    } else {
        for (long long i = 0; i < plane; ++i) {
            o[i] = lut[p[i * comps]];
            o[plane + i] = lut[p[i * comps + 1]];
            o[2 * plane + i] = lut[p[i * comps + 2]];
        }
    }
    result = Py_None; Py_INCREF(result);
done:
    PyBuffer_Release(&src); PyBuffer_Release(&out);
    return result;
}
