/* YOLO detection (Darknet yolo_layer.c, box.c): the candidate boxes of a yolo layer, and
 * non-maximum suppression in Darknet's order.
 *
 * yolo_candidates -- get_yolo_detections before correct_yolo_boxes: the candidates of
 * one yolo layer (batch row 0) whose objectness > thresh, cell i = 0..w*h-1 outer, anchor
 * slot a inner; entry e of (a, cell) at out[(a*(classes+5) + e)*w*h + i].
 *   box = ((col + x)/w, (row + y)/h, f32(exp(tw)*anchor_w/netw), f32(exp(th)*anchor_h/neth))
 *   probs[j] = obj*class_j if that is > thresh, else 0
 * anchors[2a], anchors[2a+1]: the anchor of slot a (biases[2*mask[a]], biases[2*mask[a]+1]).
 * Returns the number of candidates written to boxes (4 each), objectness, probs (classes each).
 *
 * nms_sort -- do_nms_sort (Darknet box.c) on n boxes (x, y, w, h: centre and size), objectness[n] and
 * probs[n][classes] (zeroed in place where suppressed); order[] receives the final array
 * order as indexes of the input boxes:
 *   1. boxes with objectness == 0 are swapped to the end (they take no further part);
 *   2. for each class k: sort the rest by probs[.][k] descending with musl's qsort (the
 *      comparator is 1 if a < b, -1 if a > b, else 0), then for each i with a non-zero
 *      probability zero probs[j][k] of every later j whose IoU with i is > thresh.
 * The sort is smoothsort as musl (wasi-libc) implements qsort: which of equal keys comes
 * first is that algorithm's, and it decides Darknet's print order. IoU in float32:
 * overlap = min(right) - max(left) per axis, I = ow*oh (0 if either < 0), U = Aa + Ab - I. */
#include <math.h>
#include "kernels.h"

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
/* Returns the number of boxes taking part (those with objectness != 0, first in order). */
int dlk_nms_sort(const float *boxes, const float *objectness, float *probs, int n, int classes, float thresh,
                 int *order)
{
    const float *box = boxes, *obj = objectness;
    float *prob = probs;
    int *a = order;
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
    return total;
}

#ifdef DLK_TEST_HOOKS
/* Smoothsort (musl qsort) of n float keys, descending, Darknet's comparator: order[i] =
 * index of the key at position i (for tests of the sort alone). */
void dlk_musl_sort_desc(const float *keys, int n, int *order)
{
    int *a = order;
    for (int i = 0; i < n; ++i) a[i] = i;
    dlk_nms_key key = {keys, 1, 0};
    dlk_smoothsort(a, (size_t)n, &key);
}
#endif

long long dlk_yolo_candidates(const float *output, int w, int h, int n, int classes, const float *anchors, int netw,
                              int neth, float thresh, float *boxes, float *objectness, float *probs)
{
    const float *out = output, *anchor = anchors;
    float *box = boxes, *obj = objectness, *prob = probs;
    long long hw = (long long)w * h;
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
    return count;
}

/* yolo_delta -- forward_yolo_layer's training part (Darknet yolo_layer.c, 2018-09, CPU build), for
 * `batch` images of the yolo layer's output (already activated). W x H cells, n anchor slots
 * (slot a uses anchor mask[a] of the `total` anchors biases[2k], biases[2k+1], in pixels of the
 * net's netw x neth input), entry e of (a, cell) at out[b*outputs + (a*(classes+5) + e)*W*H + cell].
 * truth: per image 90 boxes of 5 floats (x, y, w, h, class; relative to the net input) at
 * truth[b*450 + 5t], for t < max_boxes (read only while inside truth_len floats); a box with
 * x == 0 ends the image's list. A box is skipped (takes no part) when x, y, w or h is not
 * finite, w <= 0 or h <= 0, its cell (i, j) = ((int)(x*W), (int)(y*H)) (float products) is
 * outside the grid, or its class is not finite or (int)class outside 0..classes-1 (Darknet
 * would write outside its buffers or fill the deltas with NaN/inf). delta is zeroed, then per image b:
 *   1. for each cell j < H, i < W, slot a (that nesting): pred = ((i + x)/W, (j + y)/H,
 *      f32(exp(tw)*anchor_w/netw), f32(exp(th)*anchor_h/neth)); best = max IoU with the truths
 *      (first strictly greater wins); avg_anyobj += obj; d_obj = 0 - obj; 0 if best > ignore_thresh;
 *      if best > truth_thresh: d_obj = 1 - obj, class delta and box delta toward that truth.
 *   2. for each truth t: i, j as above; best_n = the anchor k < total whose (0, 0, aw/netw,
 *      ah/neth) has the largest IoU with (0, 0, w, h) (strictly greater, from 0); if best_n is in
 *      the mask (first slot a with mask[a] == best_n): box delta (iou += IoU(pred, truth) before it,
 *      recall if > .5, recall75 if > .75), avg_obj += obj, d_obj = 1 - obj, class delta
 *      (avg_cat += p_class), count += 1.
 *   box delta with scale s = 2 - w*h (float): tx = x*W - i, ty = y*H - j, tw = f32(log(w*netw/aw)),
 *     th = f32(log(h*neth/ah)); d = s*(t - out) for x, y, w, h (raw w, h outputs).
 *   class delta at (a, cell): if delta of class 0 there is already non-zero, only
 *     d_class = 1 - p_class (Darknet's shortcut); else d_k = (k == class) - p_k for every k.
 * IoU as box_iou in float32 (dlk_box_iou above). cost = f32(f32(sqrt(sum d^2))^2) over all
 * batch*outputs deltas (mag_array squared). stats[9] = cost, avg_iou, recall, recall75, avg_cat,
 * avg_obj, avg_anyobj (float sums, in Darknet's order), count, class_count. */
