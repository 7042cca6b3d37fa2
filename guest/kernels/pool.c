/* Max pooling (Darknet maxpool_layer.c), window `size`, `stride`, padding `pad`:
 *
 *   out_h = (h + pad - size)/stride + 1, window origin offset = -(pad/2)
 *   out[b][c][oy][ox] = max over ky, kx (ky outer) of in[b][c][oy*stride+ky-pad/2][ox*stride+kx-pad/2]
 *
 * positions outside the image count as -FLT_MAX; the first strict maximum wins and
 * its flat input index is kept for the backward pass: in_delta[idx] += out_delta.
 * A window with no value above -FLT_MAX (all -inf or NaN) keeps index -1 and output
 * -FLT_MAX, as in Darknet; the backward pass skips it (Darknet would write in_delta[-1]).
 *
 * maxpool_forward_2x2 (size 2, stride 2, h and w even: every window inside the image):
 *   out[bc][oy][ox] = first strict maximum of -FLT_MAX, in[bc][2oy][2ox], [2oy][2ox+1], [2oy+1][2ox],
 *   [2oy+1][2ox+1]; indexes[...] = its flat input index bc*h*w + y*w + x (-1 if none is above
 *   -FLT_MAX), as the general forward pass gives for these windows. With indexes NULL (inference)
 *   only out[] is written. */
#include <float.h>
#include "kernels.h"
#include "simd.h"

void dlk_maxpool_forward(const float *in, int batch, int c, int h, int w, int size, int stride, int pad, float *out,
                         int32_t *indexes)
{
    int oh = dlk_pool_out_size(h, size, stride, pad), ow = dlk_pool_out_size(w, size, stride, pad);
    int off = -(pad / 2);
    const float *src = in;
    float *dst = out;
    int32_t *ix = indexes;
    for (int bc = 0; bc < batch * c; ++bc) {
        const float *plane = src + (long long)bc * h * w;
        for (int oy = 0; oy < oh; ++oy)
            for (int ox = 0; ox < ow; ++ox) {
                float best = -FLT_MAX;
                int best_i = -1;
                for (int ky = 0; ky < size; ++ky)
                    for (int kx = 0; kx < size; ++kx) {
                        int y = off + oy * stride + ky, x = off + ox * stride + kx;
                        int valid = y >= 0 && y < h && x >= 0 && x < w;
                        float v = valid ? plane[y * w + x] : -FLT_MAX;
                        if (v > best) { best = v; best_i = bc * h * w + y * w + x; }
                    }
                long long o = ((long long)bc * oh + oy) * ow + ox;
                dst[o] = best;
                ix[o] = best_i;
            }
    }
}

/* -1, or the position of the first index outside -1 .. n_in-1 (then nothing is written). */
ptrdiff_t dlk_maxpool_backward(const float *out_delta, const int32_t *indexes, ptrdiff_t n, float *in_delta,
                               ptrdiff_t n_in)
{
    const float *d = out_delta;
    const int32_t *ix = indexes;
    float *id = in_delta;
    /* all indexes are checked before anything is written */
    for (ptrdiff_t i = 0; i < n; ++i)
        if (ix[i] < -1 || ix[i] >= n_in) return i;
    for (ptrdiff_t i = 0; i < n; ++i)
        if (ix[i] >= 0) id[ix[i]] += d[i];
    return -1;
}

/* best, bi := v, i in the lanes where v > best (strict: the first maximum wins) */
#define POOL_TAKE(v, i) do { v4i m_ = (v) > best; best = (v4f)(((v4i)(v) & m_) | ((v4i)best & ~m_)); \
                           bi = ((i) & m_) | (bi & ~m_); } while (0)

