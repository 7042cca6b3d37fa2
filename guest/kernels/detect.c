/* Detection kernels (Darknet image.c, blas.c upsample_cpu): planar float32 images,
 * data[(ch*h + y)*w + x].
 *
 *   resize_image   separable bilinear, "align corners" (spec §7.2), in float32:
 *                  w_scale = f32((sw-1)/(dw-1)), h_scale likewise (0 when the side is 1)
 *                  pass 1 (into part, dw x sh): col == dw-1 or sw == 1 -> p[sw-1], else
 *                    sx = col*w_scale, ix = (int)sx, dx = sx-ix, (1-dx)*p[ix] + dx*p[ix+1]
 *                  pass 2: sy = r*h_scale, iy = (int)sy, dy = sy-iy, out = (1-dy)*part[iy];
 *                    unless r == dh-1 or sh == 1: out += dy*part[iy+1] (a separate add)
 *   image_paste    embed_image (copy) or composite_image (multiply) of src at (dx, dy)
 *                  into dst; pixels falling outside dst are dropped
 *   upsample       forward: out[c][y][x] = scale*in[c][y/s][x/s]  (nearest neighbour)
 *                  backward (or downsample forward): in[c][y/s][x/s] += scale*out[c][y][x]
 *   draw_box_width for t in 0..width-1: a 1-pixel rectangle (x1+t, y1+t)-(x2-t, y2-t),
 *                  corners clamped into the image, rows y1, y2 then columns x1, x2 set to
 *                  (r, g, b), ends inclusive
 *   draw_label     label (one plane) at row r (r - label_h when that is >= 0), column c:
 *                  im[k] = rgb[k]*label, clipped to the image
 *   chw_to_pixels  interleaved bytes (unsigned char)(255*v), truncated (Darknet save_image) */
#include "dlk_common.h"

static PyObject *dlk_resize_image(PyObject *self, PyObject *args)
{
    Py_buffer src, dst, part;
    int sw, sh, c, dw, dh;
    if (!PyArg_ParseTuple(args, "y*iiiw*iiw*", &src, &sw, &sh, &c, &dst, &dw, &dh, &part)) return NULL;
    PyObject *result = NULL;
    if (sw <= 0 || sh <= 0 || c <= 0 || dw < 0 || dh < 0) {
        PyErr_SetString(PyExc_ValueError, "_dlk.resize_image: bad geometry"); goto done;
    }
    if (!NEED_F(src, (long long)sw * sh * c, "resize source") || !NEED_F(dst, (long long)dw * dh * c, "resize output") ||
        !NEED_F(part, (long long)dw * sh * c, "resize workspace")) goto done;
    const float *in = F32(src);
    float *out = F32(dst), *tmp = F32(part);
    float w_scale = dw > 1 ? (float)(sw - 1) / (float)(dw - 1) : 0.0f;
    float h_scale = dh > 1 ? (float)(sh - 1) / (float)(dh - 1) : 0.0f;
    for (int k = 0; k < c; ++k)
        for (int r = 0; r < sh; ++r) {
            const float *row = in + ((long long)k * sh + r) * sw;
            float *o = tmp + ((long long)k * sh + r) * dw;
            for (int col = 0; col < dw; ++col) {
                float val;
                if (col == dw - 1 || sw == 1) {
                    val = row[sw - 1];
                } else {
                    float sx = (float)col * w_scale;
                    int ix = (int)sx;
                    float dx = sx - (float)ix;
                    float a = (1.0f - dx) * row[ix];
                    float b = dx * row[ix + 1];
                    val = a + b;
                }
                o[col] = val;
            }
        }
    for (int k = 0; k < c; ++k)
        for (int r = 0; r < dh; ++r) {
            float sy = (float)r * h_scale;
            int iy = (int)sy;
            float dy = sy - (float)iy;
            float wy = 1.0f - dy;
            const float *p0 = tmp + ((long long)k * sh + iy) * dw;
            float *o = out + ((long long)k * dh + r) * dw;
            for (int col = 0; col < dw; ++col) o[col] = wy * p0[col];
            if (r == dh - 1 || sh == 1) continue;
            const float *p1 = p0 + dw;
            for (int col = 0; col < dw; ++col) {
                float v = dy * p1[col];
                o[col] = o[col] + v;
            }
        }
    result = Py_None; Py_INCREF(result);
done:
    PyBuffer_Release(&src); PyBuffer_Release(&dst); PyBuffer_Release(&part);
    return result;
}

