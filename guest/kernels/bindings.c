/* _dlk: the Python face of the kernels (stable ABI, one source for wasm32 and native).
 *
 * The only file here that knows Python. Each function parses its arguments, acquires the
 * buffers (float32 arrays through the buffer protocol: numpy arrays, array('f'), bytearray),
 * checks that every buffer holds what the kernel will touch before any loop runs, calls the
 * kernel (kernels.h), releases the buffers and turns the kernel's result or error code into
 * a Python value or exception. Shapes and wiring stay in Python; the math is in the kernels'
 * files. _dlk.pyi describes every function and constant. */
#define Py_LIMITED_API 0x030B0000
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdlib.h>
#include "kernels.h"

/* ------------------------------------------------------------------ helpers */

/* Fails with ValueError unless `buf` holds at least `count` items of `itemsize` bytes (count in
 * 64 bits: a product of int sizes is never cut to a 32-bit Py_ssize_t on wasm32). */
static int need(const Py_buffer *buf, long long count, Py_ssize_t itemsize, const char *what)
{
    if (count < 0) {
        PyErr_Format(PyExc_ValueError, "_dlk: negative size for %s", what);
        return 0;
    }
    if (buf->len / itemsize < count) {
        PyErr_Format(PyExc_ValueError, "_dlk: %s holds %zd items, %lld needed", what, buf->len / itemsize, count);
        return 0;
    }
    return 1;
}

#define NEED_F(buf, count, what) need(&(buf), (long long)(count), 4, what)
#define F32(view) ((float *)(view).buf)
#define U8(view) ((uint8_t *)(view).buf)

/* need() for the JPEG kernels, which say so when a count passes Py_ssize_t (32 bits on wasm32). */
static int jpg_need(const Py_buffer *buf, long long count, Py_ssize_t itemsize, const char *what)
{
    if (count > (long long)PY_SSIZE_T_MAX) {
        PyErr_Format(PyExc_ValueError, "_dlk: %s: size too large", what);
        return 0;
    }
    return need(buf, count, itemsize, what);
}

/* ValueError(message); 0 */
static int fail(const char *message)
{
    PyErr_SetString(PyExc_ValueError, message);
    return 0;
}

/* 0 with the exception set for DLK_ERR_NOMEM and DLK_ERR_BAD_TABLE; 1 for any other status. */
static int kernel_ok(int status)
{
    if (status == DLK_ERR_NOMEM) { PyErr_NoMemory(); return 0; }
    if (status == DLK_ERR_BAD_TABLE) return fail("_dlk: bad Huffman table");
    return 1;
}

/* None when ok, else NULL (the exception is set). */
static PyObject *none_if(int ok)
{
    if (!ok) return NULL;
    Py_INCREF(Py_None);
    return Py_None;
}

static void release_all(Py_buffer *const *bufs, size_t n)
{
    for (size_t i = 0; i < n; ++i) PyBuffer_Release(bufs[i]);
}
#define RELEASE(...) release_all((Py_buffer *const[]){__VA_ARGS__}, \
                                 sizeof((Py_buffer *const[]){__VA_ARGS__}) / sizeof(Py_buffer *))

/* An activation code of activation.h? */
static int valid_act(int act) { return act >= 0 && act < ACT_COUNT; }

/* ------------------------------------------------------------------ gemm.c */

static PyObject *py_gemm(PyObject *self, PyObject *args)
{
    int ta, tb, M, N, K, lda, ldb, ldc;
    float alpha, beta;
    Py_buffer A, B, C;
    if (!PyArg_ParseTuple(args, "iiiiify*iy*ifw*i", &ta, &tb, &M, &N, &K, &alpha, &A, &lda, &B, &ldb, &beta, &C,
                          &ldc))
        return NULL;
    int ok = 1;
    ta = ta != 0; tb = tb != 0;
    if (M < 0 || N < 0 || K < 0) {
        ok = fail("_dlk.gemm: negative size");
    } else if (M > 0 && N > 0) {
        if ((ta ? lda < M : lda < K) || (tb ? ldb < K : ldb < N) || ldc < N) {
            ok = fail("_dlk.gemm: leading dimension too small");
        } else {
            /* elements touched: op(A) is M x K, stored K x M (ta) or M x K; op(B) likewise */
            long long a_need = K == 0 ? 0 : (ta ? (long long)(K - 1) * lda + M : (long long)(M - 1) * lda + K);
            long long b_need = K == 0 ? 0 : (tb ? (long long)(N - 1) * ldb + K : (long long)(K - 1) * ldb + N);
            ok = NEED_F(A, a_need, "gemm A") && NEED_F(B, b_need, "gemm B") &&
                 NEED_F(C, (long long)(M - 1) * ldc + N, "gemm C") &&
                 kernel_ok(dlk_gemm(ta, tb, M, N, K, alpha, F32(A), lda, F32(B), ldb, beta, F32(C), ldc));
        }
    }
    RELEASE(&A, &B, &C);
    return none_if(ok);
}

/* ------------------------------------------------------------------ conv.c */

static int conv_check(const char *name, Py_buffer *im, Py_buffer *col, int c, int h, int w, int ksize,
                      int stride, int pad)
{
    if (c <= 0 || h <= 0 || w <= 0 || ksize <= 0 || stride <= 0 || pad < 0) {
        PyErr_Format(PyExc_ValueError, "_dlk.%s: bad geometry", name); return 0;
    }
    int oh = dlk_conv_out_size(h, ksize, stride, pad), ow = dlk_conv_out_size(w, ksize, stride, pad);
    if (oh <= 0 || ow <= 0) { PyErr_Format(PyExc_ValueError, "_dlk.%s: kernel larger than image", name); return 0; }
    return NEED_F(*im, (long long)c * h * w, "image") &&
           NEED_F(*col, (long long)c * ksize * ksize * oh * ow, "columns");
}

/* im2col (image -> columns) and col2im (columns -> image, accumulating): (src, c, h, w, ksize, stride, pad, dst). */
static PyObject *conv_transfer(PyObject *args, const char *name, int to_columns)
{
    Py_buffer src, dst;
    int c, h, w, ksize, stride, pad;
    if (!PyArg_ParseTuple(args, "y*iiiiiiw*", &src, &c, &h, &w, &ksize, &stride, &pad, &dst)) return NULL;
    int ok = to_columns ? conv_check(name, &src, &dst, c, h, w, ksize, stride, pad)
                        : conv_check(name, &dst, &src, c, h, w, ksize, stride, pad);
    if (ok) (to_columns ? dlk_im2col : dlk_col2im)(F32(src), c, h, w, ksize, stride, pad, F32(dst));
    RELEASE(&src, &dst);
    return none_if(ok);
}

static PyObject *py_im2col(PyObject *self, PyObject *args) { return conv_transfer(args, "im2col", 1); }
static PyObject *py_col2im(PyObject *self, PyObject *args) { return conv_transfer(args, "col2im", 0); }

static PyObject *py_conv2d_direct(PyObject *self, PyObject *args)
{
    Py_buffer in, weights, out, ws;
    int batch, c, h, w, n, size, pad;
    if (!PyArg_ParseTuple(args, "y*iiiiy*iiiw*w*", &in, &batch, &c, &h, &w, &weights, &n, &size, &pad, &out, &ws))
        return NULL;
    int ok;
    int oh = h + 2 * pad - size + 1, ow = w + 2 * pad - size + 1;
    if (batch < 0 || c <= 0 || h <= 0 || w <= 0 || n <= 0 || size <= 0 || pad < 0) {
        ok = fail("_dlk.conv2d_direct: bad geometry");
    } else if (oh <= 0 || ow <= 0) {
        ok = fail("_dlk.conv2d_direct: kernel larger than image");
    } else {
        long long in_size = (long long)c * h * w, out_size = (long long)n * oh * ow;
        ok = NEED_F(in, batch * in_size, "conv input") &&
             NEED_F(weights, (long long)n * c * size * size, "conv weights") &&
             NEED_F(out, batch * out_size, "conv output") &&
             NEED_F(ws, dlk_conv2d_direct_workspace(c, h, w, size, pad), "conv workspace");
        if (ok) dlk_conv2d_direct(F32(in), batch, c, h, w, F32(weights), n, size, pad, F32(out), F32(ws));
    }
    RELEASE(&in, &weights, &out, &ws);
    return none_if(ok);
}

static PyObject *py_conv2d_direct_workspace(PyObject *self, PyObject *args)
{
    int c, h, w, size, pad;
    if (!PyArg_ParseTuple(args, "iiiii", &c, &h, &w, &size, &pad)) return NULL;
    return PyLong_FromLongLong(dlk_conv2d_direct_workspace(c, h, w, size, pad));
}

/* The training convolution's geometry into g, or 0 with ValueError naming `who`. */
static int conv_geometry(dlk_conv_geom *g, int c, int h, int w, int n, int size, int pad, const char *who)
{
    switch (dlk_conv_geometry(g, c, h, w, n, size, pad)) {
    case 0: return 1;
    case DLK_CONV_BAD_GEOMETRY:
        PyErr_Format(PyExc_ValueError, "_dlk.%s: bad geometry (size 1..%d, 0 <= pad < size)", who, DLK_CONV_MAX_SIZE);
        return 0;
    case DLK_CONV_KERNEL_TOO_LARGE:
        PyErr_Format(PyExc_ValueError, "_dlk.%s: kernel larger than image", who);
        return 0;
    default:
        PyErr_Format(PyExc_ValueError, "_dlk.%s: layer too large", who);
        return 0;
    }
}

static PyObject *py_conv_forward(PyObject *self, PyObject *args)
{
    Py_buffer in, weights, biases, out;
    int batch, c, h, w, n, size, pad, act;
    if (!PyArg_ParseTuple(args, "y*iiiiy*iiiy*iw*", &in, &batch, &c, &h, &w, &weights, &n, &size, &pad, &biases, &act,
                          &out))
        return NULL;
    dlk_conv_geom g;
    int ok = (batch >= 0 && valid_act(act)) || fail("_dlk.conv_forward: bad batch or activation");
    ok = ok && conv_geometry(&g, c, h, w, n, size, pad, "conv_forward");
    if (ok) {
        long long in_size = (long long)c * h * w, out_size = (long long)n * g.oh * g.ow;
        ok = NEED_F(in, batch * in_size, "conv input") && NEED_F(weights, (long long)n * g.K, "conv weights") &&
             NEED_F(biases, n, "conv biases") && NEED_F(out, batch * out_size, "conv output") &&
             kernel_ok(dlk_conv_forward(&g, batch, F32(in), F32(weights), F32(biases), act, F32(out)));
    }
    RELEASE(&in, &weights, &biases, &out);
    return none_if(ok);
}

static PyObject *py_conv_backward(PyObject *self, PyObject *args)
{
    Py_buffer in, out, delta, weights, bupd, wupd, prev = {0};
    PyObject *prev_obj;
    int batch, c, h, w, n, size, pad, act;
    if (!PyArg_ParseTuple(args, "y*iiiiy*w*iiiiy*w*w*O", &in, &batch, &c, &h, &w, &out, &delta, &n, &size, &pad,
                          &act, &weights, &bupd, &wupd, &prev_obj))
        return NULL;
    int have_prev = prev_obj != Py_None;
    int ok = !have_prev || PyObject_GetBuffer(prev_obj, &prev, PyBUF_WRITABLE) == 0;
    dlk_conv_geom g;
    ok = ok && ((batch >= 0 && valid_act(act)) || fail("_dlk.conv_backward: bad batch or activation"));
    ok = ok && conv_geometry(&g, c, h, w, n, size, pad, "conv_backward");
    if (ok) {
        long long in_size = (long long)c * h * w, out_size = n * ((long long)g.oh * g.ow);
        ok = NEED_F(in, batch * in_size, "conv input") && NEED_F(out, batch * out_size, "conv output") &&
             NEED_F(delta, batch * out_size, "conv delta") && NEED_F(weights, (long long)n * g.K, "conv weights") &&
             NEED_F(bupd, n, "conv bias updates") && NEED_F(wupd, (long long)n * g.K, "conv weight updates") &&
             (!have_prev || NEED_F(prev, batch * in_size, "conv input delta")) &&
             kernel_ok(dlk_conv_backward(&g, batch, F32(in), F32(out), F32(delta), act, F32(weights), F32(bupd),
                                         F32(wupd), have_prev ? F32(prev) : NULL));
    }
    RELEASE(&in, &out, &delta, &weights, &bupd, &wupd, &prev);
    return none_if(ok);
}

/* ------------------------------------------------------------------ connected.c */

