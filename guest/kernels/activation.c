/* Bias and element-wise activations (Darknet activations.c).
 *
 *   add_bias:  out[b][f][p] += bias[f]
 *   linear  f(x) = x                       g(y) = 1
 *   relu    f(x) = x*(x>0)                 g(y) = y>0
 *   leaky   f(x) = x>0 ? x : f32(.1*x)     g(y) = y>0 ? 1 : .1
 *   logistic f(x) = f32(1/(1+exp(-x)))     g(y) = (1-y)*y
 * `gradient` multiplies delta by g evaluated on the layer's (post-activation) output. */
#include "dlk_common.h"

enum { ACT_LINEAR = 0, ACT_RELU = 1, ACT_LEAKY = 2, ACT_LOGISTIC = 3 };

static PyObject *dlk_add_bias(PyObject *self, PyObject *args)
{
    Py_buffer out, bias;
    int batch, n, size;
    if (!PyArg_ParseTuple(args, "w*y*iii", &out, &bias, &batch, &n, &size)) return NULL;
    PyObject *result = NULL;
    if (batch < 0 || n < 0 || size < 0) { PyErr_SetString(PyExc_ValueError, "_dlk.add_bias: negative size"); goto done; }
    if (!NEED_F(out, (long long)batch * n * size, "add_bias output") || !NEED_F(bias, n, "add_bias biases")) goto done;
    float *o = F32(out);
    const float *bs = F32(bias);
    for (int b = 0; b < batch; ++b)
        for (int f = 0; f < n; ++f) {
            float *row = o + ((long long)b * n + f) * size;
            float v = bs[f];
            for (int p = 0; p < size; ++p) row[p] += v;
        }
    result = Py_None; Py_INCREF(result);
done:
    PyBuffer_Release(&out); PyBuffer_Release(&bias);
    return result;
}

static PyObject *dlk_activate(PyObject *self, PyObject *args)
{
    Py_buffer x;
    Py_ssize_t n;
    int act;
    if (!PyArg_ParseTuple(args, "w*ni", &x, &n, &act)) return NULL;
    PyObject *result = NULL;
    if (!NEED_F(x, n, "activate buffer")) goto done;
    float *v = F32(x);
    switch (act) {
    case ACT_LINEAR: break;
    case ACT_RELU: for (Py_ssize_t i = 0; i < n; ++i) v[i] = v[i] * (v[i] > 0); break;
    case ACT_LEAKY: for (Py_ssize_t i = 0; i < n; ++i) v[i] = v[i] > 0 ? v[i] : (float)(.1 * v[i]); break;
    case ACT_LOGISTIC: for (Py_ssize_t i = 0; i < n; ++i) v[i] = (float)(1. / (1. + exp(-(double)v[i]))); break;
    default: PyErr_Format(PyExc_ValueError, "_dlk.activate: unknown activation %d", act); goto done;
    }
    result = Py_None; Py_INCREF(result);
done:
    PyBuffer_Release(&x);
    return result;
}

static PyObject *dlk_gradient(PyObject *self, PyObject *args)
{
    Py_buffer y, delta;
    Py_ssize_t n;
    int act;
    if (!PyArg_ParseTuple(args, "y*niw*", &y, &n, &act, &delta)) return NULL;
    PyObject *result = NULL;
    if (!NEED_F(y, n, "gradient output") || !NEED_F(delta, n, "gradient delta")) goto done;
    const float *o = F32(y);
    float *d = F32(delta);
    switch (act) {
    case ACT_LINEAR: break;
    case ACT_RELU: for (Py_ssize_t i = 0; i < n; ++i) d[i] *= (float)(o[i] > 0); break;
    case ACT_LEAKY: for (Py_ssize_t i = 0; i < n; ++i) d[i] *= o[i] > 0 ? 1.f : .1f; break;
    case ACT_LOGISTIC: for (Py_ssize_t i = 0; i < n; ++i) d[i] *= (1 - o[i]) * o[i]; break;
    default: PyErr_Format(PyExc_ValueError, "_dlk.gradient: unknown activation %d", act); goto done;
    }
    result = Py_None; Py_INCREF(result);
done:
    PyBuffer_Release(&y); PyBuffer_Release(&delta);
    return result;
}

/* Batch-normalisation at inference (Darknet normalize_cpu, scale_bias, add_bias):
 *   x = f32(x - mean[f]) / (sqrt(var[f]) + .000001f), divided in double, stored as float
 *   x = x*scales[f] + biases[f] (two float steps) */
static PyObject *dlk_batchnorm_infer(PyObject *self, PyObject *args)
{
    Py_buffer x, mean, var, scales, biases;
    int batch, n, size;
    if (!PyArg_ParseTuple(args, "w*y*y*y*y*iii", &x, &mean, &var, &scales, &biases, &batch, &n, &size)) return NULL;
    PyObject *result = NULL;
    if (batch < 0 || n < 0 || size < 0) { PyErr_SetString(PyExc_ValueError, "_dlk.batchnorm_infer: negative size"); goto done; }
    if (!NEED_F(x, (long long)batch * n * size, "batchnorm buffer") || !NEED_F(mean, n, "batchnorm mean") ||
        !NEED_F(var, n, "batchnorm variance") || !NEED_F(scales, n, "batchnorm scales") ||
        !NEED_F(biases, n, "batchnorm biases")) goto done;
    float *v = F32(x);
    for (int b = 0; b < batch; ++b)
        for (int f = 0; f < n; ++f) {
            float *row = v + ((long long)b * n + f) * size;
            float m = F32(mean)[f];
            double den = sqrt((double)F32(var)[f]) + .000001f;
            float s = F32(scales)[f], bias = F32(biases)[f];
            for (int p = 0; p < size; ++p) {
                float diff = row[p] - m;
                float t = (float)(diff / den);
                t *= s;
                row[p] = t + bias;
            }
        }
    result = Py_None; Py_INCREF(result);
done:
    PyBuffer_Release(&x); PyBuffer_Release(&mean); PyBuffer_Release(&var);
    PyBuffer_Release(&scales); PyBuffer_Release(&biases);
    return result;
}
