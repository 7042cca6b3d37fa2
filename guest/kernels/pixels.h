/* Interleaved bytes to the network's float planes (stb_image with req_comp = 3, then Darknet
 * load_image_color):
 *
 *   src: height x width pixels of `comps` bytes (1 gray, 2 gray+alpha, 3 RGB, 4 RGBA)
 *   out[ch][y][x] = f32(byte/255.0) for ch in 0..2; gray is replicated, alpha dropped.
 *
 * Inline, for image.c's pixels_to_chw and png.c's fast path alike: there it is compiled where
 * comps comes from the PNG header (a separate function made the wasm loop slower). */
#ifndef DLK_PIXELS_H
#define DLK_PIXELS_H

#include <stddef.h>
#include <stdint.h>

static inline __attribute__((always_inline)) void bytes_to_chw(const uint8_t *src, int width, int height, int comps,
                                                               float *out)
{
    static float lut[256];                       /* lut[b] = f32(b/255.0), built on first use */
    if (lut[255] == 0.f)
        for (int i = 0; i < 256; ++i) lut[i] = (float)(i / 255.0);
    size_t plane = (size_t)width * height;
    const unsigned char *p = src;
    float *o = out;
    if (comps <= 2)
        for (size_t i = 0; i < plane; ++i) {
            float v = lut[p[i * comps]];
            o[i] = v; o[plane + i] = v; o[2 * plane + i] = v;
        }
    else
        for (size_t i = 0; i < plane; ++i) {
            o[i] = lut[p[i * comps]];
            o[plane + i] = lut[p[i * comps + 1]];
            o[2 * plane + i] = lut[p[i * comps + 2]];
        }
}

#endif