static PyObject *py_connected_backward(PyObject *self, PyObject *args)
{
    Py_buffer in, out, delta, weights, bupd = {0}, wupd, prev = {0};
    PyObject *bupd_obj, *prev_obj;
    int batch, inputs, outputs, act;
    if (!PyArg_ParseTuple(args, "y*iiy*w*iiy*Ow*O", &in, &batch, &inputs, &out, &delta, &outputs, &act, &weights,
                          &bupd_obj, &wupd, &prev_obj))
        return NULL;
    int have_prev = prev_obj != Py_None, have_bupd = bupd_obj != Py_None; /* None: batch-normalised */
    int ok = !have_prev || PyObject_GetBuffer(prev_obj, &prev, PyBUF_WRITABLE) == 0;
    ok = ok && (!have_bupd || PyObject_GetBuffer(bupd_obj, &bupd, PyBUF_WRITABLE) == 0);
    ok = ok && ((batch >= 0 && inputs > 0 && outputs > 0 && valid_act(act)) ||
                fail("_dlk.connected_backward: bad size or activation"));
    if (ok) {
        long long nd = (long long)batch * outputs, nw = (long long)outputs * inputs;
        ok = NEED_F(in, (long long)batch * inputs, "connected input") && NEED_F(out, nd, "connected output") &&
             NEED_F(delta, nd, "connected delta") && NEED_F(weights, nw, "connected weights") &&
             (!have_bupd || NEED_F(bupd, outputs, "connected bias updates")) &&
             NEED_F(wupd, nw, "connected weight updates") &&
             (!have_prev || NEED_F(prev, (long long)batch * inputs, "connected input delta")) &&
             kernel_ok(dlk_connected_backward(F32(in), batch, inputs, F32(out), F32(delta), outputs, act, F32(weights),
                                              have_bupd ? F32(bupd) : NULL, F32(wupd), have_prev ? F32(prev) : NULL));
    }
    RELEASE(&in, &out, &delta, &weights, &bupd, &wupd, &prev);
    return none_if(ok);
}

/* ------------------------------------------------------------------ pool.c */

static PyObject *py_maxpool_forward(PyObject *self, PyObject *args)
{
    Py_buffer in, out, idx;
    int batch, c, h, w, size, stride, pad;
    if (!PyArg_ParseTuple(args, "y*iiiiiiiw*w*", &in, &batch, &c, &h, &w, &size, &stride, &pad, &out, &idx))
        return NULL;
    int ok;
    if (batch < 0 || c <= 0 || h <= 0 || w <= 0 || size <= 0 || stride <= 0 || pad < 0) {
        ok = fail("_dlk.maxpool_forward: bad geometry");
    } else {
        int oh = dlk_pool_out_size(h, size, stride, pad), ow = dlk_pool_out_size(w, size, stride, pad);
        long long n_out = (long long)batch * c * oh * ow;
        ok = (oh > 0 && ow > 0) || fail("_dlk.maxpool_forward: window larger than image");
        ok = ok && NEED_F(in, (long long)batch * c * h * w, "maxpool input") && NEED_F(out, n_out, "maxpool output") &&
             need(&idx, n_out, 4, "maxpool indexes");
        if (ok) dlk_maxpool_forward(F32(in), batch, c, h, w, size, stride, pad, F32(out), (int32_t *)idx.buf);
    }
    RELEASE(&in, &out, &idx);
    return none_if(ok);
}

static PyObject *py_maxpool_backward(PyObject *self, PyObject *args)
{
    Py_buffer out_delta, idx, in_delta;
    Py_ssize_t n, n_in;
    if (!PyArg_ParseTuple(args, "y*y*nw*n", &out_delta, &idx, &n, &in_delta, &n_in)) return NULL;
    int ok = NEED_F(out_delta, n, "maxpool delta") && need(&idx, n, 4, "maxpool indexes") &&
             NEED_F(in_delta, n_in, "maxpool input delta");
    if (ok) {
        const int32_t *ix = (const int32_t *)idx.buf;
        ptrdiff_t bad = dlk_maxpool_backward(F32(out_delta), ix, n, F32(in_delta), n_in);
        if (bad >= 0) {
            PyErr_Format(PyExc_ValueError, "_dlk.maxpool_backward: index %d out of range", (int)ix[bad]);
            ok = 0;
        }
    }
    RELEASE(&out_delta, &idx, &in_delta);
    return none_if(ok);
}

static PyObject *py_avgpool_forward(PyObject *self, PyObject *args)
{
    Py_buffer in, out;
    int planes, n;
    if (!PyArg_ParseTuple(args, "y*iiw*", &in, &planes, &n, &out)) return NULL;
    int ok = (planes >= 0 && n > 0) || fail("_dlk.avgpool_forward: bad geometry");
    ok = ok && NEED_F(in, (long long)planes * n, "avgpool input") && NEED_F(out, planes, "avgpool output");
    if (ok) dlk_avgpool_forward(F32(in), planes, n, F32(out));
    RELEASE(&in, &out);
    return none_if(ok);
}

static PyObject *py_avgpool_backward(PyObject *self, PyObject *args)
{
    Py_buffer out_delta, in_delta;
    int planes, n;
    if (!PyArg_ParseTuple(args, "y*iiw*", &out_delta, &planes, &n, &in_delta)) return NULL;
    int ok = (planes >= 0 && n > 0) || fail("_dlk.avgpool_backward: bad geometry");
    ok = ok && NEED_F(out_delta, planes, "avgpool delta") &&
         NEED_F(in_delta, (long long)planes * n, "avgpool input delta");
    if (ok) dlk_avgpool_backward(F32(out_delta), planes, n, F32(in_delta));
    RELEASE(&out_delta, &in_delta);
    return none_if(ok);
}

static PyObject *py_maxpool_forward_2x2(PyObject *self, PyObject *args)
{
    Py_buffer in, out, idx = {0};
    PyObject *idx_obj;
    int planes, h, w;
    if (!PyArg_ParseTuple(args, "y*iiiw*O", &in, &planes, &h, &w, &out, &idx_obj)) return NULL;
    int have_idx = idx_obj != Py_None;              /* None: inference, no indexes kept */
    int ok = !have_idx || PyObject_GetBuffer(idx_obj, &idx, PyBUF_WRITABLE) == 0;
    long long n_out = (long long)planes * (h / 2) * (w / 2);
    ok = ok && ((planes >= 0 && h > 0 && w > 0 && !(h % 2) && !(w % 2) && (long long)planes * h * w <= 0x7FFFFFFF) ||
                fail("_dlk.maxpool_forward_2x2: bad geometry (h and w must be even)"));
    ok = ok && NEED_F(in, (long long)planes * h * w, "maxpool input") && NEED_F(out, n_out, "maxpool output") &&
         (!have_idx || need(&idx, n_out, 4, "maxpool indexes"));
    if (ok) dlk_maxpool_forward_2x2(F32(in), planes, h, w, F32(out), have_idx ? (int32_t *)idx.buf : NULL);
    RELEASE(&in, &out, &idx);
    return none_if(ok);
}

/* ------------------------------------------------------------------ blas.c */

static PyObject *py_axpy(PyObject *self, PyObject *args)
{
    Py_buffer x, y;
    Py_ssize_t n;
    float a;
    if (!PyArg_ParseTuple(args, "nfy*w*", &n, &a, &x, &y)) return NULL;
    int ok = NEED_F(x, n, "axpy x") && NEED_F(y, n, "axpy y");
    if (ok) dlk_axpy(n, a, F32(x), F32(y));
    RELEASE(&x, &y);
    return none_if(ok);
}

/* scal and fill: (n, a, x), x written in place */
static PyObject *scalar_op(PyObject *args, void (*op)(ptrdiff_t, float, float *), const char *what)
{
    Py_buffer x;
    Py_ssize_t n;
    float a;
    if (!PyArg_ParseTuple(args, "nfw*", &n, &a, &x)) return NULL;
    int ok = NEED_F(x, n, what);
    if (ok) op(n, a, F32(x));
    RELEASE(&x);
    return none_if(ok);
}

static PyObject *py_scal(PyObject *self, PyObject *args) { return scalar_op(args, dlk_scal, "scal x"); }
static PyObject *py_fill(PyObject *self, PyObject *args) { return scalar_op(args, dlk_fill, "fill x"); }

static PyObject *py_activate(PyObject *self, PyObject *args)
{
    Py_buffer x;
    Py_ssize_t n;
    int act;
    if (!PyArg_ParseTuple(args, "w*ni", &x, &n, &act)) return NULL;
    int ok = NEED_F(x, n, "activate buffer");
    if (ok && !valid_act(act)) {
        PyErr_Format(PyExc_ValueError, "_dlk.activate: unknown activation %d", act);
        ok = 0;
    }
    if (ok) dlk_activate(F32(x), n, act);
    RELEASE(&x);
    return none_if(ok);
}

static PyObject *py_gradient(PyObject *self, PyObject *args)
{
    Py_buffer y, delta;
    Py_ssize_t n;
    int act;
    if (!PyArg_ParseTuple(args, "y*niw*", &y, &n, &act, &delta)) return NULL;
    int ok = NEED_F(y, n, "gradient output") && NEED_F(delta, n, "gradient delta");
    if (ok && !valid_act(act)) {
        PyErr_Format(PyExc_ValueError, "_dlk.gradient: unknown activation %d", act);
        ok = 0;
    }
    if (ok) dlk_gradient(F32(y), n, act, F32(delta));
    RELEASE(&y, &delta);
    return none_if(ok);
}

static PyObject *py_add_bias(PyObject *self, PyObject *args)
{
    Py_buffer out, bias;
    int batch, n, size;
    if (!PyArg_ParseTuple(args, "w*y*iii", &out, &bias, &batch, &n, &size)) return NULL;
    int ok = (batch >= 0 && n >= 0 && size >= 0) || fail("_dlk.add_bias: negative size");
    ok = ok && NEED_F(out, (long long)batch * n * size, "add_bias output") && NEED_F(bias, n, "add_bias biases");
    if (ok) dlk_add_bias(F32(out), F32(bias), batch, n, size);
    RELEASE(&out, &bias);
    return none_if(ok);
}

static PyObject *py_backward_bias(PyObject *self, PyObject *args)
{
    Py_buffer upd, delta;
    int batch, n, size;
    if (!PyArg_ParseTuple(args, "w*y*iii", &upd, &delta, &batch, &n, &size)) return NULL;
    int ok = (batch >= 0 && n >= 0 && size >= 0) || fail("_dlk.backward_bias: negative size");
    ok = ok && NEED_F(upd, n, "bias updates") && NEED_F(delta, (long long)batch * n * size, "delta");
    if (ok) dlk_backward_bias(F32(upd), F32(delta), batch, n, size);
    RELEASE(&upd, &delta);
    return none_if(ok);
}

static PyObject *py_batchnorm_infer(PyObject *self, PyObject *args)
{
    Py_buffer x, mean, var, scales, biases;
    int batch, n, size;
    if (!PyArg_ParseTuple(args, "w*y*y*y*y*iii", &x, &mean, &var, &scales, &biases, &batch, &n, &size)) return NULL;
    int ok = (batch >= 0 && n >= 0 && size >= 0) || fail("_dlk.batchnorm_infer: negative size");
    ok = ok && NEED_F(x, (long long)batch * n * size, "batchnorm buffer") && NEED_F(mean, n, "batchnorm mean") &&
         NEED_F(var, n, "batchnorm variance") && NEED_F(scales, n, "batchnorm scales") &&
         NEED_F(biases, n, "batchnorm biases");
    if (ok) dlk_batchnorm_infer(F32(x), F32(mean), F32(var), F32(scales), F32(biases), batch, n, size);
    RELEASE(&x, &mean, &var, &scales, &biases);
    return none_if(ok);
}

static PyObject *py_sgd_update(PyObject *self, PyObject *args)
{
    Py_buffer bias, bupd, w, wupd;
    float step, momentum, decay;
    if (!PyArg_ParseTuple(args, "w*w*w*w*fff", &bias, &bupd, &w, &wupd, &step, &momentum, &decay)) return NULL;
    Py_ssize_t nb = bias.len / 4, nw = w.len / 4;
    int ok = NEED_F(bupd, nb, "bias updates") && NEED_F(wupd, nw, "weight updates");
    if (ok) dlk_sgd_update(F32(bias), F32(bupd), nb, F32(w), F32(wupd), nw, step, momentum, decay);
    RELEASE(&bias, &bupd, &w, &wupd);
    return none_if(ok);
}

/* ------------------------------------------------------------------ loss.c */

static PyObject *py_softmax(PyObject *self, PyObject *args)
{
    Py_buffer in, out;
    int batch, n;
    float temp;
    if (!PyArg_ParseTuple(args, "y*iifw*", &in, &batch, &n, &temp, &out)) return NULL;
    int ok = (batch >= 0 && n > 0) || fail("_dlk.softmax: bad size");
    ok = ok && NEED_F(in, (long long)batch * n, "softmax input") && NEED_F(out, (long long)batch * n, "softmax output");
    if (ok) dlk_softmax(F32(in), batch, n, temp, F32(out));
    RELEASE(&in, &out);
    return none_if(ok);
}

/* softmax_cost and sse_cost: (x, truth, delta, n) -> the cost; what_x, what_delta name the buffers */
static PyObject *cost_op(PyObject *args, float (*cost)(const float *, const float *, float *, ptrdiff_t),
                         const char *what_x, const char *what_delta)
{
    Py_buffer x, truth, delta;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "y*y*w*n", &x, &truth, &delta, &n)) return NULL;
    PyObject *result = NULL;
    if (NEED_F(x, n, what_x) && NEED_F(truth, n, "truth") && NEED_F(delta, n, what_delta))
        result = PyFloat_FromDouble(cost(F32(x), F32(truth), F32(delta), n));
    RELEASE(&x, &truth, &delta);
    return result;
}

static PyObject *py_softmax_cost(PyObject *self, PyObject *args)
{
    return cost_op(args, dlk_softmax_cost, "softmax output", "softmax delta");
}

static PyObject *py_sse_cost(PyObject *self, PyObject *args)
{
    return cost_op(args, dlk_sse_cost, "cost input", "cost delta");
}