static PyObject *dlk_image_paste(PyObject *self, PyObject *args)
{
    Py_buffer src, dst;
    int sw, sh, c, dw, dh, dx, dy, multiply;
    if (!PyArg_ParseTuple(args, "y*iiiw*iiiip", &src, &sw, &sh, &c, &dst, &dw, &dh, &dx, &dy, &multiply))
        return NULL;
    PyObject *result = NULL;
    if (sw < 0 || sh < 0 || c < 0 || dw < 0 || dh < 0) {
        PyErr_SetString(PyExc_ValueError, "_dlk.image_paste: bad geometry"); goto done;
    }
    if (!NEED_F(src, (long long)sw * sh * c, "paste source") || !NEED_F(dst, (long long)dw * dh * c, "paste target"))
        goto done;
    const float *in = F32(src);
    float *out = F32(dst);
    int x0 = dx < 0 ? -dx : 0, x1 = sw < dw - dx ? sw : dw - dx;
    for (int k = 0; k < c; ++k)
        for (int y = 0; y < sh; ++y) {
            int ty = dy + y;
            if (ty < 0 || ty >= dh) continue;
            const float *s = in + ((long long)k * sh + y) * sw;
            float *t = out + ((long long)k * dh + ty) * dw;
            if (multiply)
                for (int x = x0; x < x1; ++x) t[dx + x] = s[x] * t[dx + x];
            else
                for (int x = x0; x < x1; ++x) t[dx + x] = s[x];
        }
    result = Py_None; Py_INCREF(result);
done:
    PyBuffer_Release(&src); PyBuffer_Release(&dst);
    return result;
}

static PyObject *dlk_upsample(PyObject *self, PyObject *args)
{
    Py_buffer in, out;
    int batch, c, h, w, stride, forward;
    float scale;
    if (!PyArg_ParseTuple(args, "w*iiiiifw*p", &in, &batch, &c, &h, &w, &stride, &scale, &out, &forward))
        return NULL;
    PyObject *result = NULL;
    if (batch < 0 || c < 0 || h < 0 || w < 0 || stride <= 0) {
        PyErr_SetString(PyExc_ValueError, "_dlk.upsample: bad geometry"); goto done;
    }
    long long n_in = (long long)batch * c * h * w;
    if (!NEED_F(in, n_in, "upsample input") || !NEED_F(out, n_in * stride * stride, "upsample output")) goto done;
    float *src = F32(in), *dst = F32(out);
    int ow = w * stride, oh = h * stride;
    for (long long bc = 0; bc < (long long)batch * c; ++bc) {
        float *plane = src + bc * h * w;
        float *o = dst + bc * oh * ow;
        for (int j = 0; j < oh; ++j) {
            float *row = plane + (j / stride) * w;
            float *orow = o + (long long)j * ow;
            if (forward)
                for (int i = 0; i < ow; ++i) orow[i] = scale * row[i / stride];
            else
                for (int i = 0; i < ow; ++i) row[i / stride] += scale * orow[i];
        }
    }
    result = Py_None; Py_INCREF(result);
done:
    PyBuffer_Release(&in); PyBuffer_Release(&out);
    return result;
}

static void dlk_draw_box(float *a, int w, int h, int x1, int y1, int x2, int y2, const float rgb[3])
{
    if (x1 < 0) x1 = 0;
    if (x1 >= w) x1 = w - 1;
    if (x2 < 0) x2 = 0;
    if (x2 >= w) x2 = w - 1;
    if (y1 < 0) y1 = 0;
    if (y1 >= h) y1 = h - 1;
    if (y2 < 0) y2 = 0;
    if (y2 >= h) y2 = h - 1;
    long long plane = (long long)w * h;
    for (int k = 0; k < 3; ++k) {
        float *p = a + k * plane;
        for (int i = x1; i <= x2; ++i) { p[i + (long long)y1 * w] = rgb[k]; p[i + (long long)y2 * w] = rgb[k]; }
    }
    for (int k = 0; k < 3; ++k) {
        float *p = a + k * plane;
        for (int i = y1; i <= y2; ++i) { p[x1 + (long long)i * w] = rgb[k]; p[x2 + (long long)i * w] = rgb[k]; }
    }
}

