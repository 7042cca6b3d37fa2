/* Bulk draws from musl's rand() (spec §10.2), bit for bit those of dlserver.rng.Random:
 *
 *   rand():        s = s*6364136223846793005 + 1 (mod 2^64); r = s >> 33
 *   uniform(a, b): (swap if b < a) u = f32(f32(f32(r) / 2^31) * f32(b - a)) + a  (float32 steps)
 *   normal():      Box-Muller with a cached pair: r1 = r/2147483647.0 (1e-100 if smaller),
 *                  r1 = -2 ln r1, r2 = (r'/2147483647.0) * f64(f32(2 pi));
 *                  f32(sqrt(r1) cos r2), and on the next call f32(sqrt(r1) sin r2)
 *
 * rand_uniform_fill(out, n, a, b, scale, state) -> state:     out[i] = f32(scale * uniform(a, b))
 * rand_normal_fill(out, n, scale, state, spare) -> (state, spare): out[i] = f32(scale * normal())
 *     spare: None or the cached (r1, r2) pair, as Random.spare
 * rand_below(n, m, state) -> (state, [rand() % m for n draws])
 * The arithmetic is the Python version's (double, rounded to float where it calls f32), and
 * log/cos/sin/sqrt are the same libm functions Python's math module calls. */
#include "dlk_common.h"

static inline uint32_t rnd_next(uint64_t *s)
{
    *s = *s * 6364136223846793005ULL + 1;
    return (uint32_t)(*s >> 33);
}

static PyObject *dlk_rand_uniform_fill(PyObject *self, PyObject *args)
{
    Py_buffer out;
    Py_ssize_t n;
    double a, b, scale;
    unsigned long long state;
    if (!PyArg_ParseTuple(args, "w*ndddK", &out, &n, &a, &b, &scale, &state)) return NULL;
    PyObject *result = NULL;
    if (!NEED_F(out, n, "uniform output")) goto done;
    if (b < a) { double t = a; a = b; b = t; }
    uint64_t s = state;
    float *o = F32(out);
    double width = (float)(b - a);
    for (Py_ssize_t i = 0; i < n; ++i) {
        double r = (float)((double)(float)rnd_next(&s) / 2147483648.0);
        double u = (float)((double)(float)(r * width) + a);
        o[i] = (float)(scale * u);
    }
    result = PyLong_FromUnsignedLongLong(s);
done:
    PyBuffer_Release(&out);
    return result;
}

static PyObject *dlk_rand_normal_fill(PyObject *self, PyObject *args)
{
    Py_buffer out;
    Py_ssize_t n;
    double scale;
    unsigned long long state;
    PyObject *spare;
    if (!PyArg_ParseTuple(args, "w*ndKO", &out, &n, &scale, &state, &spare)) return NULL;
    PyObject *result = NULL;
    int have = 0;
    double r1 = 0, r2 = 0;
    if (!NEED_F(out, n, "normal output")) goto done;
    if (spare != Py_None) {
        if (!PyArg_ParseTuple(spare, "dd", &r1, &r2)) goto done;
        have = 1;
    }
    uint64_t s = state;
    float *o = F32(out);
    const double two_pi = 6.2831854820251465;          /* f64(f32(2 pi)) */
    for (Py_ssize_t i = 0; i < n; ++i) {
        double v;
        if (have) {
            v = (float)(sqrt(r1) * sin(r2));
            have = 0;
        } else {
            r1 = rnd_next(&s) / 2147483647.0;
            if (r1 < 1e-100) r1 = 1e-100;
            r1 = -2 * log(r1);
            r2 = (rnd_next(&s) / 2147483647.0) * two_pi;
            have = 1;
            v = (float)(sqrt(r1) * cos(r2));
        }
        o[i] = (float)(scale * v);
    }
    result = have ? Py_BuildValue("K(dd)", (unsigned long long)s, r1, r2)
                  : Py_BuildValue("KO", (unsigned long long)s, Py_None);
done:
    PyBuffer_Release(&out);
    return result;
}

static PyObject *dlk_rand_below(PyObject *self, PyObject *args)
{
    Py_ssize_t n;
    long long m;
    unsigned long long state;
    if (!PyArg_ParseTuple(args, "nLK", &n, &m, &state)) return NULL;
    if (n < 0 || m <= 0) { PyErr_SetString(PyExc_ValueError, "_dlk.rand_below: need n >= 0 and m > 0"); return NULL; }
    PyObject *list = PyList_New(n);
    if (!list) return NULL;
    uint64_t s = state;
    for (Py_ssize_t i = 0; i < n; ++i) {
        PyObject *v = PyLong_FromLongLong((long long)(rnd_next(&s) % (unsigned long long)m));
        if (!v) { Py_DECREF(list); return NULL; }
        PyList_SetItem(list, i, v);
    }
    PyObject *result = Py_BuildValue("KN", (unsigned long long)s, list);
    return result;
}