static PyObject *py_cost_forward(PyObject *self, PyObject *args)
{
    Py_buffer x, truth, delta, err;
    int type;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "iw*y*w*w*n", &type, &x, &truth, &delta, &err, &n)) return NULL;
    PyObject *result = NULL;
    int ok = (type >= COST_L2 && type <= COST_L1) || fail("_dlk.cost_forward: unknown cost type");
    if (ok && NEED_F(x, n, "cost input") && NEED_F(truth, n, "truth") && NEED_F(delta, n, "cost delta") &&
        NEED_F(err, n, "cost errors"))
        result = PyFloat_FromDouble(dlk_cost_forward(type, F32(x), F32(truth), F32(delta), F32(err), n));
    RELEASE(&x, &truth, &delta, &err);
    return result;
}

static PyObject *py_logistic_x_ent(PyObject *self, PyObject *args)
{
    Py_buffer p, truth, delta, err;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "y*y*w*w*n", &p, &truth, &delta, &err, &n)) return NULL;
    PyObject *result = NULL;
    if (NEED_F(p, n, "logistic output") && NEED_F(truth, n, "truth") && NEED_F(delta, n, "logistic delta") &&
        NEED_F(err, n, "logistic errors"))
        result = PyFloat_FromDouble(dlk_logistic_x_ent(F32(p), F32(truth), F32(delta), F32(err), n));
    RELEASE(&p, &truth, &delta, &err);
    return result;
}

/* ------------------------------------------------------------------ normalize.c */

static PyObject *py_l2norm_forward(PyObject *self, PyObject *args)
{
    Py_buffer in, out;
    int batch, c, spatial;
    if (!PyArg_ParseTuple(args, "y*iiiw*", &in, &batch, &c, &spatial, &out)) return NULL;
    int ok = (batch >= 0 && c > 0 && spatial > 0) || fail("_dlk.l2norm_forward: bad size");
    long long n = (long long)batch * c * spatial;
    ok = ok && NEED_F(in, n, "l2norm input") && NEED_F(out, n, "l2norm output");
    if (ok) dlk_l2norm_forward(F32(in), batch, c, spatial, F32(out));
    RELEASE(&in, &out);
    return none_if(ok);
}

static PyObject *py_lrn_forward(PyObject *self, PyObject *args)
{
    Py_buffer in, squared, norms, out;
    int batch, c, spatial, size;
    float alpha, beta, kappa;
    if (!PyArg_ParseTuple(args, "y*iiiifffw*w*w*", &in, &batch, &c, &spatial, &size, &alpha, &beta, &kappa, &squared,
                          &norms, &out))
        return NULL;
    /* the first window reads channels 0 .. size/2 - 1 */
    int ok = (batch >= 0 && c > 0 && spatial > 0 && size >= 1 && size / 2 <= c) || fail("_dlk.lrn_forward: bad size");
    long long n = (long long)batch * c * spatial;
    ok = ok && NEED_F(in, n, "lrn input") && NEED_F(squared, n, "lrn squares") && NEED_F(norms, n, "lrn norms") &&
         NEED_F(out, n, "lrn output");
    if (ok) dlk_lrn_forward(F32(in), batch, c, spatial, size, alpha, beta, kappa, F32(squared), F32(norms), F32(out));
    RELEASE(&in, &squared, &norms, &out);
    return none_if(ok);
}

static PyObject *py_lrn_backward(PyObject *self, PyObject *args)
{
    Py_buffer norms, delta, prev;
    Py_ssize_t n;
    float beta;
    if (!PyArg_ParseTuple(args, "y*y*nfw*", &norms, &delta, &n, &beta, &prev)) return NULL;
    int ok = NEED_F(norms, n, "lrn norms") && NEED_F(delta, n, "lrn delta") && NEED_F(prev, n, "lrn previous delta");
    if (ok) dlk_lrn_backward(F32(norms), F32(delta), n, beta, F32(prev));
    RELEASE(&norms, &delta, &prev);
    return none_if(ok);
}

/* ------------------------------------------------------------------ dropout.c, random.c */

static PyObject *py_dropout_forward(PyObject *self, PyObject *args)
{
    Py_buffer x, rnd;
    Py_ssize_t n;
    float prob, scale;
    unsigned long long state;
    if (!PyArg_ParseTuple(args, "w*nffw*K", &x, &n, &prob, &scale, &rnd, &state)) return NULL;
    PyObject *result = NULL;
    if (NEED_F(x, n, "dropout buffer") && NEED_F(rnd, n, "dropout rand"))
        result = PyLong_FromUnsignedLongLong(dlk_dropout_forward(F32(x), n, prob, scale, F32(rnd), state));
    RELEASE(&x, &rnd);
    return result;
}

static PyObject *py_dropout_backward(PyObject *self, PyObject *args)
{
    Py_buffer delta, rnd;
    Py_ssize_t n;
    float prob, scale;
    if (!PyArg_ParseTuple(args, "w*nffy*", &delta, &n, &prob, &scale, &rnd)) return NULL;
    int ok = NEED_F(delta, n, "dropout delta") && NEED_F(rnd, n, "dropout rand");
    if (ok) dlk_dropout_backward(F32(delta), n, prob, scale, F32(rnd));
    RELEASE(&delta, &rnd);
    return none_if(ok);
}

static PyObject *py_rand_uniform_fill(PyObject *self, PyObject *args)
{
    Py_buffer out;
    Py_ssize_t n;
    double a, b, scale;
    unsigned long long state;
    if (!PyArg_ParseTuple(args, "w*ndddK", &out, &n, &a, &b, &scale, &state)) return NULL;
    PyObject *result = NULL;
    if (NEED_F(out, n, "uniform output"))
        result = PyLong_FromUnsignedLongLong(dlk_rand_uniform_fill(F32(out), n, a, b, scale, state));
    RELEASE(&out);
    return result;
}

static PyObject *py_rand_normal_fill(PyObject *self, PyObject *args)
{
    Py_buffer out;
    Py_ssize_t n;
    double scale;
    unsigned long long state;
    PyObject *spare_obj;
    if (!PyArg_ParseTuple(args, "w*ndKO", &out, &n, &scale, &state, &spare_obj)) return NULL;
    PyObject *result = NULL;
    dlk_normal_spare spare = {0, 0, 0};
    int ok = NEED_F(out, n, "normal output");
    if (ok && spare_obj != Py_None) {
        ok = PyArg_ParseTuple(spare_obj, "dd", &spare.r1, &spare.r2);
        spare.have = 1;
    }
    if (ok) {
        uint64_t s = dlk_rand_normal_fill(F32(out), n, scale, state, &spare);
        result = spare.have ? Py_BuildValue("K(dd)", (unsigned long long)s, spare.r1, spare.r2)
                            : Py_BuildValue("KO", (unsigned long long)s, Py_None);
    }
    RELEASE(&out);
    return result;
}

static PyObject *py_rand_below(PyObject *self, PyObject *args)
{
    Py_ssize_t n;
    long long m;
    unsigned long long state;
    if (!PyArg_ParseTuple(args, "nLK", &n, &m, &state)) return NULL;
    if (n < 0 || m <= 0) { fail("_dlk.rand_below: need n >= 0 and m > 0"); return NULL; }
    long long *draws = PyMem_Malloc(sizeof(long long) * (size_t)(n ? n : 1));
    if (!draws) return PyErr_NoMemory();
    uint64_t s = dlk_rand_below(n, m, state, draws);
    PyObject *list = PyList_New(n), *result = NULL;
    for (Py_ssize_t i = 0; list && i < n; ++i) {
        PyObject *v = PyLong_FromLongLong(draws[i]);
        if (!v) { Py_CLEAR(list); break; }
        PyList_SetItem(list, i, v);
    }
    PyMem_Free(draws);
    if (list) result = Py_BuildValue("KN", (unsigned long long)s, list);
    return result;
}

/* ------------------------------------------------------------------ image.c, draw.c */

static PyObject *py_pixels_to_chw(PyObject *self, PyObject *args)
{
    Py_buffer src, out;
    int width, height, comps;
    if (!PyArg_ParseTuple(args, "y*iiiw*", &src, &width, &height, &comps, &out)) return NULL;
    long long plane = (long long)width * height;
    int ok = (width > 0 && height > 0 && comps >= 1 && comps <= 4) || fail("_dlk.pixels_to_chw: bad geometry");
    ok = ok && need(&src, plane * comps, 1, "pixels") && NEED_F(out, 3 * plane, "image");
    if (ok) dlk_pixels_to_chw(U8(src), width, height, comps, F32(out));
    RELEASE(&src, &out);
    return none_if(ok);
}

static PyObject *py_chw_to_pixels(PyObject *self, PyObject *args)
{
    Py_buffer im, out;
    int w, h, c;
    if (!PyArg_ParseTuple(args, "y*iiiw*", &im, &w, &h, &c, &out)) return NULL;
    long long plane = (long long)w * h;
    int ok = (w > 0 && h > 0 && c > 0) || fail("_dlk.chw_to_pixels: bad geometry");
    ok = ok && NEED_F(im, plane * c, "image") && need(&out, plane * c, 1, "pixels");
    if (ok) dlk_chw_to_pixels(F32(im), w, h, c, U8(out));
    RELEASE(&im, &out);
    return none_if(ok);
}

static PyObject *py_resize_image(PyObject *self, PyObject *args)
{
    Py_buffer src, dst, part;
    int sw, sh, c, dw, dh;
    if (!PyArg_ParseTuple(args, "y*iiiw*iiw*", &src, &sw, &sh, &c, &dst, &dw, &dh, &part)) return NULL;
    int ok = (sw > 0 && sh > 0 && c > 0 && dw >= 0 && dh >= 0) || fail("_dlk.resize_image: bad geometry");
    ok = ok && NEED_F(src, (long long)sw * sh * c, "resize source") &&
         NEED_F(dst, (long long)dw * dh * c, "resize output") &&
         NEED_F(part, (long long)dw * sh * c, "resize workspace");
    if (ok) dlk_resize_image(F32(src), sw, sh, c, F32(dst), dw, dh, F32(part));
    RELEASE(&src, &dst, &part);
    return none_if(ok);
}

static PyObject *py_image_paste(PyObject *self, PyObject *args)
{
    Py_buffer src, dst;
    int sw, sh, c, dw, dh, dx, dy, multiply;
    if (!PyArg_ParseTuple(args, "y*iiiw*iiiip", &src, &sw, &sh, &c, &dst, &dw, &dh, &dx, &dy, &multiply)) return NULL;
    int ok = (sw >= 0 && sh >= 0 && c >= 0 && dw >= 0 && dh >= 0) || fail("_dlk.image_paste: bad geometry");
    ok = ok && NEED_F(src, (long long)sw * sh * c, "paste source") &&
         NEED_F(dst, (long long)dw * dh * c, "paste target");
    if (ok) dlk_image_paste(F32(src), sw, sh, c, F32(dst), dw, dh, dx, dy, multiply);
    RELEASE(&src, &dst);
    return none_if(ok);
}

static PyObject *py_upsample(PyObject *self, PyObject *args)
{
    Py_buffer in, out;
    int batch, c, h, w, stride, forward;
    float scale;
    if (!PyArg_ParseTuple(args, "w*iiiiifw*p", &in, &batch, &c, &h, &w, &stride, &scale, &out, &forward)) return NULL;
    long long n_in = (long long)batch * c * h * w;
    int ok = (batch >= 0 && c >= 0 && h >= 0 && w >= 0 && stride > 0) || fail("_dlk.upsample: bad geometry");
    ok = ok && NEED_F(in, n_in, "upsample input") && NEED_F(out, n_in * stride * stride, "upsample output");
    if (ok) dlk_upsample(F32(in), batch, c, h, w, stride, scale, F32(out), forward);
    RELEASE(&in, &out);
    return none_if(ok);
}

static PyObject *py_shortcut(PyObject *self, PyObject *args)
{
    Py_buffer add, out;
    int batch, w1, h1, c1, w2, h2, c2;
    float s1, s2;
    if (!PyArg_ParseTuple(args, "iiiiy*iiiffw*", &batch, &w1, &h1, &c1, &add, &w2, &h2, &c2, &s1, &s2, &out))
        return NULL;
    int ok = (batch >= 0 && w1 > 0 && h1 > 0 && c1 > 0 && w2 > 0 && h2 > 0 && c2 > 0) ||
             fail("_dlk.shortcut: bad geometry");
    ok = ok && NEED_F(add, (long long)batch * w1 * h1 * c1, "shortcut source") &&
         NEED_F(out, (long long)batch * w2 * h2 * c2, "shortcut output");
    if (ok) dlk_shortcut(batch, w1, h1, c1, F32(add), w2, h2, c2, s1, s2, F32(out));
    RELEASE(&add, &out);
    return none_if(ok);
}

static PyObject *py_draw_box_width(PyObject *self, PyObject *args)
{
    Py_buffer im;
    int w, h, x1, y1, x2, y2, width;
    float rgb[3];
    if (!PyArg_ParseTuple(args, "w*iiiiiiifff", &im, &w, &h, &x1, &y1, &x2, &y2, &width, &rgb[0], &rgb[1], &rgb[2]))
        return NULL;
    int ok = (w > 0 && h > 0) || fail("_dlk.draw_box_width: bad geometry");
    ok = ok && NEED_F(im, 3LL * w * h, "image");
    if (ok) dlk_draw_box_width(F32(im), w, h, x1, y1, x2, y2, width, rgb);
    RELEASE(&im);
    return none_if(ok);
}