static PyObject *dlk_draw_box_width(PyObject *self, PyObject *args)
{
    Py_buffer im;
    int w, h, x1, y1, x2, y2, width;
    float rgb[3];
    if (!PyArg_ParseTuple(args, "w*iiiiiiifff", &im, &w, &h, &x1, &y1, &x2, &y2, &width, &rgb[0], &rgb[1], &rgb[2]))
        return NULL;
    PyObject *result = NULL;
    if (w <= 0 || h <= 0) { PyErr_SetString(PyExc_ValueError, "_dlk.draw_box_width: bad geometry"); goto done; }
    if (!NEED_F(im, 3LL * w * h, "image")) goto done;
    for (int t = 0; t < width; ++t) dlk_draw_box(F32(im), w, h, x1 + t, y1 + t, x2 - t, y2 - t, rgb);
    result = Py_None; Py_INCREF(result);
done:
    PyBuffer_Release(&im);
    return result;
}

static PyObject *dlk_draw_label(PyObject *self, PyObject *args)
{
    Py_buffer im, label;
    int w, h, lw, lh, r, c;
    float rgb[3];
    if (!PyArg_ParseTuple(args, "w*iiy*iiiifff", &im, &w, &h, &label, &lw, &lh, &r, &c, &rgb[0], &rgb[1], &rgb[2]))
        return NULL;
    PyObject *result = NULL;
    if (w <= 0 || h <= 0 || lw < 0 || lh < 0) {
        PyErr_SetString(PyExc_ValueError, "_dlk.draw_label: bad geometry"); goto done;
    }
    if (!NEED_F(im, 3LL * w * h, "image") || !NEED_F(label, (long long)lw * lh, "label")) goto done;
    if (r - lh >= 0) r = r - lh;
    float *a = F32(im);
    const float *l = F32(label);
    long long plane = (long long)w * h;
    for (int j = 0; j < lh && j + r < h; ++j) {
        if (j + r < 0) continue;
        for (int i = 0; i < lw && i + c < w; ++i) {
            if (i + c < 0) continue;
            float v = l[(long long)j * lw + i];
            for (int k = 0; k < 3; ++k) a[k * plane + (long long)(j + r) * w + i + c] = rgb[k] * v;
        }
    }
    result = Py_None; Py_INCREF(result);
done:
    PyBuffer_Release(&im); PyBuffer_Release(&label);
    return result;
}

static PyObject *dlk_chw_to_pixels(PyObject *self, PyObject *args)
{
    Py_buffer im, out;
    int w, h, c;
    if (!PyArg_ParseTuple(args, "y*iiiw*", &im, &w, &h, &c, &out)) return NULL;
    PyObject *result = NULL;
    if (w <= 0 || h <= 0 || c <= 0) { PyErr_SetString(PyExc_ValueError, "_dlk.chw_to_pixels: bad geometry"); goto done; }
    long long plane = (long long)w * h;
    if (!NEED_F(im, plane * c, "image") || !dlk_need(&out, plane * c, 1, "pixels")) goto done;
    const float *src = F32(im);
    unsigned char *dst = (unsigned char *)out.buf;
    for (int k = 0; k < c; ++k)
        for (long long i = 0; i < plane; ++i) {
            float v = 255.0f * src[i + k * plane];
            /* (unsigned char)v is undefined outside 0..255: Darknet's values stay inside [0, 1] */
            dst[i * c + k] = v > 0.0f ? (v < 255.0f ? (unsigned char)v : 255) : 0;
        }
    result = Py_None; Py_INCREF(result);
done:
    PyBuffer_Release(&im); PyBuffer_Release(&out);
    return result;
}

