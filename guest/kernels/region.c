/* Darknet's detection-family layers (reorg_layer.c, crop_layer.c, region_layer.c,
 * detection_layer.c, blas.c, tree.c): data movement, strided softmax and box decoding.
 *
 * reorg -- Darknet reorg_cpu(x, w, h, c, batch, stride, forward, out), out_c = c/stride^2:
 *   for b, k < c, j < h, i < w (in that nesting):
 *     in = i + w*(j + h*(k + c*b)); c2 = k % out_c; off = k / out_c;
 *     w2 = i*stride + off % stride; h2 = j*stride + off / stride;
 *     o = w2 + w*stride*(h2 + h*stride*(c2 + out_c*b))
 *     forward: out[o] = x[in]    else: out[in] = x[o]
 *   (a permutation of batch*w*h*c values when stride^2 divides c; the caller checks it)
 *
 * flatten -- Darknet flatten(x, size, layers, batch, forward), out of place here:
 *   i1 = b*layers*size + c*size + i, i2 = b*layers*size + i*layers + c;
 *   forward: out[i2] = x[i1]    else: out[i1] = x[i2]
 *
 * crop -- forward_crop_layer with the offsets (dh, dw) and flip already drawn:
 *   out[b][c][i][j] = in[b][c][i + dh][flip ? w - dw - j - 1 : j + dw] * scale + trans
 *   (two float steps: a product, then a sum)
 *
 * softmax_strided -- Darknet softmax_cpu(in, n, batch, batch_offset, groups, group_offset,
 *   stride, temp, out): for each b, g the n values at p + i*stride, p = b*batch_offset +
 *   g*group_offset, get softmax(): m = max; e_i = f32(exp(x_i/T - m/T)); s = sum e_i in
 *   order (float); y_i = e_i / s. (In place is allowed: each group reads x before writing y.)
 *
 * region_boxes -- get_region_detections (batch row 0) before correct_region_boxes, for all
 *   n*w*h slots, index = a*w*h + cell (cell = row*w + col), entry e at
 *   out[(a*(coords+classes+1) + e)*w*h + cell]:
 *     box = ((col + x)/w, (row + y)/h, f32(exp(tw)*bias[2a]/w), f32(exp(th)*bias[2a+1]/h))
 *     scale = background ? 1 : objectness entry (coords);  objectness = scale > thresh ? scale : 0
 *     without a tree: if objectness != 0, probs[j] = scale*class_j if > thresh else 0
 *     with a tree (parent[], groups): hierarchy_predictions on the class entries in place
 *       (p_j *= p_parent(j) for j in order), then j* = hierarchy_top_prediction(tree_thresh)
 *       and probs[j*] = scale > thresh ? scale : 0.
 *
 * detection_boxes -- get_detection_detections (YOLOv1, batch row 0): cell i < side*side,
 *   box slot a < n, index i*n + a; class probabilities at i*classes, confidences at
 *   side*side*classes + i*n + a, boxes (4 each) at side*side*(classes + n) + (i*n + a)*4:
 *     box = ((x + col)/side*w, (y + row)/side*h, f32(pow(bw, sqrt?2:1)*w), f32(pow(bh, ..)*h))
 *     objectness = conf;  probs[j] = conf*class_j if > thresh else 0
 *   (w, h: the image's size; Darknet's boxes of this layer are in pixels, not relative). */
#include <float.h>
#include <math.h>
#include "kernels.h"

void dlk_reorg(const float *x, int w, int h, int c, int batch, int stride, int forward, float *out)
{
    int out_c = c / (stride * stride);
    for (int b = 0; b < batch; ++b)
        for (int k = 0; k < c; ++k)
            for (int j = 0; j < h; ++j)
                for (int i = 0; i < w; ++i) {
                    long long in = i + (long long)w * (j + (long long)h * (k + (long long)c * b));
                    int c2 = k % out_c, off = k / out_c;
                    long long w2 = (long long)i * stride + off % stride;
                    long long h2 = (long long)j * stride + off / stride;
                    long long o = w2 + (long long)w * stride * (h2 + (long long)h * stride * (c2 + (long long)out_c * b));
                    if (forward) out[o] = x[in];
                    else out[in] = x[o];
                }
}

void dlk_flatten(const float *x, int size, int layers, int batch, int forward, float *out)
{
    for (int b = 0; b < batch; ++b)
        for (int c = 0; c < layers; ++c)
            for (int i = 0; i < size; ++i) {
                long long base = (long long)b * layers * size;
                long long i1 = base + (long long)c * size + i, i2 = base + (long long)i * layers + c;
                if (forward) out[i2] = x[i1];
                else out[i1] = x[i2];
            }
}