static PyObject *py_draw_label(PyObject *self, PyObject *args)
{
    Py_buffer im, label;
    int w, h, lw, lh, r, c;
    float rgb[3];
    if (!PyArg_ParseTuple(args, "w*iiy*iiiifff", &im, &w, &h, &label, &lw, &lh, &r, &c, &rgb[0], &rgb[1], &rgb[2]))
        return NULL;
    int ok = (w > 0 && h > 0 && lw >= 0 && lh >= 0) || fail("_dlk.draw_label: bad geometry");
    ok = ok && NEED_F(im, 3LL * w * h, "image") && NEED_F(label, (long long)lw * lh, "label");
    if (ok) dlk_draw_label(F32(im), w, h, F32(label), lw, lh, r, c, rgb);
    RELEASE(&im, &label);
    return none_if(ok);
}

/* ------------------------------------------------------------------ yolo.c */

static PyObject *py_yolo_candidates(PyObject *self, PyObject *args)
{
    Py_buffer output, anchors, boxes, objectness, probs;
    int w, h, n, classes, netw, neth;
    float thresh;
    if (!PyArg_ParseTuple(args, "y*iiiiy*iifw*w*w*", &output, &w, &h, &n, &classes, &anchors, &netw, &neth, &thresh,
                          &boxes, &objectness, &probs))
        return NULL;
    PyObject *result = NULL;
    long long most = (long long)w * h * n;
    int ok = (w > 0 && h > 0 && n >= 0 && classes >= 0 && netw > 0 && neth > 0) ||
             fail("_dlk.yolo_candidates: bad geometry");
    ok = ok && NEED_F(output, most * (classes + 5), "yolo output") && NEED_F(anchors, 2LL * n, "anchors") &&
         NEED_F(boxes, 4 * most, "boxes") && NEED_F(objectness, most, "objectness") &&
         NEED_F(probs, most * classes, "probs");
    if (ok)
        result = PyLong_FromLongLong(dlk_yolo_candidates(F32(output), w, h, n, classes, F32(anchors), netw, neth,
                                                         thresh, F32(boxes), F32(objectness), F32(probs)));
    RELEASE(&output, &anchors, &boxes, &objectness, &probs);
    return result;
}

static PyObject *py_yolo_delta(PyObject *self, PyObject *args)
{
    Py_buffer output, delta, mask, biases, truth, stats;
    int batch, w, h, n, classes, total, netw, neth, max_boxes;
    float ignore_thresh, truth_thresh;
    if (!PyArg_ParseTuple(args, "y*w*iiiiiy*iy*iiy*iffw*", &output, &delta, &batch, &w, &h, &n, &classes, &mask,
                          &total, &biases, &netw, &neth, &truth, &max_boxes, &ignore_thresh, &truth_thresh, &stats))
        return NULL;
    long long outputs = (long long)w * h * n * (classes + 5);
    int ok = (batch >= 0 && w > 0 && h > 0 && n > 0 && classes >= 0 && total > 0 && netw > 0 && neth > 0) ||
             fail("_dlk.yolo_delta: bad geometry");
    ok = ok && NEED_F(output, batch * outputs, "yolo output") && NEED_F(delta, batch * outputs, "yolo delta") &&
         need(&mask, n, 4, "yolo mask") && NEED_F(biases, 2LL * total, "biases") && NEED_F(stats, 9, "stats");
    for (int a = 0; ok && a < n; ++a) {
        int m = ((const int *)mask.buf)[a];
        if (m < 0 || m >= total) ok = fail("_dlk.yolo_delta: mask value outside the anchors");
    }
    if (ok)
        dlk_yolo_delta(F32(output), F32(delta), batch, w, h, n, classes, (const int *)mask.buf, total, F32(biases),
                       netw, neth, F32(truth), (long long)(truth.len / 4), max_boxes, ignore_thresh, truth_thresh,
                       F32(stats));
    RELEASE(&output, &delta, &mask, &biases, &truth, &stats);
    return none_if(ok);
}

static PyObject *py_nms_sort(PyObject *self, PyObject *args)
{
    Py_buffer boxes, objectness, probs, order;
    int n, classes;
    float thresh;
    if (!PyArg_ParseTuple(args, "y*y*w*iifw*", &boxes, &objectness, &probs, &n, &classes, &thresh, &order))
        return NULL;
    PyObject *result = NULL;
    int ok = (n >= 0 && classes >= 0) || fail("_dlk.nms_sort: negative size");
    ok = ok && NEED_F(boxes, 4LL * n, "boxes") && NEED_F(objectness, n, "objectness") &&
         NEED_F(probs, (long long)n * classes, "probs") && need(&order, n, 4, "order");
    if (ok)
        result = PyLong_FromLong(dlk_nms_sort(F32(boxes), F32(objectness), F32(probs), n, classes, thresh,
                                              (int *)order.buf));
    RELEASE(&boxes, &objectness, &probs, &order);
    return result;
}

/* ------------------------------------------------------------------ region.c, local.c */

static PyObject *py_reorg(PyObject *self, PyObject *args)
{
    Py_buffer x, out;
    int w, h, c, batch, stride, forward;
    if (!PyArg_ParseTuple(args, "y*iiiiipw*", &x, &w, &h, &c, &batch, &stride, &forward, &out)) return NULL;
    int ok = (w > 0 && h > 0 && c > 0 && batch >= 0 && stride > 0 && c % (stride * stride) == 0) ||
             fail("_dlk.reorg: bad geometry (stride^2 must divide c)");
    long long n = (long long)batch * w * h * c;
    ok = ok && NEED_F(x, n, "reorg input") && NEED_F(out, n, "reorg output");
    if (ok) dlk_reorg(F32(x), w, h, c, batch, stride, forward, F32(out));
    RELEASE(&x, &out);
    return none_if(ok);
}

static PyObject *py_flatten(PyObject *self, PyObject *args)
{
    Py_buffer x, out;
    int size, layers, batch, forward;
    if (!PyArg_ParseTuple(args, "y*iiipw*", &x, &size, &layers, &batch, &forward, &out)) return NULL;
    int ok = (size > 0 && layers > 0 && batch >= 0) || fail("_dlk.flatten: bad geometry");
    long long n = (long long)batch * size * layers;
    ok = ok && NEED_F(x, n, "flatten input") && NEED_F(out, n, "flatten output");
    if (ok) dlk_flatten(F32(x), size, layers, batch, forward, F32(out));
    RELEASE(&x, &out);
    return none_if(ok);
}

static PyObject *py_crop(PyObject *self, PyObject *args)
{
    Py_buffer in, out;
    int batch, c, h, w, oh, ow, dh, dw, flip;
    float scale, trans;
    if (!PyArg_ParseTuple(args, "y*iiiiiiiipffw*", &in, &batch, &c, &h, &w, &oh, &ow, &dh, &dw, &flip, &scale, &trans,
                          &out))
        return NULL;
    int ok = (batch >= 0 && c > 0 && h > 0 && w > 0 && oh > 0 && ow > 0 && dh >= 0 && dw >= 0 && dh + oh <= h &&
              dw + ow <= w) ||
             fail("_dlk.crop: bad geometry");
    ok = ok && NEED_F(in, (long long)batch * c * h * w, "crop input") &&
         NEED_F(out, (long long)batch * c * oh * ow, "crop output");
    if (ok) dlk_crop(F32(in), batch, c, h, w, oh, ow, dh, dw, flip, scale, trans, F32(out));
    RELEASE(&in, &out);
    return none_if(ok);
}

static PyObject *py_softmax_strided(PyObject *self, PyObject *args)
{
    Py_buffer in, out;
    int n, batch, batch_offset, groups, group_offset, stride;
    float temp;
    if (!PyArg_ParseTuple(args, "y*iiiiiifw*", &in, &n, &batch, &batch_offset, &groups, &group_offset, &stride,
                          &temp, &out))
        return NULL;
    int ok = (n > 0 && batch >= 0 && groups >= 0 && batch_offset >= 0 && group_offset >= 0 && stride > 0) ||
             fail("_dlk.softmax_strided: bad geometry");
    /* the last value touched, plus one */
    long long end = (batch && groups) ? (long long)(batch - 1) * batch_offset + (long long)(groups - 1) * group_offset +
                                            (long long)(n - 1) * stride + 1
                                      : 0;
    ok = ok && NEED_F(in, end, "softmax input") && NEED_F(out, end, "softmax output");
    if (ok) dlk_softmax_strided(F32(in), n, batch, batch_offset, groups, group_offset, stride, temp, F32(out));
    RELEASE(&in, &out);
    return none_if(ok);
}

static PyObject *py_region_boxes(PyObject *self, PyObject *args)
{
    Py_buffer output, biases, parent, gsize, goffset, child, boxes, obj, probs;
    int w, h, n, classes, coords, background;
    float thresh, tree_thresh;
    if (!PyArg_ParseTuple(args, "w*iiiiipy*fy*y*y*y*fw*w*w*", &output, &w, &h, &n, &classes, &coords, &background,
                          &biases, &thresh, &parent, &gsize, &goffset, &child, &tree_thresh, &boxes, &obj, &probs))
        return NULL;
    long long hw = (long long)w * h, slots = hw * (n > 0 ? n : 0);
    int ok = (w > 0 && h > 0 && n > 0 && classes > 0 && coords >= 4) || fail("_dlk.region_boxes: bad geometry");
    ok = ok && NEED_F(output, slots * (coords + classes + 1), "region output") && NEED_F(biases, 2LL * n, "biases") &&
         NEED_F(boxes, 4 * slots, "boxes") && NEED_F(obj, slots, "objectness") &&
         NEED_F(probs, slots * classes, "probs");
    /* a tree: parent[classes], child[classes], group_size/offset[groups] that stay inside the classes */
    int tree = ok && parent.len > 0;
    if (tree) {
        int groups = (int)(gsize.len / 4);
        ok = (need(&parent, classes, 4, "tree parents") && need(&child, classes, 4, "tree children") &&
              groups > 0 && goffset.len / 4 >= groups) ||
             (PyErr_Occurred() ? 0 : fail("_dlk.region_boxes: bad tree"));
        const int *par = (const int *)parent.buf, *chi = (const int *)child.buf;
        const int *gs = (const int *)gsize.buf, *go = (const int *)goffset.buf;
        for (int j = 0; ok && j < classes; ++j)
            if (par[j] < -1 || par[j] >= classes || chi[j] < -1 || chi[j] >= groups) ok = fail("_dlk.region_boxes: bad tree");
        for (int g = 0; ok && g < groups; ++g)
            if (gs[g] < 0 || go[g] < 0 || go[g] >= classes || (long long)go[g] + gs[g] > classes)
                ok = fail("_dlk.region_boxes: bad tree");
    }
    if (ok)
        dlk_region_boxes(F32(output), w, h, n, classes, coords, background, F32(biases), thresh,
                         tree ? (const int *)parent.buf : NULL, tree ? (const int *)gsize.buf : NULL,
                         tree ? (const int *)goffset.buf : NULL, tree ? (const int *)child.buf : NULL, tree_thresh,
                         F32(boxes), F32(obj), F32(probs));
    RELEASE(&output, &biases, &parent, &gsize, &goffset, &child, &boxes, &obj, &probs);
    return none_if(ok);
}

static PyObject *py_detection_boxes(PyObject *self, PyObject *args)
{
    Py_buffer output, boxes, obj, probs;
    int side, n, classes, sqrt_wh, w, h;
    float thresh;
    if (!PyArg_ParseTuple(args, "y*iiipiifw*w*w*", &output, &side, &n, &classes, &sqrt_wh, &w, &h, &thresh, &boxes,
                          &obj, &probs))
        return NULL;
    long long slots = (long long)side * side * n;
    int ok = (side > 0 && n > 0 && classes >= 0 && w > 0 && h > 0) || fail("_dlk.detection_boxes: bad geometry");
    ok = ok && NEED_F(output, (long long)side * side * (classes + 5LL * n), "detection output") &&
         NEED_F(boxes, 4 * slots, "boxes") && NEED_F(obj, slots, "objectness") &&
         NEED_F(probs, slots * classes, "probs");
    if (ok) dlk_detection_boxes(F32(output), side, n, classes, sqrt_wh, w, h, thresh, F32(boxes), F32(obj), F32(probs));
    RELEASE(&output, &boxes, &obj, &probs);
    return none_if(ok);
}

/* local_forward/local_backward geometry: im2col's output size; ok or ValueError */
static int local_geometry(int batch, int c, int h, int w, int size, int stride, int pad, int n, long long *L,
                          long long *K)
{
    if (batch < 0 || c <= 0 || h <= 0 || w <= 0 || size <= 0 || stride <= 0 || pad < 0 || n <= 0 ||
        h + 2 * pad < size || w + 2 * pad < size)
        return fail("_dlk.local: bad geometry");
    *L = (long long)dlk_conv_out_size(h, size, stride, pad) * dlk_conv_out_size(w, size, stride, pad);
    *K = (long long)size * size * c;
    return 1;
}

static PyObject *py_local_forward(PyObject *self, PyObject *args)
{
    Py_buffer in, weights, biases, out, ws;
    int batch, c, h, w, size, stride, pad, n;
    if (!PyArg_ParseTuple(args, "y*iiiiiiiiy*y*w*w*", &in, &batch, &c, &h, &w, &size, &stride, &pad, &n, &weights,
                          &biases, &out, &ws))
        return NULL;
    long long L = 0, K = 0;
    int ok = local_geometry(batch, c, h, w, size, stride, pad, n, &L, &K);
    ok = ok && NEED_F(in, (long long)batch * c * h * w, "local input") && NEED_F(weights, L * K * n, "local weights") &&
         NEED_F(biases, L * n, "local biases") && NEED_F(out, batch * L * n, "local output") &&
         NEED_F(ws, L * K, "local workspace");
    if (ok) dlk_local_forward(F32(in), batch, c, h, w, size, stride, pad, n, F32(weights), F32(biases), F32(out), F32(ws));
    RELEASE(&in, &weights, &biases, &out, &ws);
    return none_if(ok);
}