/* do_nms_sort (Darknet box.c) on n boxes (x, y, w, h: centre and size), objectness[n] and
 * probs[n][classes] (zeroed in place where suppressed); order[] receives the final array
 * order as indexes of the input boxes:
 *   1. boxes with objectness == 0 are swapped to the end (they take no further part);
 *   2. for each class k: sort the rest by probs[.][k] descending with musl's qsort (the
 *      comparator is 1 if a < b, -1 if a > b, else 0), then for each i with a non-zero
 *      probability zero probs[j][k] of every later j whose IoU with i is > thresh.
 * The sort is smoothsort as musl (wasi-libc) implements qsort: which of equal keys comes
 * first is that algorithm's, and it decides Darknet's print order. IoU in float32:
 * overlap = min(right) - max(left) per axis, I = ow*oh (0 if either < 0), U = Aa + Ab - I. */

typedef struct { const float *probs; int classes, k; } dlk_nms_key;

static inline int dlk_nms_cmp(const dlk_nms_key *key, int a, int b)
{
    float diff = key->probs[(long long)a * key->classes + key->k] - key->probs[(long long)b * key->classes + key->k];
    if (diff < 0) return 1;
    if (diff > 0) return -1;
    return 0;
}

static inline int dlk_ctz64(uint64_t x) { return x ? __builtin_ctzll(x) : 64; }

/* heap element indexes ar[0..n-1] rotate: ar[0] <- ar[1] <- ... <- ar[n-1] <- old ar[0] */
static void dlk_ss_cycle(int *v, int *ar[], int n)
{
    if (n < 2) return;
    int tmp = *ar[0];
    for (int i = 0; i < n - 1; ++i) *ar[i] = *ar[i + 1];
    *ar[n - 1] = tmp;
}

static void dlk_ss_sift(int *v, int *head, const dlk_nms_key *key, int pshift, const size_t lp[])
{
    int *ar[2 * 64 + 1];
    int i = 1;
    ar[0] = head;
    while (pshift > 1) {
        int *rt = head - 1;
        int *lf = head - 1 - lp[pshift - 2];
        if (dlk_nms_cmp(key, *ar[0], *lf) >= 0 && dlk_nms_cmp(key, *ar[0], *rt) >= 0) break;
        if (dlk_nms_cmp(key, *lf, *rt) >= 0) { ar[i++] = lf; head = lf; pshift -= 1; }
        else { ar[i++] = rt; head = rt; pshift -= 2; }
    }
    dlk_ss_cycle(v, ar, i);
}

static void dlk_ss_trinkle(int *v, int *head, const dlk_nms_key *key, uint64_t p, int pshift, int trusty,
                           const size_t lp[])
{
    int *ar[2 * 64 + 1];
    int i = 1;
    ar[0] = head;
    while (p != 1) {
        int *stepson = head - lp[pshift];
        if (dlk_nms_cmp(key, *stepson, *ar[0]) <= 0) break;
        if (!trusty && pshift > 1) {
            int *rt = head - 1;
            int *lf = head - 1 - lp[pshift - 2];
            if (dlk_nms_cmp(key, *rt, *stepson) >= 0 || dlk_nms_cmp(key, *lf, *stepson) >= 0) break;
        }
        ar[i++] = stepson;
        head = stepson;
        int trail = dlk_ctz64(p - 1);
        p >>= trail;
        pshift += trail;
        trusty = 0;
    }
    if (!trusty) {
        dlk_ss_cycle(v, ar, i);
        dlk_ss_sift(v, head, key, pshift, lp);
    }
}