void dlk_crop(const float *in, int batch, int c, int h, int w, int out_h, int out_w, int dh, int dw, int flip,
              float scale, float trans, float *out)
{
    long long count = 0;
    for (int b = 0; b < batch; ++b)
        for (int k = 0; k < c; ++k)
            for (int i = 0; i < out_h; ++i)
                for (int j = 0; j < out_w; ++j) {
                    int col = flip ? w - dw - j - 1 : j + dw;
                    int row = i + dh;
                    long long index = col + (long long)w * (row + (long long)h * (k + (long long)c * b));
                    float v = in[index] * scale;
                    out[count++] = v + trans;
                }
}

static void dlk_softmax_one(const float *x, int n, float temp, int stride, float *y)
{
    float largest = -FLT_MAX, sum = 0;
    for (int i = 0; i < n; ++i)
        if (x[(long long)i * stride] > largest) largest = x[(long long)i * stride];
    for (int i = 0; i < n; ++i) {
        float e = (float)exp((double)(x[(long long)i * stride] / temp - largest / temp));
        sum += e;
        y[(long long)i * stride] = e;
    }
    for (int i = 0; i < n; ++i) y[(long long)i * stride] /= sum;
}

void dlk_softmax_strided(const float *in, int n, int batch, int batch_offset, int groups, int group_offset,
                         int stride, float temp, float *out)
{
    for (int b = 0; b < batch; ++b)
        for (int g = 0; g < groups; ++g) {
            long long p = (long long)b * batch_offset + (long long)g * group_offset;
            dlk_softmax_one(in + p, n, temp, stride, out + p);
        }
}

/* hierarchy_top_prediction (tree.c) over the class entries at pred[j*stride] */
static int dlk_tree_top(const float *pred, int classes, const int *group_size, const int *group_offset,
                        const int *child, const int *parent, float thresh, long long stride)
{
    float p = 1;
    int group = 0;
    for (int step = 0;; ++step) {
        if (step > classes) return 0; /* a cycle of child groups: the caller checks trees, this is a backstop */
        float max = 0;
        int max_i = 0;
        for (int i = 0; i < group_size[group]; ++i) {
            int index = i + group_offset[group];
            float val = pred[index * stride];
            if (val > max) {
                max_i = index;
                max = val;
            }
        }
        if (p * max > thresh) {
            p = p * max;
            group = child[max_i];
            if (child[max_i] < 0) return max_i;
        } else if (group == 0) {
            return max_i;
        } else {
            return parent[group_offset[group]];
        }
    }
}

void dlk_region_boxes(float *output, int w, int h, int n, int classes, int coords, int background,
                      const float *biases, float thresh, const int *parent, const int *group_size,
                      const int *group_offset, const int *child, float tree_thresh, float *boxes,
                      float *objectness, float *probs)
{
    long long hw = (long long)w * h;
    for (long long i = 0; i < hw; ++i) {
        int row = (int)(i / w), col = (int)(i % w);
        for (int a = 0; a < n; ++a) {
            long long index = a * hw + i;
            float *e = output + (long long)a * (coords + classes + 1) * hw + i;
            float *p = probs + index * classes;
            for (int j = 0; j < classes; ++j) p[j] = 0;
            float scale = background ? 1 : e[coords * hw];
            float *b = boxes + 4 * index;
            b[0] = (col + e[0]) / w;
            b[1] = (row + e[hw]) / h;
            b[2] = (float)(exp(e[2 * hw]) * biases[2 * a] / w);
            b[3] = (float)(exp(e[3 * hw]) * biases[2 * a + 1] / h);
            objectness[index] = scale > thresh ? scale : 0;
            float *cls = e + (coords + !background) * hw;
            if (parent) {
                for (int j = 0; j < classes; ++j)
                    if (parent[j] >= 0) cls[j * hw] *= cls[parent[j] * hw];
                int top = dlk_tree_top(cls, classes, group_size, group_offset, child, parent, tree_thresh, hw);
                p[top] = scale > thresh ? scale : 0;
            } else if (objectness[index]) {
                for (int j = 0; j < classes; ++j) {
                    float prob = scale * e[(coords + 1 + j) * hw];
                    p[j] = prob > thresh ? prob : 0;
                }
            }
        }
    }
}

