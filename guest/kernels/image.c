/* Planar float32 images, data[(ch*h + y)*w + x] (Darknet image.c, blas.c upsample_cpu; stb_image):
 *
 *   pixels_to_chw  bytes of `comps` per pixel -> out[ch][y][x] = f32(byte/255.0) (pixels.h)
 *   chw_to_pixels  interleaved bytes (unsigned char)(255*v), truncated (Darknet save_image)
 *   resize_image   separable bilinear, "align corners" (docs/darknet-contract.md §7.2), in float32:
 *                  w_scale = f32((sw-1)/(dw-1)), h_scale likewise (0 when the side is 1)
 *                  pass 1 (into part, dw x sh): col == dw-1 or sw == 1 -> p[sw-1], else
 *                    sx = col*w_scale, ix = (int)sx, dx = sx-ix, (1-dx)*p[ix] + dx*p[ix+1]
 *                  pass 2: sy = r*h_scale, iy = (int)sy, dy = sy-iy, out = (1-dy)*part[iy];
 *                    unless r == dh-1 or sh == 1: out += dy*part[iy+1] (a separate add)
 *   image_paste    embed_image (copy) or composite_image (multiply) of src at (dx, dy)
 *                  into dst; pixels falling outside dst are dropped
 *   upsample       forward: out[c][y][x] = scale*in[c][y/s][x/s]  (nearest neighbour)
 *                  backward (or downsample forward): in[c][y/s][x/s] += scale*out[c][y][x] */
#include "kernels.h"
#include "pixels.h"

void dlk_pixels_to_chw(const uint8_t *src, int width, int height, int comps, float *out)
{
    bytes_to_chw(src, width, height, comps, out);
}

void dlk_chw_to_pixels(const float *im, int w, int h, int c, uint8_t *out)
{
    long long plane = (long long)w * h;
    const float *src = im;
    unsigned char *dst = out;
    for (int k = 0; k < c; ++k)
        for (long long i = 0; i < plane; ++i) {
            float v = 255.0f * src[i + k * plane];
            /* (unsigned char)v is undefined outside 0..255: Darknet's values stay inside [0, 1] */
            dst[i * c + k] = v > 0.0f ? (v < 255.0f ? (unsigned char)v : 255) : 0;
        }
}

void dlk_resize_image(const float *src, int sw, int sh, int c, float *dst, int dw, int dh, float *part)
{
    const float *in = src;
    float *out = dst, *tmp = part;
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
}

void dlk_image_paste(const float *src, int sw, int sh, int c, float *dst, int dw, int dh, int dx, int dy, int multiply)
{
    const float *in = src;
    float *out = dst;
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
}

void dlk_upsample(float *in, int batch, int c, int h, int w, int stride, float scale, float *out, int forward)
{
    float *src = in, *dst = out;
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
}