static PyObject *py_local_backward(PyObject *self, PyObject *args)
{
    Py_buffer in, weights, delta, bupd, wupd, ws, prev = {0};
    PyObject *prev_obj;
    int batch, c, h, w, size, stride, pad, n;
    if (!PyArg_ParseTuple(args, "y*iiiiiiiiy*y*w*w*Ow*", &in, &batch, &c, &h, &w, &size, &stride, &pad, &n, &weights,
                          &delta, &bupd, &wupd, &prev_obj, &ws))
        return NULL;
    int have_prev = prev_obj != Py_None;
    int ok = !have_prev || PyObject_GetBuffer(prev_obj, &prev, PyBUF_WRITABLE) == 0;
    long long L = 0, K = 0;
    ok = ok && local_geometry(batch, c, h, w, size, stride, pad, n, &L, &K);
    ok = ok && NEED_F(in, (long long)batch * c * h * w, "local input") && NEED_F(weights, L * K * n, "local weights") &&
         NEED_F(delta, batch * L * n, "local delta") && NEED_F(bupd, L * n, "local bias updates") &&
         NEED_F(wupd, L * K * n, "local weight updates") && NEED_F(ws, L * K, "local workspace") &&
         (!have_prev || NEED_F(prev, (long long)batch * c * h * w, "local input delta"));
    if (ok)
        dlk_local_backward(F32(in), batch, c, h, w, size, stride, pad, n, F32(weights), F32(delta), F32(bupd),
                           F32(wupd), have_prev ? F32(prev) : NULL, F32(ws));
    RELEASE(&in, &weights, &delta, &bupd, &wupd, &ws, &prev);
    return none_if(ok);
}

static PyObject *py_region_delta(PyObject *self, PyObject *args)
{
    Py_buffer output, delta, biases, truth, scales, map, parent, group, gsize, goffset, stats;
    int batch, w, h, n, classes, coords, rescore, background, bias_match, softmax;
    long long seen;
    float thresh;
    if (!PyArg_ParseTuple(args, "y*w*iiiiiiy*y*fy*ppppLy*y*y*y*y*w*", &output, &delta, &batch, &w, &h, &n, &classes,
                          &coords, &biases, &truth, &thresh, &scales, &rescore, &background, &bias_match, &softmax,
                          &seen, &map, &parent, &group, &gsize, &goffset, &stats))
        return NULL;
    long long outputs = (long long)w * h * n * ((long long)coords + classes + 1);
    int ok = (batch >= 0 && w > 0 && h > 0 && n > 0 && classes > 0 && coords >= 4) ||
             fail("_dlk.region_delta: bad geometry");
    ok = ok && NEED_F(output, batch * outputs, "region output") && NEED_F(delta, batch * outputs, "region delta") &&
         NEED_F(biases, 2LL * n, "biases") && NEED_F(truth, batch * 30LL * (coords + 1), "truth") &&
         NEED_F(scales, 5, "scales") && NEED_F(stats, 8, "stats");
    int has_map = ok && map.len > 0, tree = ok && parent.len > 0;
    if (has_map) {
        const int *m = (const int *)map.buf;
        long long entries = map.len / 4;
        /* map[class] for any class in range: every entry must be a class */
        ok = (entries >= classes) || fail("_dlk.region_delta: map shorter than classes");
        for (long long i = 0; ok && i < entries; ++i)
            if (m[i] < 0 || m[i] >= classes) ok = fail("_dlk.region_delta: bad map");
    }
    if (ok && tree) {
        int groups = (int)(gsize.len / 4);
        ok = (need(&parent, classes, 4, "tree parents") && need(&group, classes, 4, "tree groups") && groups > 0 &&
              goffset.len / 4 >= groups) ||
             (PyErr_Occurred() ? 0 : fail("_dlk.region_delta: bad tree"));
        const int *par = (const int *)parent.buf, *grp = (const int *)group.buf;
        const int *gs = (const int *)gsize.buf, *go = (const int *)goffset.buf;
        for (int j = 0; ok && j < classes; ++j)
            if (par[j] < -1 || par[j] >= j || grp[j] < 0 || grp[j] >= groups) ok = fail("_dlk.region_delta: bad tree");
        for (int g = 0; ok && g < groups; ++g)
            if (gs[g] < 0 || go[g] < 0 || (long long)go[g] + gs[g] > classes) ok = fail("_dlk.region_delta: bad tree");
    }
    if (ok)
        dlk_region_delta(F32(output), F32(delta), batch, w, h, n, classes, coords, F32(biases), F32(truth), thresh,
                         F32(scales), rescore, background, bias_match, softmax, seen,
                         has_map ? (const int *)map.buf : NULL, tree ? (const int *)parent.buf : NULL,
                         tree ? (const int *)group.buf : NULL, tree ? (const int *)gsize.buf : NULL,
                         tree ? (const int *)goffset.buf : NULL, F32(stats));
    RELEASE(&output, &delta, &biases, &truth, &scales, &map, &parent, &group, &gsize, &goffset, &stats);
    return none_if(ok);
}

#ifdef DLK_TEST_HOOKS
static PyObject *py_musl_sort_desc(PyObject *self, PyObject *args)
{
    Py_buffer keys, order;
    int n;
    if (!PyArg_ParseTuple(args, "y*iw*", &keys, &n, &order)) return NULL;
    int ok = n >= 0 || fail("_dlk.musl_sort_desc: negative size");
    ok = ok && NEED_F(keys, n, "keys") && need(&order, n, 4, "order");
    if (ok) dlk_musl_sort_desc(F32(keys), n, (int *)order.buf);
    RELEASE(&keys, &order);
    return none_if(ok);
}
#endif

/* ------------------------------------------------------------------ png.c */

static PyObject *py_png_unfilter(PyObject *self, PyObject *args)
{
    Py_buffer src, out;
    int height, rowbytes, bpp;
    if (!PyArg_ParseTuple(args, "y*iiiw*", &src, &height, &rowbytes, &bpp, &out)) return NULL;
    int ok = (height >= 0 && rowbytes >= 0 && bpp >= 1 && bpp <= 8) || fail("bad scanline geometry");
    if (ok && src.len < (Py_ssize_t)height * (rowbytes + 1)) {
        PyErr_Format(PyExc_ValueError, "image data too short: %zd bytes, %lld needed", src.len,
                     (long long)height * (rowbytes + 1));
        ok = 0;
    }
    ok = ok && need(&out, (long long)height * rowbytes, 1, "png output");
    if (ok) {
        int bad = dlk_png_unfilter(U8(src), height, rowbytes, bpp, U8(out));
        if (bad >= 0) {
            PyErr_Format(PyExc_ValueError, "bad filter type %d in row %d", U8(src)[(long long)bad * (rowbytes + 1)],
                         bad);
            ok = 0;
        }
    }
    RELEASE(&src, &out);
    return none_if(ok);
}

static PyObject *py_png_expand_palette(PyObject *self, PyObject *args)
{
    Py_buffer idx, pal, out;
    Py_ssize_t n;
    int comps;
    if (!PyArg_ParseTuple(args, "y*y*niw*", &idx, &pal, &n, &comps, &out)) return NULL;
    int ok = (comps >= 1 && comps <= 4) || fail("bad palette entry size");
    ok = ok && need(&idx, n, 1, "palette indexes") && need(&out, (long long)n * comps, 1, "palette output");
    if (ok) {
        Py_ssize_t entries = pal.len / comps;
        ptrdiff_t bad = dlk_png_expand_palette(U8(idx), U8(pal), entries, n, comps, U8(out));
        if (bad >= 0) {
            PyErr_Format(PyExc_ValueError, "palette index %d past the %zd-entry palette", U8(idx)[bad], entries);
            ok = 0;
        }
    }
    RELEASE(&idx, &pal, &out);
    return none_if(ok);
}

static PyObject *py_png_load_chw(PyObject *self, PyObject *args)
{
    Py_buffer data, out;
    int width, height;
    if (!PyArg_ParseTuple(args, "y*iiw*", &data, &width, &height, &out)) return NULL;
    PyObject *result = NULL;
    int ok = (width > 0 && height > 0 && (long long)width * height <= (1 << 26)) || fail("_dlk.png_load_chw: bad size");
    if (ok && NEED_F(out, 3LL * width * height, "image")) {
        int r = dlk_png_load_chw(U8(data), (size_t)data.len, width, height, F32(out));
        if (r < 0) PyErr_NoMemory();
        else result = PyBool_FromLong(r);
    }
    RELEASE(&data, &out);
    return result;
}

static PyObject *py_png_load_rows(PyObject *self, PyObject *args)
{
    PyObject *files, *result = NULL, *left = NULL;
    Py_buffer out;
    int width, height;
    if (!PyArg_ParseTuple(args, "O!iiw*", &PyList_Type, &files, &width, &height, &out)) return NULL;
    if (width <= 0 || height <= 0 || (long long)width * height > (1 << 26)) {
        fail("_dlk.png_load_rows: bad size"); goto done;
    }
    Py_ssize_t n = PyList_Size(files);
    long long row = 3LL * width * height;
    if (!NEED_F(out, n * row, "batch")) goto done;
    left = PyList_New(0);
    if (!left) goto done;
    for (Py_ssize_t r = 0; r < n; ++r) {
        Py_buffer data;
        if (PyObject_GetBuffer(PyList_GetItem(files, r), &data, PyBUF_SIMPLE) < 0) goto done;
        int ok = dlk_png_load_chw(U8(data), (size_t)data.len, width, height, F32(out) + r * row);
        PyBuffer_Release(&data);
        if (ok < 0) { PyErr_NoMemory(); goto done; }
        if (!ok) {
            PyObject *v = PyLong_FromSsize_t(r);
            if (!v || PyList_Append(left, v) < 0) { Py_XDECREF(v); goto done; }
            Py_DECREF(v);
        }
    }
    result = left;
    left = NULL;
done:
    Py_XDECREF(left);
    PyBuffer_Release(&out);
    return result;
}

/* ------------------------------------------------------------------ jpeg.c */

/* jpeg_decode_scan's params: 9 int32 for the scan, then 8 per component (order in _dlk.pyi) */
#define JPEG_SCAN_HEAD 9
#define JPEG_SCAN_PER_COMP 8

static PyObject *py_jpeg_decode_scan(PyObject *self, PyObject *args)
{
    Py_buffer src, par, tab, coef;
    Py_ssize_t start;
    if (!PyArg_ParseTuple(args, "y*ny*y*w*", &src, &start, &par, &tab, &coef)) return NULL;
    PyObject *result = NULL;
    int32_t P[JPEG_SCAN_HEAD + 4 * JPEG_SCAN_PER_COMP];
    dlk_jpeg_scan scan;
    Py_ssize_t ncoef = coef.len / 2;

    if (start < 0 || start > src.len) { fail("_dlk: scan start outside the data"); goto done; }
    if (!need(&par, JPEG_SCAN_HEAD, 4, "scan params")) goto done;
    memcpy(P, par.buf, JPEG_SCAN_HEAD * 4);
    int ns = P[8];
    if (ns < 1 || ns > 4) { fail("_dlk: bad scan component count"); goto done; }
    if (!need(&par, JPEG_SCAN_HEAD + ns * JPEG_SCAN_PER_COMP, 4, "scan params")) goto done;
    memcpy(P, par.buf, (JPEG_SCAN_HEAD + ns * JPEG_SCAN_PER_COMP) * 4);
    if (!need(&tab, 8 * 272, 1, "huffman tables")) goto done;
    if ((uintptr_t)coef.buf % 2) { fail("_dlk: misaligned coefficients"); goto done; }

    scan.progressive = P[0] != 0; scan.ss = P[1]; scan.se = P[2]; scan.ah = P[3]; scan.al = P[4];
    scan.restart = P[5]; scan.mcus_x = P[6]; scan.mcus_y = P[7]; scan.ncomps = ns;
    if (!scan.progressive) { scan.ss = 0; scan.se = 63; scan.ah = scan.al = 0; }   /* stb ignores Se here */
    if (scan.ss < 0 || scan.se > 63 || scan.ss > scan.se || scan.ah < 0 || scan.ah > 13 || scan.al < 0 || scan.al > 13
        || scan.restart < 0 || scan.mcus_x < 1 || scan.mcus_y < 1) {
        fail("_dlk: bad scan parameters"); goto done;
    }
    if (scan.progressive && ((scan.ss == 0) != (scan.se == 0) || (scan.ss > 0 && ns != 1))) {
        fail("_dlk: progressive scan mixes DC and AC"); goto done;
    }
    for (int i = 0; i < ns; ++i) {
        const int32_t *q = P + JPEG_SCAN_HEAD + i * JPEG_SCAN_PER_COMP;
        dlk_jpeg_scan_comp *c = &scan.comp[i];
        c->first = q[0]; c->coef_w = q[1]; c->coef_h = q[2]; c->h = q[3]; c->v = q[4];
        c->scan_w = q[5]; c->scan_h = q[6]; c->dc_table = q[7] & 15; c->ac_table = (q[7] >> 4) & 15;
        if (c->first < 0 || c->coef_w < 1 || c->coef_h < 1 || c->h < 1 || c->h > 4 || c->v < 1 || c->v > 4
            || c->scan_w < 1 || c->scan_h < 1 || c->scan_w > c->coef_w || c->scan_h > c->coef_h
            || c->dc_table > 3 || c->ac_table > 3
            || (ns > 1 && ((long long)scan.mcus_x * c->h > c->coef_w || (long long)scan.mcus_y * c->v > c->coef_h))) {
            fail("_dlk: bad scan component geometry"); goto done;
        }
        if ((long long)c->coef_w * c->coef_h * 64 > ncoef - c->first) {
            PyErr_Format(PyExc_ValueError, "_dlk: coefficients hold %zd items, %lld needed",
                         ncoef, (long long)c->first + (long long)c->coef_w * c->coef_h * 64);
            goto done;
        }
    }
    ptrdiff_t end = 0;
    int status = dlk_jpeg_decode_scan(U8(src), src.len, start, &scan, U8(tab), (int16_t *)coef.buf, &end);
    if (kernel_ok(status)) result = status ? PyLong_FromLong(status) : PyLong_FromSsize_t(end);
done:
    RELEASE(&src, &par, &tab, &coef);
    return result;
}