void dlk_detection_boxes(const float *output, int side, int n, int classes, int sqrt_wh, int w, int h,
                         float thresh, float *boxes, float *objectness, float *probs)
{
    int locations = side * side;
    for (int i = 0; i < locations; ++i) {
        int row = i / side, col = i % side;
        for (int a = 0; a < n; ++a) {
            long long index = (long long)i * n + a;
            float scale = output[(long long)locations * classes + index];
            const float *x = output + (long long)locations * (classes + n) + index * 4;
            float *b = boxes + 4 * index;
            b[0] = (x[0] + col) / side * w;
            b[1] = (x[1] + row) / side * h;
            b[2] = (float)(pow(x[2], sqrt_wh ? 2 : 1) * w);
            b[3] = (float)(pow(x[3], sqrt_wh ? 2 : 1) * h);
            objectness[index] = scale;
            float *p = probs + index * classes;
            for (int j = 0; j < classes; ++j) {
                float prob = scale * output[(long long)i * classes + j];
                p[j] = prob > thresh ? prob : 0;
            }
        }
    }
}

/* region_delta -- forward_region_layer's training part (Darknet's CPU build), for `batch` images
 * of the region layer's output (already activated), truth: per image 30 boxes of coords + 1
 * floats (x, y, w, h, [mask ...], class), a box with x == 0 ends the list. delta is zeroed,
 * then, per image:
 *   (tree only) a truth with x and y > 100000 is a class-only label: the (anchor, cell) of the
 *     highest objectness * tree probability of the class gets the class deltas, and every
 *     objectness the no-object delta; nothing else for that image;
 *   every (cell, anchor): objectness delta noobject_scale*(0 - p) (background: (1 - p)), 0 when
 *     its box overlaps a truth by IoU > thresh; while seen < 12800 the box is pulled towards the
 *     anchor at the cell centre with scale .01;
 *   every truth: in its cell (i = (int)(x*w), j = (int)(y*h)) the anchor whose shape fits it best
 *     (IoU of centred boxes; bias_match: of the anchor itself) gets box deltas
 *     coord_scale*(2 - w*h)*(t - x) with tx = x*w - i, tw = log(w*w_net... / anchor) (delta_region_box),
 *     mask deltas (coords > 4, scale (int)mask_scale), objectness object_scale*(1 - p) (rescore:
 *     (iou - p); background: (0 - p)) and class deltas class_scale*(onehot - p) (map: the truth's
 *     class mapped first; tree: along the path to the root; without softmax a delta already set
 *     at the class entry's first slot only sets the class's own entry).
 * Truths whose cell lies outside the grid, or classes outside 0..classes-1, are skipped (Darknet
 * would write outside its buffers). stats[0..7] = cost (|delta|^2), avg_iou, recall, avg_cat,
 * avg_obj, avg_anyobj, count, class_count (the sums Darknet prints, not yet divided). */
typedef struct { float x, y, w, h; } dlk_box;

static float dlk_iou(dlk_box a, dlk_box b)
{
    float bx[4] = {b.x, b.y, b.w, b.h}, ax[4] = {a.x, a.y, a.w, a.h};
    float w = 0, h = 0;
    {
        float l1 = ax[0] - ax[2] / 2, l2 = bx[0] - bx[2] / 2;
        float left = l1 > l2 ? l1 : l2;
        float r1 = ax[0] + ax[2] / 2, r2 = bx[0] + bx[2] / 2;
        float right = r1 < r2 ? r1 : r2;
        w = right - left;
    }
    {
        float l1 = ax[1] - ax[3] / 2, l2 = bx[1] - bx[3] / 2;
        float left = l1 > l2 ? l1 : l2;
        float r1 = ax[1] + ax[3] / 2, r2 = bx[1] + bx[3] / 2;
        float right = r1 < r2 ? r1 : r2;
        h = right - left;
    }
    float inter = (w < 0 || h < 0) ? 0 : w * h;
    float uni = a.w * a.h + b.w * b.h - inter;
    return inter / uni;
}

static dlk_box dlk_region_box(const float *x, const float *biases, int n, long long index, int i, int j, int w, int h,
                              long long stride)
{
    dlk_box b;
    b.x = (i + x[index + 0 * stride]) / w;
    b.y = (j + x[index + 1 * stride]) / h;
    b.w = (float)(exp(x[index + 2 * stride]) * biases[2 * n] / w);
    b.h = (float)(exp(x[index + 3 * stride]) * biases[2 * n + 1] / h);
    return b;
}

