/* Softmax over each row of `n` values (Darknet softmax, groups = 1):
 *
 *   m = max_i x_i;  e_i = f32(exp(x_i/T - m/T));  s = sum_i e_i (sequential float);  y_i = e_i / s */
#include "dlk_common.h"

static PyObject *dlk_softmax(PyObject *self, PyObject *args)
{
    Py_buffer in, out;
    int batch, n;
    float temp;
    if (!PyArg_ParseTuple(args, "y*iifw*", &in, &batch, &n, &temp, &out)) return NULL;
    PyObject *result = NULL;
    if (batch < 0 || n <= 0) { PyErr_SetString(PyExc_ValueError, "_dlk.softmax: bad size"); goto done; }
    if (!NEED_F(in, (long long)batch * n, "softmax input") || !NEED_F(out, (long long)batch * n, "softmax output")) goto done;
    for (int b = 0; b < batch; ++b) {
        const float *x = F32(in) + (long long)b * n;
        float *y = F32(out) + (long long)b * n;
        float largest = -FLT_MAX, sum = 0;
        for (int i = 0; i < n; ++i) if (x[i] > largest) largest = x[i];
        for (int i = 0; i < n; ++i) {
            float e = (float)exp((double)(x[i] / temp - largest / temp));
            sum += e;
            y[i] = e;
        }
        for (int i = 0; i < n; ++i) y[i] /= sum;
    }
    result = Py_None; Py_INCREF(result);
done:
    PyBuffer_Release(&in); PyBuffer_Release(&out);
    return result;
}