static PyObject *py_jpeg_idct(PyObject *self, PyObject *args)
{
    Py_buffer coef, qt, plane;
    Py_ssize_t first, pfirst;
    int bw, bh;
    if (!PyArg_ParseTuple(args, "y*niiy*w*n", &coef, &first, &bw, &bh, &qt, &plane, &pfirst)) return NULL;
    long long nblocks = (long long)bw * bh;
    int ok = (bw >= 1 && bh >= 1 && first >= 0 && pfirst >= 0) || fail("_dlk: bad block geometry");
    ok = ok && (!((uintptr_t)coef.buf % 2) || fail("_dlk: misaligned coefficients"));
    ok = ok && jpg_need(&coef, first + nblocks * 64, 2, "coefficients") && need(&qt, 64, 2, "quant table") &&
         jpg_need(&plane, pfirst + nblocks * 64, 1, "sample plane");
    if (ok) {
        uint16_t q[64];
        memcpy(q, qt.buf, sizeof q);
        dlk_jpeg_idct((const int16_t *)coef.buf + first, bw, bh, q, U8(plane) + pfirst);
    }
    RELEASE(&coef, &qt, &plane);
    return none_if(ok);
}

static PyObject *py_jpeg_color(PyObject *self, PyObject *args)
{
    Py_buffer planes, par, out;
    int width, height, mode;
    if (!PyArg_ParseTuple(args, "y*y*iiiw*", &planes, &par, &width, &height, &mode, &out)) return NULL;
    int ok;
    int n = (int)(par.len / (5 * 4));
    int want = mode == JPEG_GRAY ? 1 : (mode == JPEG_CMYK || mode == JPEG_YCCK) ? 4 : 3;
    if (mode < 0 || mode > 4 || !(n == want || (mode == JPEG_YCBCR && n == 4)) || width < 1 || height < 1
        || (size_t)width + 3 > SIZE_MAX / 4) {   /* line buffers: 4 x (width + 3) */
        ok = fail("_dlk: bad colour conversion parameters");
    } else {
        int oc = mode == JPEG_GRAY ? 1 : 3;
        ok = jpg_need(&out, (long long)width * height * oc, 1, "pixel output");
    }
    dlk_jpeg_plane comps[4];
    if (ok) {
        int32_t P[20];
        memcpy(P, par.buf, (size_t)n * 5 * 4);
        for (int k = 0; ok && k < n; ++k) {
            dlk_jpeg_plane *c = &comps[k];
            c->first = P[k * 5]; c->stride = P[k * 5 + 1]; c->rows = P[k * 5 + 2];
            c->hs = P[k * 5 + 3]; c->vs = P[k * 5 + 4];
            if (c->first < 0 || c->stride < 1 || c->rows < 1 || c->hs < 1 || c->hs > 4 || c->vs < 1 || c->vs > 4) {
                ok = fail("_dlk: bad component plane geometry");
                break;
            }
            int w_lores = (int)(((long long)width + c->hs - 1) / c->hs);
            ok = (w_lores <= c->stride || fail("_dlk: plane rows too short")) &&
                 jpg_need(&planes, c->first + (long long)(c->rows - 1) * c->stride + w_lores, 1, "component planes");
        }
    }
    ok = ok && kernel_ok(dlk_jpeg_color(U8(planes), comps, n, width, height, mode, U8(out)));
    RELEASE(&planes, &par, &out);
    return none_if(ok);
}

static PyObject *py_jpeg_encode_scan(PyObject *self, PyObject *args)
{
    Py_buffer pix, yt, uvt, hs;
    int width, height, comp;
    if (!PyArg_ParseTuple(args, "y*iiiy*y*y*", &pix, &width, &height, &comp, &yt, &uvt, &hs)) return NULL;
    PyObject *result = NULL;
    int ok = (width >= 1 && height >= 1 && comp >= 1 && comp <= 4 && width <= 65535 && height <= 65535) ||
             fail("_dlk: bad image geometry for JPEG");
    ok = ok && jpg_need(&pix, (long long)width * height * comp, 1, "pixels") && need(&yt, 64, 1, "Y table") &&
         need(&uvt, 64, 1, "UV table") && need(&hs, 4 * 272, 1, "huffman tables");
    uint8_t *data = NULL;
    size_t len = 0;
    if (ok && kernel_ok(dlk_jpeg_encode_scan(U8(pix), width, height, comp, U8(yt), U8(uvt), U8(hs), &data, &len)))
        result = PyBytes_FromStringAndSize((const char *)data, (Py_ssize_t)len);
    free(data);
    RELEASE(&pix, &yt, &uvt, &hs);
    return result;
}

/* ------------------------------------------------------------------ io.c */

static PyObject *py_read_files(PyObject *self, PyObject *args)
{
    PyObject *paths;
    long long max_bytes = -1;
    if (!PyArg_ParseTuple(args, "O!|L", &PyList_Type, &paths, &max_bytes)) return NULL;
    Py_ssize_t n = PyList_Size(paths);
    PyObject *out = PyList_New(n);
    if (!out) return NULL;
    size_t cap = DLK_READ_STEP;
    char *buf = malloc(cap);
    if (!buf) { Py_DECREF(out); return PyErr_NoMemory(); }
    struct dlk_dirs dirs;
    dlk_dirs_init(&dirs);
    for (Py_ssize_t i = 0; i < n; ++i) {
        PyObject *item = NULL;
        Py_ssize_t len;
        const char *path = PyUnicode_Check(PyList_GetItem(paths, i))
                               ? PyUnicode_AsUTF8AndSize(PyList_GetItem(paths, i), &len) : NULL;
        if (!path) PyErr_Clear();
        size_t got;
        if (path && (size_t)len == strlen(path) && dlk_read_file(&dirs, path, &buf, &cap, &got, max_bytes)) {
            item = PyBytes_FromStringAndSize(buf, (Py_ssize_t)got);
            if (!item) { dlk_dirs_close(&dirs); free(buf); Py_DECREF(out); return NULL; }
        }
        if (!item) { item = Py_None; Py_INCREF(item); }
        PyList_SetItem(out, i, item);
    }
    dlk_dirs_close(&dirs);
    free(buf);
    return out;
}

/* ------------------------------------------------------------------ the module */

/* ------------------------------------------------------------------ batchnorm.c */

static PyObject *py_batchnorm_forward_train(PyObject *self, PyObject *args)
{
    Py_buffer out, x, xn, mean, var, rmean, rvar, scales, biases;
    int batch, n, size;
    if (!PyArg_ParseTuple(args, "w*w*w*w*w*w*w*y*y*iii", &out, &x, &xn, &mean, &var, &rmean, &rvar, &scales,
                          &biases, &batch, &n, &size))
        return NULL;
    int ok = (batch > 0 && n > 0 && size > 0) || fail("_dlk.batchnorm_forward_train: bad size");
    long long total = (long long)batch * n * size;
    ok = ok && NEED_F(out, total, "batchnorm output") && NEED_F(x, total, "batchnorm x") &&
         NEED_F(xn, total, "batchnorm x_norm") && NEED_F(mean, n, "batchnorm mean") &&
         NEED_F(var, n, "batchnorm variance") && NEED_F(rmean, n, "batchnorm rolling mean") &&
         NEED_F(rvar, n, "batchnorm rolling variance") && NEED_F(scales, n, "batchnorm scales") &&
         NEED_F(biases, n, "batchnorm biases");
    if (ok)
        dlk_batchnorm_forward_train(F32(out), F32(x), F32(xn), F32(mean), F32(var), F32(rmean), F32(rvar),
                                    F32(scales), F32(biases), batch, n, size);
    RELEASE(&out, &x, &xn, &mean, &var, &rmean, &rvar, &scales, &biases);
    return none_if(ok);
}

static PyObject *py_batchnorm_backward(PyObject *self, PyObject *args)
{
    Py_buffer x, xn, delta, mean, var, scales, supd, bupd, md, vd;
    int batch, n, size;
    if (!PyArg_ParseTuple(args, "y*y*w*y*y*y*w*w*w*w*iii", &x, &xn, &delta, &mean, &var, &scales, &supd, &bupd,
                          &md, &vd, &batch, &n, &size))
        return NULL;
    int ok = (batch > 0 && n > 0 && size > 0) || fail("_dlk.batchnorm_backward: bad size");
    long long total = (long long)batch * n * size;
    ok = ok && NEED_F(x, total, "batchnorm x") && NEED_F(xn, total, "batchnorm x_norm") &&
         NEED_F(delta, total, "batchnorm delta") && NEED_F(mean, n, "batchnorm mean") &&
         NEED_F(var, n, "batchnorm variance") && NEED_F(scales, n, "batchnorm scales") &&
         NEED_F(supd, n, "batchnorm scale updates") && NEED_F(bupd, n, "batchnorm bias updates") &&
         NEED_F(md, n, "batchnorm mean delta") && NEED_F(vd, n, "batchnorm variance delta");
    if (ok)
        dlk_batchnorm_backward(F32(x), F32(xn), F32(delta), F32(mean), F32(var), F32(scales), F32(supd), F32(bupd),
                               F32(md), F32(vd), batch, n, size);
    RELEASE(&x, &xn, &delta, &mean, &var, &scales, &supd, &bupd, &md, &vd);
    return none_if(ok);
}

/* ------------------------------------------------------------------ recurrent.c */

static PyObject *py_rnn_mul(PyObject *self, PyObject *args)
{
    Py_buffer x, y;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "ny*w*", &n, &x, &y)) return NULL;
    int ok = NEED_F(x, n, "rnn_mul x") && NEED_F(y, n, "rnn_mul y");
    if (ok) dlk_rnn_mul(n, F32(x), F32(y));
    RELEASE(&x, &y);
    return none_if(ok);
}

static PyObject *py_rnn_weighted_sum(PyObject *self, PyObject *args)
{
    Py_buffer a, b, s, c;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "ny*y*y*w*", &n, &a, &b, &s, &c)) return NULL;
    int ok = NEED_F(a, n, "weighted_sum a") && NEED_F(b, n, "weighted_sum b") && NEED_F(s, n, "weighted_sum s") &&
             NEED_F(c, n, "weighted_sum c");
    if (ok) dlk_rnn_weighted_sum(n, F32(a), F32(b), F32(s), F32(c));
    RELEASE(&a, &b, &s, &c);
    return none_if(ok);
}

/* a writable float buffer or None (then buf stays zeroed and *have 0) */
static int optional_buffer(PyObject *obj, Py_buffer *buf, int *have)
{
    *have = obj != Py_None;
    return !*have || PyObject_GetBuffer(obj, buf, PyBUF_WRITABLE) == 0;
}

static PyObject *py_rnn_weighted_delta(PyObject *self, PyObject *args)
{
    Py_buffer a, b, s, da = {0}, db = {0}, ds, dc;
    PyObject *da_obj, *db_obj;
    Py_ssize_t n;
    int have_da = 0, have_db = 0;
    if (!PyArg_ParseTuple(args, "ny*y*y*OOw*y*", &n, &a, &b, &s, &da_obj, &db_obj, &ds, &dc)) return NULL;
    int ok = optional_buffer(da_obj, &da, &have_da) && optional_buffer(db_obj, &db, &have_db);
    ok = ok && NEED_F(a, n, "weighted_delta a") && NEED_F(b, n, "weighted_delta b") &&
         NEED_F(s, n, "weighted_delta s") && (!have_da || NEED_F(da, n, "weighted_delta da")) &&
         (!have_db || NEED_F(db, n, "weighted_delta db")) && NEED_F(ds, n, "weighted_delta ds") &&
         NEED_F(dc, n, "weighted_delta dc");
    if (ok)
        dlk_rnn_weighted_delta(n, F32(a), F32(b), F32(s), have_da ? F32(da) : NULL, have_db ? F32(db) : NULL, F32(ds),
                               F32(dc));
    RELEASE(&a, &b, &s, &da, &db, &ds, &dc);
    return none_if(ok);
}

static PyObject *py_rnn_mult_add(PyObject *self, PyObject *args)
{
    Py_buffer a, b, c;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "ny*y*w*", &n, &a, &b, &c)) return NULL;
    int ok = NEED_F(a, n, "rnn_mult_add a") && NEED_F(b, n, "rnn_mult_add b") && NEED_F(c, n, "rnn_mult_add c");
    if (ok) dlk_rnn_mult_add(n, F32(a), F32(b), F32(c));
    RELEASE(&a, &b, &c);
    return none_if(ok);
}

