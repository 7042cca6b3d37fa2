/* Level-1 vector operations (Darknet blas.c):
 *   axpy: y[i] += a*x[i];   scal: x[i] *= a;   fill: x[i] = a */
#include "dlk_common.h"

static PyObject *dlk_axpy(PyObject *self, PyObject *args)
{
    Py_buffer x, y;
    Py_ssize_t n;
    float a;
    if (!PyArg_ParseTuple(args, "nfy*w*", &n, &a, &x, &y)) return NULL;
    PyObject *result = NULL;
    if (!NEED_F(x, n, "axpy x") || !NEED_F(y, n, "axpy y")) goto done;
    const float *xs = F32(x);
    float *ys = F32(y);
    for (Py_ssize_t i = 0; i < n; ++i) ys[i] += a * xs[i];
    result = Py_None; Py_INCREF(result);
done:
    PyBuffer_Release(&x); PyBuffer_Release(&y);
    return result;
}

static PyObject *dlk_scal(PyObject *self, PyObject *args)
{
    Py_buffer x;
    Py_ssize_t n;
    float a;
    if (!PyArg_ParseTuple(args, "nfw*", &n, &a, &x)) return NULL;
    PyObject *result = NULL;
    if (!NEED_F(x, n, "scal x")) goto done;
    float *xs = F32(x);
    for (Py_ssize_t i = 0; i < n; ++i) xs[i] *= a;
    result = Py_None; Py_INCREF(result);
done:
    PyBuffer_Release(&x);
    return result;
}

static PyObject *dlk_fill(PyObject *self, PyObject *args)
{
    Py_buffer x;
    Py_ssize_t n;
    float a;
    if (!PyArg_ParseTuple(args, "nfw*", &n, &a, &x)) return NULL;
    PyObject *result = NULL;
    if (!NEED_F(x, n, "fill x")) goto done;
    float *xs = F32(x);
    for (Py_ssize_t i = 0; i < n; ++i) xs[i] = a;
    result = Py_None; Py_INCREF(result);
done:
    PyBuffer_Release(&x);
    return result;
}