#define DLK_YOLO_TRUTHS 90
typedef struct { float x, y, w, h; int i, j, cls; } dlk_yolo_truth;

/* truth t of image b as Darknet reads it; 0: the list ends, -1: skipped, 1: usable */
static int dlk_yolo_read_truth(const float *truth, long long truth_len, int b, int t, int w, int h, int classes,
                               dlk_yolo_truth *out)
{
    long long at = (long long)b * DLK_YOLO_TRUTHS * 5 + 5LL * t;
    if (at + 5 > truth_len) return 0;
    const float *f = truth + at;
    if (!f[0]) return 0;
    out->x = f[0], out->y = f[1], out->w = f[2], out->h = f[3];
    if (!isfinite(f[0]) || !isfinite(f[1]) || !isfinite(f[2]) || !isfinite(f[3])) return -1;
    if (!(f[2] > 0) || !(f[3] > 0)) return -1;
    float fi = f[0] * w, fj = f[1] * h;
    if (!(fi > -1.0f && fi < (float)w && fj > -1.0f && fj < (float)h)) return -1;
    out->i = (int)fi, out->j = (int)fj;
    if (!(f[4] > -1.0f && f[4] < (float)classes)) return -1;
    out->cls = (int)f[4];
    return 1;
}

static float dlk_yolo_box_delta(const dlk_yolo_truth *truth, const float *out, const float *anchor, long long index,
                                int i, int j, int w, int h, int netw, int neth, float *delta, float scale,
                                long long stride)
{
    float pred[4], tb[4] = {truth->x, truth->y, truth->w, truth->h};
    pred[0] = (i + out[index]) / w;
    pred[1] = (j + out[index + stride]) / h;
    pred[2] = (float)(exp(out[index + 2 * stride]) * anchor[0] / netw);
    pred[3] = (float)(exp(out[index + 3 * stride]) * anchor[1] / neth);
    float iou = dlk_box_iou(pred, tb);
    float tx = truth->x * w - i, ty = truth->y * h - j;
    float tw = (float)log(truth->w * netw / anchor[0]), th = (float)log(truth->h * neth / anchor[1]);
    delta[index] = scale * (tx - out[index]);
    delta[index + stride] = scale * (ty - out[index + stride]);
    delta[index + 2 * stride] = scale * (tw - out[index + 2 * stride]);
    delta[index + 3 * stride] = scale * (th - out[index + 3 * stride]);
    return iou;
}

static void dlk_yolo_class_delta(const float *out, float *delta, long long index, int cls, int classes,
                                 long long stride, float *avg_cat)
{
    if (delta[index]) {
        delta[index + stride * cls] = 1 - out[index + stride * cls];
        if (avg_cat) *avg_cat += out[index + stride * cls];
        return;
    }
    for (int k = 0; k < classes; ++k) {
        delta[index + stride * k] = (k == cls ? 1 : 0) - out[index + stride * k];
        if (k == cls && avg_cat) *avg_cat += out[index + stride * k];
    }
}