/* Smoothsort of v[0..n-1] (indexes), descending by key: musl's qsort step for step. */
static void dlk_smoothsort(int *v, size_t n, const dlk_nms_key *key)
{
    size_t lp[96];
    if (n == 0) return;
    int *head = v, *high = v + n - 1;
    size_t i;
    for (lp[0] = lp[1] = 1, i = 2; (lp[i] = lp[i - 2] + lp[i - 1] + 1) < n; i++);
    uint64_t p = 1;
    int pshift = 1;
    while (head < high) {
        if ((p & 3) == 3) {
            dlk_ss_sift(v, head, key, pshift, lp);
            p >>= 2;
            pshift += 2;
        } else {
            if (lp[pshift - 1] >= (size_t)(high - head)) dlk_ss_trinkle(v, head, key, p, pshift, 0, lp);
            else dlk_ss_sift(v, head, key, pshift, lp);
            if (pshift == 1) { p <<= 1; pshift = 0; }
            else { p <<= pshift - 1; pshift = 1; }
        }
        p |= 1;
        head++;
    }
    dlk_ss_trinkle(v, head, key, p, pshift, 0, lp);
    while (pshift != 1 || p != 1) {
        if (pshift <= 1) {
            int trail = dlk_ctz64(p - 1);
            p >>= trail;
            pshift += trail;
        } else {
            p <<= 2;
            pshift -= 2;
            p ^= 7;
            p >>= 1;
            dlk_ss_trinkle(v, head - lp[pshift] - 1, key, p, pshift + 1, 1, lp);
            p <<= 1;
            p |= 1;
            dlk_ss_trinkle(v, head - 1, key, p, pshift, 1, lp);
        }
        head--;
    }
}

static inline float dlk_overlap(float x1, float w1, float x2, float w2)
{
    float l1 = x1 - w1 / 2, l2 = x2 - w2 / 2;
    float left = l1 > l2 ? l1 : l2;
    float r1 = x1 + w1 / 2, r2 = x2 + w2 / 2;
    float right = r1 < r2 ? r1 : r2;
    return right - left;
}

static inline float dlk_box_iou(const float *a, const float *b)
{
    float w = dlk_overlap(a[0], a[2], b[0], b[2]);
    float h = dlk_overlap(a[1], a[3], b[1], b[3]);
    float inter = (w < 0 || h < 0) ? 0 : w * h;
    float uni = a[2] * a[3] + b[2] * b[3] - inter;
    return inter / uni;
}

static PyObject *dlk_nms_sort(PyObject *self, PyObject *args)
{
    Py_buffer boxes, objectness, probs, order;
    int n, classes;
    float thresh;
    if (!PyArg_ParseTuple(args, "y*y*w*iifw*", &boxes, &objectness, &probs, &n, &classes, &thresh, &order))
        return NULL;
    PyObject *result = NULL;
    if (n < 0 || classes < 0) { PyErr_SetString(PyExc_ValueError, "_dlk.nms_sort: negative size"); goto done; }
    if (!NEED_F(boxes, 4LL * n, "boxes") || !NEED_F(objectness, n, "objectness") ||
        !NEED_F(probs, (long long)n * classes, "probs") || !dlk_need(&order, n, 4, "order")) goto done;
    const float *box = F32(boxes), *obj = F32(objectness);
    float *prob = F32(probs);
    int *a = (int *)order.buf;
    for (int i = 0; i < n; ++i) a[i] = i;
    int k = n - 1;
    for (int i = 0; i <= k; ++i) {
        if (obj[a[i]] == 0) {
            int swap = a[i]; a[i] = a[k]; a[k] = swap;
            --k;
            --i;
        }
    }
    int total = k + 1;
    dlk_nms_key key = {prob, classes, 0};
    for (int c = 0; c < classes; ++c) {
        key.k = c;
        dlk_smoothsort(a, (size_t)total, &key);
        for (int i = 0; i < total; ++i) {
            if (prob[(long long)a[i] * classes + c] == 0) continue;
            const float *bi = box + 4LL * a[i];
            for (int j = i + 1; j < total; ++j)
                if (dlk_box_iou(bi, box + 4LL * a[j]) > thresh) prob[(long long)a[j] * classes + c] = 0;
        }
    }
    result = PyLong_FromLong(total);
done:
    PyBuffer_Release(&boxes); PyBuffer_Release(&objectness); PyBuffer_Release(&probs); PyBuffer_Release(&order);
    return result;
}

/* Smoothsort (musl qsort) of n float keys, descending, Darknet's comparator: order[i] =
 * index of the key at position i (for tests of the sort alone). */
