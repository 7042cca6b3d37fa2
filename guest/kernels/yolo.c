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
