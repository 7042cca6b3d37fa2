/* Drawing on planar float32 RGB images (Darknet image.c), im[(k*h + y)*w + x]:
 *
 *   draw_box_width  for t in 0..width-1: a 1-pixel rectangle (x1+t, y1+t)-(x2-t, y2-t), corners
 *                   clamped into the image, rows y1, y2 then columns x1, x2 set to (r, g, b),
 *                   ends inclusive (in 64 bits: any int corners are safe)
 *   draw_label      label (one plane, lw x lh) at row r (r - lh when that is >= 0), column c:
 *                   im[k] = rgb[k]*label, clipped to the image */
#include "kernels.h"

static void draw_box(float *a, int w, int h, long long x1, long long y1, long long x2, long long y2, const float rgb[3])
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
        for (long long i = x1; i <= x2; ++i) { p[i + (long long)y1 * w] = rgb[k]; p[i + (long long)y2 * w] = rgb[k]; }
    }
    for (int k = 0; k < 3; ++k) {
        float *p = a + k * plane;
        for (long long i = y1; i <= y2; ++i) { p[x1 + (long long)i * w] = rgb[k]; p[x2 + (long long)i * w] = rgb[k]; }
    }
}

void dlk_draw_box_width(float *im, int w, int h, int x1, int y1, int x2, int y2, int width, const float rgb[3])
{
    for (int t = 0; t < width; ++t) draw_box(im, w, h, (long long)x1 + t, (long long)y1 + t, (long long)x2 - t, (long long)y2 - t, rgb);
}

void dlk_draw_label(float *im, int w, int h, const float *label, int lw, int lh, int r, int c, const float rgb[3])
{
    if (r - lh >= 0) r = r - lh;
    float *a = im;
    const float *l = label;
    long long plane = (long long)w * h;
    for (int j = 0; j < lh && j + r < h; ++j) {
        if (j + r < 0) continue;
        for (int i = 0; i < lw && i + c < w; ++i) {
            if (i + c < 0) continue;
            float v = l[(long long)j * lw + i];
            for (int k = 0; k < 3; ++k) a[k * plane + (long long)(j + r) * w + i + c] = rgb[k] * v;
        }
    }
}