/* maxpool_forward_2x2 without indexes (inference): the same out[] */
static void maxpool_values_2x2(const float *in, int planes, int h, int w, float *out)
{
    int oh = h / 2, ow = w / 2;
    for (int bc = 0; bc < planes; ++bc)
        for (int oy = 0; oy < oh; ++oy) {
            const float *r0 = in + ((long long)bc * h + 2 * oy) * w, *r1 = r0 + w;
            float *o = out + ((long long)bc * oh + oy) * ow;
            int ox = 0;
            for (; ox + 4 <= ow; ox += 4) {
                v4f a0 = v4f_load(r0 + 2 * ox), a1 = v4f_load(r0 + 2 * ox + 4);
                v4f b0 = v4f_load(r1 + 2 * ox), b1 = v4f_load(r1 + 2 * ox + 4);
                v4f best = v4f_splat(-FLT_MAX);
                v4f in4[4] = {__builtin_shufflevector(a0, a1, 0, 2, 4, 6), __builtin_shufflevector(a0, a1, 1, 3, 5, 7),
                              __builtin_shufflevector(b0, b1, 0, 2, 4, 6), __builtin_shufflevector(b0, b1, 1, 3, 5, 7)};
                for (int j = 0; j < 4; ++j) {
                    v4i m = in4[j] > best;
                    best = (v4f)(((v4i)in4[j] & m) | ((v4i)best & ~m));
                }
                v4f_store(o + ox, best);
            }
            for (; ox < ow; ++ox) {
                float v[4] = {r0[2 * ox], r0[2 * ox + 1], r1[2 * ox], r1[2 * ox + 1]}, best = -FLT_MAX;
                for (int j = 0; j < 4; ++j) best = v[j] > best ? v[j] : best;
                o[ox] = best;
            }
        }
}

void dlk_maxpool_forward_2x2(const float *in, int planes, int h, int w, float *out, int32_t *indexes)
{
    if (!indexes) { maxpool_values_2x2(in, planes, h, w, out); return; }
    int oh = h / 2, ow = w / 2;
    const float *src = in;
    float *dst = out;
    int32_t *ix = indexes;
    const v4i lane2 = {0, 2, 4, 6};
    for (int bc = 0; bc < planes; ++bc) {
        const float *plane = src + (long long)bc * h * w;
        int base = bc * h * w;
        for (int oy = 0; oy < oh; ++oy) {
            const float *r0 = plane + 2 * oy * w, *r1 = r0 + w;
            float *o = dst + ((long long)bc * oh + oy) * ow;
            int32_t *oi = ix + ((long long)bc * oh + oy) * ow;
            int i0 = base + 2 * oy * w;
            int ox = 0;
            for (; ox + 4 <= ow; ox += 4) {
                v4f a0 = v4f_load(r0 + 2 * ox), a1 = v4f_load(r0 + 2 * ox + 4);
                v4f b0 = v4f_load(r1 + 2 * ox), b1 = v4f_load(r1 + 2 * ox + 4);
                v4f e0 = __builtin_shufflevector(a0, a1, 0, 2, 4, 6), o0 = __builtin_shufflevector(a0, a1, 1, 3, 5, 7);
                v4f e1 = __builtin_shufflevector(b0, b1, 0, 2, 4, 6), o1 = __builtin_shufflevector(b0, b1, 1, 3, 5, 7);
                v4i at = lane2 + (i0 + 2 * ox);
                v4f best = v4f_splat(-FLT_MAX);
                v4i bi = {-1, -1, -1, -1};
                POOL_TAKE(e0, at); POOL_TAKE(o0, at + 1); POOL_TAKE(e1, at + w); POOL_TAKE(o1, at + w + 1);
                v4f_store(o + ox, best);
                memcpy(oi + ox, &bi, 16);
            }
            for (; ox < ow; ++ox) {
                int x = 2 * ox;
                float best = -FLT_MAX;
                int bi = -1;
                if (r0[x] > best) { best = r0[x]; bi = i0 + x; }
                if (r0[x + 1] > best) { best = r0[x + 1]; bi = i0 + x + 1; }
                if (r1[x] > best) { best = r1[x]; bi = i0 + w + x; }
                if (r1[x + 1] > best) { best = r1[x + 1]; bi = i0 + w + x + 1; }
                o[ox] = best;
                oi[ox] = bi;
            }
        }
    }
}

/* Global average pooling (Darknet avgpool_layer.c), n = h*w values per channel plane:
 *
 *   forward:  out[bc] = 0; out[bc] += in[bc][i] for i = 0 .. n-1 (a sequential float sum);
 *             out[bc] /= (float)n
 *   backward: in_delta[bc][i] += out_delta[bc] / (float)n   (the quotient once per i, as Darknet)
 *
 * for bc = b*c + k over batch*c planes. */
void dlk_avgpool_forward(const float *in, int planes, int n, float *out)
{
    for (int bc = 0; bc < planes; ++bc) {
        const float *plane = in + (long long)bc * n;
        float sum = 0;
        for (int i = 0; i < n; ++i) sum += plane[i];
        out[bc] = sum / (float)n;
    }
}

void dlk_avgpool_backward(const float *out_delta, int planes, int n, float *in_delta)
{
    for (int bc = 0; bc < planes; ++bc) {
        float *plane = in_delta + (long long)bc * n;
        for (int i = 0; i < n; ++i) plane[i] += out_delta[bc] / (float)n;
    }
}