static float dlk_region_box_delta(dlk_box truth, const float *x, const float *biases, int n, long long index, int i,
                                  int j, int w, int h, float *delta, float scale, long long stride)
{
    dlk_box pred = dlk_region_box(x, biases, n, index, i, j, w, h, stride);
    float iou = dlk_iou(pred, truth);
    float tx = (truth.x * w - i);
    float ty = (truth.y * h - j);
    float tw = (float)log(truth.w * w / biases[2 * n]);
    float th = (float)log(truth.h * h / biases[2 * n + 1]);
    delta[index + 0 * stride] = scale * (tx - x[index + 0 * stride]);
    delta[index + 1 * stride] = scale * (ty - x[index + 1 * stride]);
    delta[index + 2 * stride] = scale * (tw - x[index + 2 * stride]);
    delta[index + 3 * stride] = scale * (th - x[index + 3 * stride]);
    return iou;
}

static void dlk_region_class_delta(const float *output, float *delta, long long index, int class, int classes,
                                   const int *parent, const int *group, const int *group_size,
                                   const int *group_offset, float scale, long long stride, float *avg_cat, int tag)
{
    if (parent) {
        float pred = 1;
        while (class >= 0) {
            pred *= output[index + stride * class];
            int g = group[class];
            int offset = group_offset[g];
            for (int i = 0; i < group_size[g]; ++i)
                delta[index + stride * (offset + i)] = scale * (0 - output[index + stride * (offset + i)]);
            delta[index + stride * class] = scale * (1 - output[index + stride * class]);
            class = parent[class];
        }
        *avg_cat += pred;
    } else {
        if (delta[index] && tag) {
            delta[index + stride * class] = scale * (1 - output[index + stride * class]);
            return;
        }
        for (int n = 0; n < classes; ++n) {
            delta[index + stride * n] = scale * (((n == class) ? 1 : 0) - output[index + stride * n]);
            if (n == class) *avg_cat += output[index + stride * n];
        }
    }
}