/* ------------------------------------------------------------------ robust.c */

/* The float32 buffers of a list of n >= 1 models' tensors, each holding at least len floats:
 * views (n, released by release_list) and their pointers; 0 with the exception set. */
static int acquire_list(PyObject *list, Py_ssize_t len, Py_buffer **views, const float ***ptrs, int *n)
{
    Py_ssize_t count = PyList_Size(list);
    if (count < 1 || count > 1 << 20) return fail("_dlk: the list of models must hold 1 to 2^20 buffers");
    *views = calloc((size_t)count, sizeof **views);
    *ptrs = calloc((size_t)count, sizeof **ptrs);
    if (!*views || !*ptrs) { free(*views); free(*ptrs); PyErr_NoMemory(); return 0; }
    for (Py_ssize_t i = 0; i < count; ++i) {
        if (PyObject_GetBuffer(PyList_GetItem(list, i), &(*views)[i], PyBUF_SIMPLE) < 0 ||
            !NEED_F((*views)[i], len, "model tensor")) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "_dlk: bad model buffer");
            for (Py_ssize_t j = 0; j < i + ((*views)[i].obj != NULL); ++j) PyBuffer_Release(&(*views)[j]);
            free(*views); free(*ptrs);
            return 0;
        }
        (*ptrs)[i] = F32((*views)[i]);
    }
    *n = (int)count;
    return 1;
}

static void release_list(Py_buffer *views, const float **ptrs, int n)
{
    for (int i = 0; i < n; ++i) PyBuffer_Release(&views[i]);
    free(views);
    free(ptrs);
}

static PyObject *py_pair_sqdist(PyObject *self, PyObject *args)
{
    PyObject *list;
    Py_ssize_t len;
    Py_buffer d;
    if (!PyArg_ParseTuple(args, "O!nw*", &PyList_Type, &list, &len, &d)) return NULL;
    Py_buffer *views; const float **ptrs; int n;
    if (!acquire_list(list, len, &views, &ptrs, &n)) { RELEASE(&d); return NULL; }
    int ok = need(&d, (long long)n * n, 8, "pair_sqdist D");
    if (ok) dlk_pair_sqdist(n, ptrs, len, (double *)d.buf);
    release_list(views, ptrs, n);
    RELEASE(&d);
    return none_if(ok);
}

static PyObject *py_column_rule(PyObject *self, PyObject *args)
{
    PyObject *list;
    Py_ssize_t len;
    int rule, param;
    Py_buffer out;
    if (!PyArg_ParseTuple(args, "iO!niw*", &rule, &PyList_Type, &list, &len, &param, &out)) return NULL;
    Py_buffer *views; const float **ptrs; int n;
    if (!acquire_list(list, len, &views, &ptrs, &n)) { RELEASE(&out); return NULL; }
    int ok = NEED_F(out, len, "column_rule out");
    if (ok && (rule < DLK_RULE_MEDIAN || rule > DLK_RULE_CLOSEST)) ok = fail("_dlk: unknown column rule");
    if (ok && rule == DLK_RULE_TRIMMED && (param < 0 || n - 2 * param < 1)) ok = fail("_dlk: trims every value");
    if (ok && rule == DLK_RULE_CLOSEST && (param < 1 || param > n)) ok = fail("_dlk: window outside 1..n");
    if (ok) ok = kernel_ok(dlk_column_rule(rule, n, ptrs, len, param, F32(out)));
    release_list(views, ptrs, n);
    RELEASE(&out);
    return none_if(ok);
}

static PyObject *py_combine(PyObject *self, PyObject *args)
{
    PyObject *list;
    Py_ssize_t len;
    Py_buffer coef, out;
    if (!PyArg_ParseTuple(args, "O!y*nw*", &PyList_Type, &list, &coef, &len, &out)) return NULL;
    Py_buffer *views; const float **ptrs; int n;
    if (!acquire_list(list, len, &views, &ptrs, &n)) { RELEASE(&coef, &out); return NULL; }
    int ok = need(&coef, n, 8, "combine coefficients") && NEED_F(out, len, "combine out");
    if (ok) dlk_combine(n, ptrs, (const double *)coef.buf, len, F32(out));
    release_list(views, ptrs, n);
    RELEASE(&coef, &out);
    return none_if(ok);
}

static PyObject *py_clip_update(PyObject *self, PyObject *args)
{
    Py_buffer g, x;
    Py_ssize_t n;
    float s;
    if (!PyArg_ParseTuple(args, "nfy*w*", &n, &s, &g, &x)) return NULL;
    int ok = NEED_F(g, n, "clip_update g") && NEED_F(x, n, "clip_update x");
    if (ok) dlk_clip_update(n, s, F32(g), F32(x));
    RELEASE(&g, &x);
    return none_if(ok);
}

static PyObject *py_prox_add(PyObject *self, PyObject *args)
{
    Py_buffer w, g, upd;
    Py_ssize_t n;
    float c;
    if (!PyArg_ParseTuple(args, "nfy*y*w*", &n, &c, &w, &g, &upd)) return NULL;
    int ok = NEED_F(w, n, "prox_add w") && NEED_F(g, n, "prox_add g") && NEED_F(upd, n, "prox_add upd");
    if (ok) dlk_prox_add(n, c, F32(w), F32(g), F32(upd));
    RELEASE(&w, &g, &upd);
    return none_if(ok);
}

static PyObject *py_gauss_add(PyObject *self, PyObject *args)
{
    Py_buffer x, key;
    Py_ssize_t n;
    double std;
    unsigned long long counter;
    if (!PyArg_ParseTuple(args, "w*ndy*K", &x, &n, &std, &key, &counter)) return NULL;
    int ok = NEED_F(x, n, "gauss_add x") && need(&key, 32, 1, "gauss_add key");
    uint64_t next = 0;
    if (ok) next = dlk_gauss_add(F32(x), n, std, U8(key), counter);
    RELEASE(&x, &key);
    if (!ok) return NULL;
    return PyLong_FromUnsignedLongLong(next);
}

static PyObject *py_fedopt(PyObject *self, PyObject *args)
{
    Py_buffer x, a, m, v, p;
    Py_ssize_t n;
    int kind;
    if (!PyArg_ParseTuple(args, "inw*y*w*w*y*", &kind, &n, &x, &a, &m, &v, &p)) return NULL;
    int ok = NEED_F(x, n, "fedopt x") && NEED_F(a, n, "fedopt a") && NEED_F(m, n, "fedopt m") &&
             NEED_F(v, n, "fedopt v") && need(&p, 4, 8, "fedopt parameters");
    if (ok && (kind < DLK_OPT_AVGM || kind > DLK_OPT_ADAGRAD)) ok = fail("_dlk: unknown optimiser");
    if (ok) dlk_fedopt(kind, n, F32(x), F32(a), F32(m), F32(v), (const double *)p.buf);
    RELEASE(&x, &a, &m, &v, &p);
    return none_if(ok);
}

/* ------------------------------------------------------------------ fast mode (fast.h) */

static PyObject *py_fast_supported(PyObject *self, PyObject *args)
{
    return PyBool_FromLong(dlk_fast_supported());
}

static PyObject *py_set_fast_mode(PyObject *self, PyObject *args)
{
    int on;
    if (!PyArg_ParseTuple(args, "p", &on)) return NULL;
    if (on && !dlk_fast_supported()) {
        PyErr_SetString(PyExc_RuntimeError, "_dlk.set_fast_mode: this CPU has no fused multiply-add (FMA)");
        return NULL;
    }
    int was = dlk_fast_mode;
    dlk_fast_mode = on;
    return PyBool_FromLong(was);
}

/* winograd_weights(W, n, c, m, U): U = the F(m x m, 3 x 3) transform of n x c 3x3 kernels */
static PyObject *py_winograd_weights(PyObject *self, PyObject *args)
{
    Py_buffer W, U;
    int n, c, m;
    if (!PyArg_ParseTuple(args, "y*iiiw*", &W, &n, &c, &m, &U)) return NULL;
    int ok = (n > 0 && c > 0 && c <= DLK_WINOGRAD_MAX_C && (m == 2 || m == 4)) || fail("_dlk.winograd_weights: bad geometry");
    ok = ok && NEED_F(W, (long long)n * c * 9, "winograd weights") &&
         NEED_F(U, dlk_winograd_weights_size(n, c, m), "winograd transformed weights");
    if (ok) dlk_winograd_weights(F32(W), n, c, m, F32(U));
    RELEASE(&W, &U);
    return none_if(ok);
}

/* conv_winograd(in, batch, c, h, w, U, n, pad, m, fused, out): 3x3 stride-1 convolution (fast mode);
 * U: the transformed weights, or (fused) the 3x3 weights themselves */
static PyObject *py_conv_winograd(PyObject *self, PyObject *args)
{
    Py_buffer in, U, out;
    int batch, c, h, w, n, pad, m, fused;
    if (!PyArg_ParseTuple(args, "y*iiiiy*iiipw*", &in, &batch, &c, &h, &w, &U, &n, &pad, &m, &fused, &out))
        return NULL;
    int oh = h + 2 * pad - 2, ow = w + 2 * pad - 2, ok;
    if (batch < 0 || c <= 0 || c > DLK_WINOGRAD_MAX_C || h <= 0 || w <= 0 || n <= 0 || pad < 0 || pad > 2 ||
        (m != 2 && m != 4)) {
        ok = fail("_dlk.conv_winograd: bad geometry");
    } else if (oh <= 0 || ow <= 0) {
        ok = fail("_dlk.conv_winograd: kernel larger than image");
    } else {
        ok = NEED_F(in, batch * (long long)c * h * w, "winograd input") &&
             NEED_F(U, fused ? (long long)n * c * 9 : dlk_winograd_weights_size(n, c, m), "winograd weights") &&
             NEED_F(out, batch * (long long)n * oh * ow, "winograd output") &&
             kernel_ok((fused ? dlk_conv_winograd_fused : dlk_conv_winograd)(F32(in), batch, c, h, w, F32(U), n, pad,
                                                                            m, F32(out)));
    }
    RELEASE(&in, &U, &out);
    return none_if(ok);
}

static PyObject *py_fast_mode(PyObject *self, PyObject *args)
{
    return PyBool_FromLong(dlk_fast_mode);
}

