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