void dlk_region_delta(const float *output, float *delta, int batch, int w, int h, int n, int classes, int coords,
                      const float *biases, const float *truth, float thresh, const float *scales, int rescore,
                      int background, int bias_match, int softmax, long long seen, const int *map, const int *parent,
                      const int *group, const int *group_size, const int *group_offset, float *stats)
{
    float noobject_scale = scales[0], object_scale = scales[1], coord_scale = scales[2], class_scale = scales[3];
    int mask_scale = (int)scales[4];
    long long hw = (long long)w * h, outputs = hw * n * (coords + classes + 1);
    int truths = 30 * (coords + 1);
    float avg_iou = 0, recall = 0, avg_cat = 0, avg_obj = 0, avg_anyobj = 0;
    int count = 0, class_count = 0;
#define ENTRY(b, location, entry) \
    ((b) * outputs + ((location) / hw) * hw * (coords + classes + 1) + (entry) * hw + ((location) % hw))
    for (long long i = 0; i < outputs * batch; ++i) delta[i] = 0;
    for (int b = 0; b < batch; ++b) {
        const float *tr = truth + (long long)b * truths;
        if (parent) {
            int onlyclass = 0;
            for (int t = 0; t < 30; ++t) {
                const float *tb = tr + t * (coords + 1);
                if (!tb[0]) break;
                int class = (int)tb[coords];
                if (tb[0] > 100000 && tb[1] > 100000) {
                    if (class < 0 || class >= classes) break;
                    float maxp = 0;
                    long long maxi = 0;
                    for (long long k = 0; k < n * hw; ++k) {
                        long long class_index = ENTRY(b, k, coords + 1), obj_index = ENTRY(b, k, coords);
                        float scale = output[obj_index];
                        delta[obj_index] = noobject_scale * (0 - output[obj_index]);
                        float p = 1;
                        for (int c = class; c >= 0; c = parent[c]) p = p * output[class_index + c * hw];
                        p = scale * p;
                        if (p > maxp) {
                            maxp = p;
                            maxi = k;
                        }
                    }
                    long long class_index = ENTRY(b, maxi, coords + 1), obj_index = ENTRY(b, maxi, coords);
                    dlk_region_class_delta(output, delta, class_index, class, classes, parent, group, group_size,
                                           group_offset, class_scale, hw, &avg_cat, !softmax);
                    delta[obj_index] = 0;
                    ++class_count;
                    onlyclass = 1;
                    break;
                }
            }
            if (onlyclass) continue;
        }
        for (int j = 0; j < h; ++j)
            for (int i = 0; i < w; ++i)
                for (int a = 0; a < n; ++a) {
                    long long box_index = ENTRY(b, a * hw + j * w + i, 0);
                    dlk_box pred = dlk_region_box(output, biases, a, box_index, i, j, w, h, hw);
                    float best_iou = 0;
                    for (int t = 0; t < 30; ++t) {
                        const float *tb = tr + t * (coords + 1);
                        dlk_box truth_box = {tb[0], tb[1], tb[2], tb[3]};
                        if (!truth_box.x) break;
                        float iou = dlk_iou(pred, truth_box);
                        if (iou > best_iou) best_iou = iou;
                    }
                    long long obj_index = ENTRY(b, a * hw + j * w + i, coords);
                    avg_anyobj += output[obj_index];
                    delta[obj_index] = noobject_scale * (0 - output[obj_index]);
                    if (background) delta[obj_index] = noobject_scale * (1 - output[obj_index]);
                    if (best_iou > thresh) delta[obj_index] = 0;
                    if (seen < 12800) {
                        dlk_box anchor;
                        anchor.x = (float)((i + .5) / w);
                        anchor.y = (float)((j + .5) / h);
                        anchor.w = biases[2 * a] / w;
                        anchor.h = biases[2 * a + 1] / h;
                        dlk_region_box_delta(anchor, output, biases, a, box_index, i, j, w, h, delta, .01f, hw);
                    }
                }
        for (int t = 0; t < 30; ++t) {
            const float *tb = tr + t * (coords + 1);
            dlk_box truth_box = {tb[0], tb[1], tb[2], tb[3]};
            if (!truth_box.x) break;
            float fi = truth_box.x * w, fj = truth_box.y * h;
            if (!(fi >= 0 && fi < w && fj >= 0 && fj < h)) continue; /* outside the grid */
            int i = (int)fi, j = (int)fj;
            float best_iou = 0;
            int best_n = 0;
            dlk_box shift = truth_box;
            shift.x = 0;
            shift.y = 0;
            for (int a = 0; a < n; ++a) {
                long long box_index = ENTRY(b, a * hw + j * w + i, 0);
                dlk_box pred = dlk_region_box(output, biases, a, box_index, i, j, w, h, hw);
                if (bias_match) {
                    pred.w = biases[2 * a] / w;
                    pred.h = biases[2 * a + 1] / h;
                }
                pred.x = 0;
                pred.y = 0;
                float iou = dlk_iou(pred, shift);
                if (iou > best_iou) {
                    best_iou = iou;
                    best_n = a;
                }
            }
            long long box_index = ENTRY(b, best_n * hw + j * w + i, 0);
            float iou = dlk_region_box_delta(truth_box, output, biases, best_n, box_index, i, j, w, h, delta,
                                             coord_scale * (2 - truth_box.w * truth_box.h), hw);
            if (coords > 4) {
                long long mask_index = ENTRY(b, best_n * hw + j * w + i, 4);
                for (int k = 0; k < coords - 4; ++k)
                    delta[mask_index + k * hw] = mask_scale * (tb[5 + k] - output[mask_index + k * hw]);
            }
            if (iou > .5) recall += 1;
            avg_iou += iou;
            long long obj_index = ENTRY(b, best_n * hw + j * w + i, coords);
            avg_obj += output[obj_index];
            delta[obj_index] = object_scale * (1 - output[obj_index]);
            if (rescore) delta[obj_index] = object_scale * (iou - output[obj_index]);
            if (background) delta[obj_index] = object_scale * (0 - output[obj_index]);
            int class = (int)tb[coords];
            if (map && class >= 0 && class < classes) class = map[class];
            if (class >= 0 && class < classes) {
                long long class_index = ENTRY(b, best_n * hw + j * w + i, coords + 1);
                dlk_region_class_delta(output, delta, class_index, class, classes, parent, group, group_size,
                                       group_offset, class_scale, hw, &avg_cat, !softmax);
            }
            ++count;
            ++class_count;
        }
    }
#undef ENTRY
    float sum = 0;
    for (long long i = 0; i < outputs * batch; ++i) sum += delta[i] * delta[i];
    float mag = (float)sqrt(sum);
    stats[0] = (float)pow(mag, 2);
    stats[1] = avg_iou;
    stats[2] = recall;
    stats[3] = avg_cat;
    stats[4] = avg_obj;
    stats[5] = avg_anyobj;
    stats[6] = (float)count;
    stats[7] = (float)class_count;
}