static PyObject *dlk_musl_sort_desc(PyObject *self, PyObject *args)
{
    Py_buffer keys, order;
    int n;
    if (!PyArg_ParseTuple(args, "y*iw*", &keys, &n, &order)) return NULL;
    PyObject *result = NULL;
    if (n < 0) { PyErr_SetString(PyExc_ValueError, "_dlk.musl_sort_desc: negative size"); goto done; }
    if (!NEED_F(keys, n, "keys") || !dlk_need(&order, n, 4, "order")) goto done;
    int *a = (int *)order.buf;
    for (int i = 0; i < n; ++i) a[i] = i;
    dlk_nms_key key = {F32(keys), 1, 0};
    dlk_smoothsort(a, (size_t)n, &key);
    result = Py_None; Py_INCREF(result);
done:
    PyBuffer_Release(&keys); PyBuffer_Release(&order);
    return result;
}

/* get_yolo_detections (Darknet yolo_layer.c) before correct_yolo_boxes: the candidates of
 * one yolo layer (batch row 0) whose objectness > thresh, cell i = 0..w*h-1 outer, anchor
 * slot a inner; entry e of (a, cell) at out[(a*(classes+5) + e)*w*h + i].
 *   box = ((col + x)/w, (row + y)/h, f32(exp(tw)*anchor_w/netw), f32(exp(th)*anchor_h/neth))
 *   probs[j] = obj*class_j if that is > thresh, else 0
 * anchors[2a], anchors[2a+1]: the anchor of slot a (biases[2*mask[a]], biases[2*mask[a]+1]).
 * Returns the number of candidates written to boxes (4 each), objectness, probs (classes each). */
static PyObject *dlk_yolo_candidates(PyObject *self, PyObject *args)
{
    Py_buffer output, anchors, boxes, objectness, probs;
    int w, h, n, classes, netw, neth;
    float thresh;
    if (!PyArg_ParseTuple(args, "y*iiiiy*iifw*w*w*", &output, &w, &h, &n, &classes, &anchors, &netw, &neth,
                          &thresh, &boxes, &objectness, &probs))
        return NULL;
    PyObject *result = NULL;
    if (w <= 0 || h <= 0 || n < 0 || classes < 0 || netw <= 0 || neth <= 0) {
        PyErr_SetString(PyExc_ValueError, "_dlk.yolo_candidates: bad geometry"); goto done;
    }
    long long hw = (long long)w * h, most = hw * n;
    if (!NEED_F(output, most * (classes + 5), "yolo output") || !NEED_F(anchors, 2LL * n, "anchors") ||
        !NEED_F(boxes, 4 * most, "boxes") || !NEED_F(objectness, most, "objectness") ||
        !NEED_F(probs, most * classes, "probs")) goto done;
    const float *out = F32(output), *anchor = F32(anchors);
    float *box = F32(boxes), *obj = F32(objectness), *prob = F32(probs);
    long long count = 0;
    for (long long i = 0; i < hw; ++i) {
        int row = (int)(i / w), col = (int)(i % w);
        for (int a = 0; a < n; ++a) {
            const float *e = out + (long long)a * (classes + 5) * hw + i;
            float objness = e[4 * hw];
            if (objness <= thresh) continue;
            float *b = box + 4 * count;
            b[0] = (col + e[0]) / w;
            b[1] = (row + e[hw]) / h;
            b[2] = (float)(exp(e[2 * hw]) * anchor[2 * a] / netw);
            b[3] = (float)(exp(e[3 * hw]) * anchor[2 * a + 1] / neth);
            obj[count] = objness;
            float *p = prob + count * classes;
            for (int j = 0; j < classes; ++j) {
                float v = objness * e[(5 + j) * hw];
                p[j] = v > thresh ? v : 0;
            }
            ++count;
        }
    }
    result = PyLong_FromLongLong(count);
done:
    PyBuffer_Release(&output); PyBuffer_Release(&anchors); PyBuffer_Release(&boxes);
    PyBuffer_Release(&objectness); PyBuffer_Release(&probs);
    return result;
}
