/* Shared helpers of the _dlk extension: buffer arguments and size checks.
 * Every kernel receives float32 buffers through the buffer protocol and checks
 * that each one holds the elements it will touch before any loop runs. */
#ifndef DLK_COMMON_H
#define DLK_COMMON_H

#define Py_LIMITED_API 0x030B0000
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <stdlib.h>
#include <float.h>

typedef float v4f __attribute__((vector_size(16)));

static inline v4f v4f_load(const float *p) { v4f v; memcpy(&v, p, 16); return v; }
static inline void v4f_store(float *p, v4f v) { memcpy(p, &v, 16); }
static inline v4f v4f_splat(float x) { v4f v = {x, x, x, x}; return v; }

/* Fails with ValueError unless `buf` holds at least `count` items of `itemsize` bytes. */
static int dlk_need(const Py_buffer *buf, Py_ssize_t count, Py_ssize_t itemsize, const char *what)
{
    if (count < 0) {
        PyErr_Format(PyExc_ValueError, "_dlk: negative size for %s", what);
        return 0;
    }
    if (buf->len / itemsize < count) {
        PyErr_Format(PyExc_ValueError, "_dlk: %s holds %zd items, %zd needed",
                     what, buf->len / itemsize, count);
        return 0;
    }
    return 1;
}

#define NEED_F(buf, count, what) dlk_need(&(buf), (Py_ssize_t)(count), 4, what)
#define F32(view) ((float *)(view).buf)

#endif
