/* Training kernels: bias gradients, dropout with musl's rand(), softmax/SSE costs.
 *
 *   backward_bias:   bias_upd[f] += sum_p delta[b][f][p]     (per b, sequential float sum first)
 *   rand():          s = s*6364136223846793005 + 1 (mod 2^64), r = s >> 33   (musl / wasi-libc)
 *   dropout fwd:     r_i = f32(rand()) / 2^31; x_i = r_i < p ? 0 : x_i * scale   (r_i kept)
 *   dropout bwd:     d_i = r_i < p ? 0 : d_i * scale
 *   softmax x-ent:   delta_i = t_i - y_i; cost = sum_i (t_i ? f32(-log(y_i)) : 0)
 *   sse:             delta_i = t_i - x_i; cost = sum_i delta_i^2
 * Costs are summed sequentially in float, as Darknet's sum_array. */
#include "dlk_common.h"

static inline uint32_t musl_rand(uint64_t *s)
{
    *s = *s * 6364136223846793005ULL + 1;
    return (uint32_t)(*s >> 33);
}

static PyObject *dlk_backward_bias(PyObject *self, PyObject *args)
{
    Py_buffer upd, delta;
    int batch, n, size;
    if (!PyArg_ParseTuple(args, "w*y*iii", &upd, &delta, &batch, &n, &size)) return NULL;
    PyObject *result = NULL;
    if (batch < 0 || n < 0 || size < 0) { PyErr_SetString(PyExc_ValueError, "_dlk.backward_bias: negative size"); goto done; }
    if (!NEED_F(upd, n, "bias updates") || !NEED_F(delta, (long long)batch * n * size, "delta")) goto done;
    float *u = F32(upd);
    const float *d = F32(delta);
    for (int b = 0; b < batch; ++b)
        for (int f = 0; f < n; ++f) {
            const float *row = d + ((long long)b * n + f) * size;
            float sum = 0;
            for (int p = 0; p < size; ++p) sum += row[p];
            u[f] += sum;
        }
    result = Py_None; Py_INCREF(result);
done:
    PyBuffer_Release(&upd); PyBuffer_Release(&delta);
    return result;
}

static PyObject *dlk_dropout_forward(PyObject *self, PyObject *args)
{
    Py_buffer x, rnd;
    Py_ssize_t n;
    float prob, scale;
    unsigned long long state;
    if (!PyArg_ParseTuple(args, "w*nffw*K", &x, &n, &prob, &scale, &rnd, &state)) return NULL;
    PyObject *result = NULL;
    if (!NEED_F(x, n, "dropout buffer") || !NEED_F(rnd, n, "dropout rand")) goto done;
    uint64_t s = state;
    float *v = F32(x), *r = F32(rnd);
    for (Py_ssize_t i = 0; i < n; ++i) {
        float u = (float)musl_rand(&s) / 2147483648.0f;
        r[i] = u;
        v[i] = u < prob ? 0.f : v[i] * scale;
    }
    result = PyLong_FromUnsignedLongLong(s);
done:
    PyBuffer_Release(&x); PyBuffer_Release(&rnd);
    return result;
}

static PyObject *dlk_dropout_backward(PyObject *self, PyObject *args)
{
    Py_buffer delta, rnd;
    Py_ssize_t n;
    float prob, scale;
    if (!PyArg_ParseTuple(args, "w*nffy*", &delta, &n, &prob, &scale, &rnd)) return NULL;
    PyObject *result = NULL;
    if (!NEED_F(delta, n, "dropout delta") || !NEED_F(rnd, n, "dropout rand")) goto done;
    float *d = F32(delta);
    const float *r = F32(rnd);
    for (Py_ssize_t i = 0; i < n; ++i) d[i] = r[i] < prob ? 0.f : d[i] * scale;
    result = Py_None; Py_INCREF(result);
done:
    PyBuffer_Release(&delta); PyBuffer_Release(&rnd);
    return result;
}

static PyObject *dlk_softmax_cost(PyObject *self, PyObject *args)
{
    Py_buffer y, truth, delta;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "y*y*w*n", &y, &truth, &delta, &n)) return NULL;
    PyObject *result = NULL;
    if (!NEED_F(y, n, "softmax output") || !NEED_F(truth, n, "truth") || !NEED_F(delta, n, "softmax delta")) goto done;
    const float *p = F32(y), *t = F32(truth);
    float *d = F32(delta), cost = 0;
    for (Py_ssize_t i = 0; i < n; ++i) {
        float err = t[i] != 0 ? (float)-log((double)p[i]) : 0.f;
        d[i] = t[i] - p[i];
        cost += err;
    }
    result = PyFloat_FromDouble(cost);
done:
    PyBuffer_Release(&y); PyBuffer_Release(&truth); PyBuffer_Release(&delta);
    return result;
}

static PyObject *dlk_sse_cost(PyObject *self, PyObject *args)
{
    Py_buffer x, truth, delta;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "y*y*w*n", &x, &truth, &delta, &n)) return NULL;
    PyObject *result = NULL;
    if (!NEED_F(x, n, "cost input") || !NEED_F(truth, n, "truth") || !NEED_F(delta, n, "cost delta")) goto done;
    const float *p = F32(x), *t = F32(truth);
    float *d = F32(delta), cost = 0;
    for (Py_ssize_t i = 0; i < n; ++i) {
        d[i] = t[i] - p[i];
        cost += d[i] * d[i];
    }
    result = PyFloat_FromDouble(cost);
done:
    PyBuffer_Release(&x); PyBuffer_Release(&truth); PyBuffer_Release(&delta);
    return result;
}