static PyMethodDef dlk_methods[] = {
    {"gemm", py_gemm, METH_VARARGS, "gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc)"},
    {"im2col", py_im2col, METH_VARARGS, "im2col(im, c, h, w, ksize, stride, pad, col)"},
    {"col2im", py_col2im, METH_VARARGS, "col2im(col, c, h, w, ksize, stride, pad, im)"},
    {"add_bias", py_add_bias, METH_VARARGS, "add_bias(out, biases, batch, n, size)"},
    {"activate", py_activate, METH_VARARGS, "activate(x, n, act)"},
    {"gradient", py_gradient, METH_VARARGS, "gradient(y, n, act, delta)"},
    {"batchnorm_infer", py_batchnorm_infer, METH_VARARGS,
     "batchnorm_infer(x, mean, var, scales, biases, batch, n, size)"},
    {"maxpool_forward", py_maxpool_forward, METH_VARARGS,
     "maxpool_forward(in, batch, c, h, w, size, stride, pad, out, indexes)"},
    {"maxpool_backward", py_maxpool_backward, METH_VARARGS,
     "maxpool_backward(out_delta, indexes, n, in_delta, n_in)"},
    {"avgpool_forward", py_avgpool_forward, METH_VARARGS,
     "avgpool_forward(in, planes, n, out): out[p] = mean of in[p][0 .. n-1]"},
    {"avgpool_backward", py_avgpool_backward, METH_VARARGS,
     "avgpool_backward(out_delta, planes, n, in_delta): in_delta[p][i] += out_delta[p] / n"},
    {"shortcut", py_shortcut, METH_VARARGS,
     "shortcut(batch, w1, h1, c1, add, w2, h2, c2, s1, s2, out): out = s1*out + s2*add (Darknet shortcut_cpu)"},
    {"softmax", py_softmax, METH_VARARGS, "softmax(in, batch, n, temperature, out)"},
    {"axpy", py_axpy, METH_VARARGS, "axpy(n, a, x, y): y += a*x"},
    {"scal", py_scal, METH_VARARGS, "scal(n, a, x): x *= a"},
    {"fill", py_fill, METH_VARARGS, "fill(n, a, x): x = a"},
    {"pixels_to_chw", py_pixels_to_chw, METH_VARARGS, "pixels_to_chw(src, width, height, comps, out)"},
    {"png_unfilter", py_png_unfilter, METH_VARARGS, "png_unfilter(src, height, rowbytes, bpp, out)"},
    {"png_expand_palette", py_png_expand_palette, METH_VARARGS,
     "png_expand_palette(indexes, palette, n, comps, out)"},
    {"conv2d_direct", py_conv2d_direct, METH_VARARGS,
     "conv2d_direct(in, batch, c, h, w, weights, n, size, pad, out, workspace): stride-1 convolution"},
    {"conv2d_direct_workspace", py_conv2d_direct_workspace, METH_VARARGS,
     "conv2d_direct_workspace(c, h, w, size, pad) -> floats of workspace conv2d_direct needs"},
    {"backward_bias", py_backward_bias, METH_VARARGS, "backward_bias(bias_updates, delta, batch, n, size)"},
    {"dropout_forward", py_dropout_forward, METH_VARARGS,
     "dropout_forward(x, n, probability, scale, rand, state) -> new rand() state"},
    {"dropout_backward", py_dropout_backward, METH_VARARGS, "dropout_backward(delta, n, probability, scale, rand)"},
    {"softmax_cost", py_softmax_cost, METH_VARARGS, "softmax_cost(y, truth, delta, n) -> cross-entropy sum"},
    {"sse_cost", py_sse_cost, METH_VARARGS, "sse_cost(x, truth, delta, n) -> sum of squares"},
    {"jpeg_decode_scan", py_jpeg_decode_scan, METH_VARARGS,
     "jpeg_decode_scan(data, start, params, tables, coeffs) -> end offset or negative error code"},
    {"jpeg_idct", py_jpeg_idct, METH_VARARGS,
     "jpeg_idct(coeffs, first, blocks_w, blocks_h, quant, plane, plane_first): dequantise + stb IDCT"},
    {"jpeg_color", py_jpeg_color, METH_VARARGS,
     "jpeg_color(planes, params, width, height, mode, out): stb upsampling + colour conversion"},
    {"jpeg_encode_scan", py_jpeg_encode_scan, METH_VARARGS,
     "jpeg_encode_scan(pixels, width, height, comp, ytable, uvtable, huffman) -> entropy-coded bytes"},
    {"resize_image", py_resize_image, METH_VARARGS,
     "resize_image(src, sw, sh, c, dst, dw, dh, part): Darknet's bilinear resize (part: dw*sh*c floats)"},
    {"image_paste", py_image_paste, METH_VARARGS,
     "image_paste(src, sw, sh, c, dst, dw, dh, dx, dy, multiply): embed_image / composite_image"},
    {"upsample", py_upsample, METH_VARARGS,
     "upsample(in, batch, c, h, w, stride, scale, out, forward): nearest-neighbour up (or sum back)"},
    {"draw_box_width", py_draw_box_width, METH_VARARGS,
     "draw_box_width(im, w, h, x1, y1, x2, y2, width, r, g, b)"},
    {"draw_label", py_draw_label, METH_VARARGS, "draw_label(im, w, h, label, lw, lh, row, col, r, g, b)"},
    {"chw_to_pixels", py_chw_to_pixels, METH_VARARGS, "chw_to_pixels(im, w, h, c, out): bytes (uchar)(255*v)"},
    {"nms_sort", py_nms_sort, METH_VARARGS,
     "nms_sort(boxes, objectness, probs, n, classes, thresh, order) -> boxes taking part: do_nms_sort"},
#ifdef DLK_TEST_HOOKS
    {"musl_sort_desc", py_musl_sort_desc, METH_VARARGS,
     "musl_sort_desc(keys, n, order): musl qsort (smoothsort) order of keys, descending (native test build only)"},
#endif
    {"yolo_candidates", py_yolo_candidates, METH_VARARGS,
     "yolo_candidates(output, w, h, n, classes, anchors, netw, neth, thresh, boxes, objectness, probs) -> count"},
    {"conv_forward", py_conv_forward, METH_VARARGS,
     "conv_forward(in, batch, c, h, w, weights, n, size, pad, biases, act, out): stride-1 conv + bias + act"},
    {"conv_backward", py_conv_backward, METH_VARARGS,
     "conv_backward(in, batch, c, h, w, out, delta, n, size, pad, act, weights, bias_upd, weight_upd, "
     "prev_delta|None)"},
    {"maxpool_forward_2x2", py_maxpool_forward_2x2, METH_VARARGS,
     "maxpool_forward_2x2(in, planes, h, w, out, indexes|None): size 2 stride 2, every window inside"},
    {"connected_backward", py_connected_backward, METH_VARARGS,
     "connected_backward(in, batch, inputs, out, delta, outputs, act, weights, bias_upd|None, weight_upd, "
     "prev_delta|None)"},
    {"sgd_update", py_sgd_update, METH_VARARGS,
     "sgd_update(biases, bias_upd, weights, weight_upd, step, momentum, decay)"},
    {"rand_uniform_fill", py_rand_uniform_fill, METH_VARARGS,
     "rand_uniform_fill(out, n, a, b, scale, state) -> state"},
    {"rand_normal_fill", py_rand_normal_fill, METH_VARARGS,
     "rand_normal_fill(out, n, scale, state, spare) -> (state, spare)"},
    {"rand_below", py_rand_below, METH_VARARGS, "rand_below(n, m, state) -> (state, [rand() % m, ...])"},
    {"png_load_chw", py_png_load_chw, METH_VARARGS,
     "png_load_chw(data, width, height, out) -> True, or False: not a plain 8-bit PNG of that size"},
    {"png_load_rows", py_png_load_rows, METH_VARARGS,
     "png_load_rows(files, width, height, out) -> [rows png_load_chw did not take]"},
    {"read_files", py_read_files, METH_VARARGS, "read_files(paths, max_bytes=-1) -> [bytes, or None where stat/open/pread failed, not a regular file or too long]"},
    {"cost_forward", py_cost_forward, METH_VARARGS, "cost_forward(type, x, truth, delta, err, n) -> cost"},
    {"logistic_x_ent", py_logistic_x_ent, METH_VARARGS, "logistic_x_ent(p, truth, delta, err, n) -> cost"},
    {"l2norm_forward", py_l2norm_forward, METH_VARARGS, "l2norm_forward(in, batch, c, spatial, out)"},
    {"lrn_forward", py_lrn_forward, METH_VARARGS,
     "lrn_forward(in, batch, c, spatial, size, alpha, beta, kappa, squared, norms, out)"},
    {"lrn_backward", py_lrn_backward, METH_VARARGS, "lrn_backward(norms, delta, n, beta, prev_delta)"},
    {"batchnorm_forward_train", py_batchnorm_forward_train, METH_VARARGS,
     "batchnorm_forward_train(out, x, x_norm, mean, var, rolling_mean, rolling_var, scales, biases, batch, n, size)"},
    {"batchnorm_backward", py_batchnorm_backward, METH_VARARGS,
     "batchnorm_backward(x, x_norm, delta, mean, var, scales, scale_upd, bias_upd, mean_delta, var_delta, batch, n, "
     "size)"},
    {"rnn_mul", py_rnn_mul, METH_VARARGS, "rnn_mul(n, x, y): y *= x"},
    {"rnn_weighted_sum", py_rnn_weighted_sum, METH_VARARGS, "rnn_weighted_sum(n, a, b, s, c): c = s*a + (1-s)*b"},
    {"rnn_weighted_delta", py_rnn_weighted_delta, METH_VARARGS,
     "rnn_weighted_delta(n, a, b, s, da|None, db|None, ds, dc): the deltas of weighted_sum"},
    {"rnn_mult_add", py_rnn_mult_add, METH_VARARGS, "rnn_mult_add(n, a, b, c): c += a*b"},
    {"reorg", py_reorg, METH_VARARGS, "reorg(x, w, h, c, batch, stride, forward, out): Darknet reorg_cpu"},
    {"flatten", py_flatten, METH_VARARGS, "flatten(x, size, layers, batch, forward, out): Darknet flatten"},
    {"crop", py_crop, METH_VARARGS, "crop(in, batch, c, h, w, out_h, out_w, dh, dw, flip, scale, trans, out)"},
    {"softmax_strided", py_softmax_strided, METH_VARARGS,
     "softmax_strided(in, n, batch, batch_offset, groups, group_offset, stride, temp, out): Darknet softmax_cpu"},
    {"region_boxes", py_region_boxes, METH_VARARGS,
     "region_boxes(output, w, h, n, classes, coords, background, biases, thresh, parent, group_size, group_offset,"
     " child, tree_thresh, boxes, objectness, probs)"},
    {"detection_boxes", py_detection_boxes, METH_VARARGS,
     "detection_boxes(output, side, n, classes, sqrt, w, h, thresh, boxes, objectness, probs)"},
    {"region_delta", py_region_delta, METH_VARARGS,
     "region_delta(output, delta, batch, w, h, n, classes, coords, biases, truth, thresh, scales, rescore, background,"
     " bias_match, softmax, seen, map, parent, group, group_size, group_offset, stats): forward_region_layer training"},
    {"local_forward", py_local_forward, METH_VARARGS,
     "local_forward(in, batch, c, h, w, size, stride, pad, n, weights, biases, out, workspace)"},
    {"local_backward", py_local_backward, METH_VARARGS,
     "local_backward(in, batch, c, h, w, size, stride, pad, n, weights, delta, bias_upd, weight_upd, prev|None,"
     " workspace)"},
    {"yolo_delta", py_yolo_delta, METH_VARARGS,
     "yolo_delta(output, delta, batch, w, h, n, classes, mask, total, biases, netw, neth, truth, max_boxes,"
     " ignore_thresh, truth_thresh, stats): forward_yolo_layer training"},
    {"pair_sqdist", py_pair_sqdist, METH_VARARGS, "pair_sqdist(models, len, D): D[i,j] += |x_i - x_j|^2 (double)"},
    {"column_rule", py_column_rule, METH_VARARGS, "column_rule(rule, models, len, param, out): median, trimmed, closest"},
    {"combine", py_combine, METH_VARARGS, "combine(models, coefs, len, out): out = sum c_i x_i (double)"},
    {"clip_update", py_clip_update, METH_VARARGS, "clip_update(n, s, g, x): x = g + (x - g) * s"},
    {"prox_add", py_prox_add, METH_VARARGS, "prox_add(n, c, w, g, upd): upd += c * (w - g)"},
    {"gauss_add", py_gauss_add, METH_VARARGS, "gauss_add(x, n, std, key, counter) -> counter: ChaCha20 noise"},
    {"fedopt", py_fedopt, METH_VARARGS, "fedopt(kind, n, x, a, m, v, params): a server-optimiser step"},
    {"fast_supported", py_fast_supported, METH_NOARGS, "fast_supported() -> bool: the fast kernels can run here"},
    {"set_fast_mode", py_set_fast_mode, METH_VARARGS,
     "set_fast_mode(on) -> bool: the fast kernels (fused multiply-add) on or off; returns the previous mode"},
    {"fast_mode", py_fast_mode, METH_NOARGS, "fast_mode() -> bool: whether the fast kernels are on"},
    {"winograd_weights", py_winograd_weights, METH_VARARGS,
     "winograd_weights(W, n, c, m, U): U = the F(m x m, 3 x 3) transform of n x c 3x3 kernels"},
    {"conv_winograd", py_conv_winograd, METH_VARARGS,
     "conv_winograd(in, batch, c, h, w, U, n, pad, m, fused, out): 3x3 stride-1 convolution, Winograd F(m x m, 3 x 3)"},
    {NULL, NULL, 0, NULL}
};

static struct PyModuleDef dlk_module = {PyModuleDef_HEAD_INIT, "_dlk", "dl-server kernels", -1, dlk_methods};

PyMODINIT_FUNC PyInit__dlk(void)
{
    PyObject *m = PyModule_Create(&dlk_module);
    if (m == NULL) return NULL;
    static const struct { const char *name; long value; } constants[] = {
        {"ACT_LINEAR", ACT_LINEAR}, {"ACT_RELU", ACT_RELU}, {"ACT_LEAKY", ACT_LEAKY}, {"ACT_LOGISTIC", ACT_LOGISTIC},
        {"ACT_RELIE", ACT_RELIE}, {"ACT_RAMP", ACT_RAMP}, {"ACT_TANH", ACT_TANH}, {"ACT_PLSE", ACT_PLSE}, {"ACT_ELU", ACT_ELU}, {"ACT_LOGGY", ACT_LOGGY}, {"ACT_STAIR", ACT_STAIR}, {"ACT_HARDTAN", ACT_HARDTAN}, {"ACT_LHTAN", ACT_LHTAN}, {"ACT_SELU", ACT_SELU},
        {"COST_L2", COST_L2}, {"COST_MASKED", COST_MASKED}, {"COST_SMOOTH", COST_SMOOTH}, {"COST_L1", COST_L1},
        {"JPEG_GRAY", JPEG_GRAY}, {"JPEG_YCBCR", JPEG_YCBCR}, {"JPEG_RGB", JPEG_RGB},
        {"JPEG_CMYK", JPEG_CMYK}, {"JPEG_YCCK", JPEG_YCCK},
        {"JPEG_ERR_HUFFMAN", JPEG_ERR_HUFFMAN}, {"JPEG_ERR_EOF", JPEG_ERR_EOF}, {"JPEG_ERR_SHORT", JPEG_ERR_SHORT},
        {"JPEG_ERR_RESTART", JPEG_ERR_RESTART}, {"JPEG_ERR_DC", JPEG_ERR_DC}, {"JPEG_ERR_REFINE", JPEG_ERR_REFINE},
        {"JPEG_ERR_TRAILING", JPEG_ERR_TRAILING},
        {"RULE_MEDIAN", DLK_RULE_MEDIAN}, {"RULE_TRIMMED", DLK_RULE_TRIMMED}, {"RULE_CLOSEST", DLK_RULE_CLOSEST},
        {"OPT_AVGM", DLK_OPT_AVGM}, {"OPT_ADAM", DLK_OPT_ADAM}, {"OPT_YOGI", DLK_OPT_YOGI},
        {"OPT_ADAGRAD", DLK_OPT_ADAGRAD},
    };
    for (size_t i = 0; i < sizeof constants / sizeof constants[0]; ++i)
        if (PyModule_AddIntConstant(m, constants[i].name, constants[i].value) < 0) { Py_DECREF(m); return NULL; }
    return m;
}
