/* Connected layer backward and the SGD step, in Darknet's float order (spec §4.6, §4.2 update).
 *
 * connected_backward (delta: batch x outputs, input: batch x inputs, W: outputs x inputs):
 *   delta[i] *= act'(out[i])
 *   bias_upd[o] += delta[b][o]                       for b = 0.. in order   (backward_bias, size 1)
 *   W_upd[o][k] += delta[b][o] * in[b][k]            for o, then b in order (gemm TN onto W_upd)
 *   prev[b][k]  += delta[b][o] * W[o][k]             for b, then o in order (gemm NN onto prev)
 * Each element gets its terms one by one in Darknet's order; terms with delta == 0 are skipped
 * (adding a zero product never changes a float sum but for the sign of a zero). After dropout
 * (p = .8) and relu most deltas are zero.
 *
 * sgd_update (Darknet update_convolutional_layer / update_connected_layer, per element):
 *   bias += step * bias_upd;  bias_upd *= momentum
 *   W_upd += decay * W;  W += step * W_upd;  W_upd *= momentum
 * with step = f32(lr / B) and decay = f32(-decay * B) given by the caller: the same float
 * operations as the five axpy/scal passes. */
#include "dlk_common.h"

static void fc_gradient(const float *y, float *d, long long n, int act)
{
    switch (act) {
    case 1: for (long long i = 0; i < n; ++i) d[i] *= (float)(y[i] > 0); break;
    case 2: for (long long i = 0; i < n; ++i) d[i] *= y[i] > 0 ? 1.f : .1f; break;
    case 3: for (long long i = 0; i < n; ++i) d[i] *= (1 - y[i]) * y[i]; break;
    default: break;
    }
}

/* row[0..len) += sum_j coef[j] * src[j][0..len), the terms added one after the other. */
static void fc_rows_axpy(float *row, int len, const float *const *src, const float *coef, int cnt)
{
    int j0 = 0;
    for (; j0 + 8 <= len; j0 += 8) {
        v4f a0 = v4f_load(row + j0), a1 = v4f_load(row + j0 + 4);
        for (int t = 0; t < cnt; ++t) {
            v4f c = v4f_splat(coef[t]);
            a0 += c * v4f_load(src[t] + j0);
            a1 += c * v4f_load(src[t] + j0 + 4);
        }
        v4f_store(row + j0, a0);
        v4f_store(row + j0 + 4, a1);
    }
    for (; j0 < len; ++j0) {
        float a = row[j0];
        for (int t = 0; t < cnt; ++t) a += coef[t] * src[t][j0];
        row[j0] = a;
    }
}

static PyObject *dlk_connected_backward(PyObject *self, PyObject *args)
{
    Py_buffer in, out, delta, weights, bupd, wupd, prev = {0};
    PyObject *prev_obj;
    int batch, inputs, outputs, act;
    if (!PyArg_ParseTuple(args, "y*iiy*w*iiy*w*w*O", &in, &batch, &inputs, &out, &delta, &outputs, &act,
                          &weights, &bupd, &wupd, &prev_obj))
        return NULL;
    PyObject *result = NULL;
    int have_prev = prev_obj != Py_None;
    const float **src = NULL;
    float *coef = NULL;
    if (have_prev && PyObject_GetBuffer(prev_obj, &prev, PyBUF_WRITABLE) < 0) { have_prev = 0; goto done; }
    if (batch < 0 || inputs <= 0 || outputs <= 0 || act < 0 || act > 3) {
        PyErr_SetString(PyExc_ValueError, "_dlk.connected_backward: bad size or activation"); goto done;
    }
    long long nd = (long long)batch * outputs, nw = (long long)outputs * inputs;
    if (!NEED_F(in, (long long)batch * inputs, "connected input") || !NEED_F(out, nd, "connected output") ||
        !NEED_F(delta, nd, "connected delta") || !NEED_F(weights, nw, "connected weights") ||
        !NEED_F(bupd, outputs, "connected bias updates") || !NEED_F(wupd, nw, "connected weight updates") ||
        (have_prev && !NEED_F(prev, (long long)batch * inputs, "connected input delta"))) goto done;
    int most = batch > outputs ? batch : outputs;
    src = malloc(sizeof(float *) * (size_t)(most + 1));
    coef = malloc(sizeof(float) * (size_t)(most + 1));
    if (!src || !coef) { PyErr_NoMemory(); goto done; }
    float *D = F32(delta), *bu = F32(bupd), *wu = F32(wupd);
    const float *X = F32(in), *W = F32(weights);
    fc_gradient(F32(out), D, nd, act);
    for (int b = 0; b < batch; ++b)
        for (int o = 0; o < outputs; ++o) bu[o] += D[(long long)b * outputs + o];
    for (int o = 0; o < outputs; ++o) {
        int cnt = 0;
        for (int b = 0; b < batch; ++b) {                 /* branch-free: most deltas are zero */
            float d = D[(long long)b * outputs + o];
            src[cnt] = X + (long long)b * inputs;
            coef[cnt] = d;
            cnt += d != 0.f;
        }
        if (cnt) fc_rows_axpy(wu + (long long)o * inputs, inputs, src, coef, cnt);
    }
    if (have_prev) {
        float *P = F32(prev);
        for (int b = 0; b < batch; ++b) {
            int cnt = 0;
            for (int o = 0; o < outputs; ++o) {
                float d = D[(long long)b * outputs + o];
                src[cnt] = W + (long long)o * inputs;
                coef[cnt] = d;
                cnt += d != 0.f;
            }
            if (cnt) fc_rows_axpy(P + (long long)b * inputs, inputs, src, coef, cnt);
        }
    }
    result = Py_None; Py_INCREF(result);
done:
    free(src); free(coef);
    PyBuffer_Release(&in); PyBuffer_Release(&out); PyBuffer_Release(&delta); PyBuffer_Release(&weights);
    PyBuffer_Release(&bupd); PyBuffer_Release(&wupd);
    if (have_prev) PyBuffer_Release(&prev);
    return result;
}

static PyObject *dlk_sgd_update(PyObject *self, PyObject *args)
{
    Py_buffer bias, bupd, w, wupd;
    float step, momentum, decay;
    if (!PyArg_ParseTuple(args, "w*w*w*w*fff", &bias, &bupd, &w, &wupd, &step, &momentum, &decay)) return NULL;
    PyObject *result = NULL;
    Py_ssize_t nb = bias.len / 4, nw = w.len / 4;
    if (!NEED_F(bupd, nb, "bias updates") || !NEED_F(wupd, nw, "weight updates")) goto done;
    float *b = F32(bias), *bu = F32(bupd), *x = F32(w), *xu = F32(wupd);
    for (Py_ssize_t i = 0; i < nb; ++i) b[i] += step * bu[i];
    for (Py_ssize_t i = 0; i < nb; ++i) bu[i] *= momentum;
    for (Py_ssize_t i = 0; i < nw; ++i) {
        float u = xu[i] + decay * x[i];
        x[i] += step * u;
        xu[i] = u * momentum;
    }
    result = Py_None; Py_INCREF(result);
done:
    PyBuffer_Release(&bias); PyBuffer_Release(&bupd); PyBuffer_Release(&w); PyBuffer_Release(&wupd);
    return result;
}