void dlk_yolo_delta(const float *output, float *delta, int batch, int w, int h, int n, int classes, const int *mask,
                    int total, const float *biases, int netw, int neth, const float *truth, long long truth_len,
                    int max_boxes, float ignore_thresh, float truth_thresh, float *stats)
{
    long long hw = (long long)w * h, outputs = hw * n * (classes + 5);
    float avg_iou = 0, recall = 0, recall75 = 0, avg_cat = 0, avg_obj = 0, avg_anyobj = 0;
    int count = 0, class_count = 0;
    dlk_yolo_truth tr;
#define YOLO_ENTRY(b, a, cell, entry) ((b) * outputs + (long long)(a) * hw * (classes + 5) + (entry) * hw + (cell))
    for (long long k = 0; k < outputs * batch; ++k) delta[k] = 0;
    for (int b = 0; b < batch; ++b) {
        for (int j = 0; j < h; ++j)
            for (int i = 0; i < w; ++i)
                for (int a = 0; a < n; ++a) {
                    long long cell = (long long)j * w + i;
                    long long box_index = YOLO_ENTRY(b, a, cell, 0);
                    const float *anchor = biases + 2 * mask[a];
                    float pred[4];
                    pred[0] = (i + output[box_index]) / w;
                    pred[1] = (j + output[box_index + hw]) / h;
                    pred[2] = (float)(exp(output[box_index + 2 * hw]) * anchor[0] / netw);
                    pred[3] = (float)(exp(output[box_index + 3 * hw]) * anchor[1] / neth);
                    float best_iou = 0;
                    int best_t = 0, state;
                    for (int t = 0; t < max_boxes && (state = dlk_yolo_read_truth(truth, truth_len, b, t, w, h,
                                                                                 classes, &tr)) != 0; ++t) {
                        if (state < 0) continue;
                        float tb[4] = {tr.x, tr.y, tr.w, tr.h};
                        float iou = dlk_box_iou(pred, tb);
                        if (iou > best_iou) {
                            best_iou = iou;
                            best_t = t;
                        }
                    }
                    long long obj_index = YOLO_ENTRY(b, a, cell, 4);
                    avg_anyobj += output[obj_index];
                    delta[obj_index] = 0 - output[obj_index];
                    if (best_iou > ignore_thresh) delta[obj_index] = 0;
                    if (best_iou > truth_thresh) {
                        dlk_yolo_read_truth(truth, truth_len, b, best_t, w, h, classes, &tr);
                        delta[obj_index] = 1 - output[obj_index];
                        dlk_yolo_class_delta(output, delta, YOLO_ENTRY(b, a, cell, 5), tr.cls, classes, hw, NULL);
                        dlk_yolo_box_delta(&tr, output, anchor, box_index, i, j, w, h, netw, neth, delta,
                                           2 - tr.w * tr.h, hw);
                    }
                }
        int state;
        for (int t = 0; t < max_boxes && (state = dlk_yolo_read_truth(truth, truth_len, b, t, w, h, classes, &tr)) != 0;
             ++t) {
            if (state < 0) continue;
            float shift[4] = {0, 0, tr.w, tr.h};
            float best_iou = 0;
            int best_n = 0;
            for (int k = 0; k < total; ++k) {
                float anchor_box[4] = {0, 0, biases[2 * k] / netw, biases[2 * k + 1] / neth};
                float iou = dlk_box_iou(anchor_box, shift);
                if (iou > best_iou) {
                    best_iou = iou;
                    best_n = k;
                }
            }
            int slot = -1;
            for (int a = 0; a < n && slot < 0; ++a)
                if (mask[a] == best_n) slot = a;
            if (slot < 0) continue;
            long long cell = (long long)tr.j * w + tr.i;
            long long box_index = YOLO_ENTRY(b, slot, cell, 0);
            float iou = dlk_yolo_box_delta(&tr, output, biases + 2 * best_n, box_index, tr.i, tr.j, w, h, netw, neth,
                                           delta, 2 - tr.w * tr.h, hw);
            long long obj_index = YOLO_ENTRY(b, slot, cell, 4);
            avg_obj += output[obj_index];
            delta[obj_index] = 1 - output[obj_index];
            dlk_yolo_class_delta(output, delta, YOLO_ENTRY(b, slot, cell, 5), tr.cls, classes, hw, &avg_cat);
            ++count;
            ++class_count;
            if (iou > .5) recall += 1;
            if (iou > .75) recall75 += 1;
            avg_iou += iou;
        }
    }
#undef YOLO_ENTRY
    float sum = 0;
    for (long long k = 0; k < outputs * batch; ++k) sum += delta[k] * delta[k];
    float mag = (float)sqrt(sum);
    stats[0] = (float)pow(mag, 2);
    stats[1] = avg_iou, stats[2] = recall, stats[3] = recall75, stats[4] = avg_cat, stats[5] = avg_obj;
    stats[6] = avg_anyobj, stats[7] = (float)count, stats[8] = (float)class_count;
}
