/* Dropout (Darknet dropout_layer.c) with musl's rand() (rand.h), probability p, scale = 1/(1-p):
 *
 *   forward:   r_i = f32(rand()) / 2^31 (in float);  x_i = r_i < p ? 0 : x_i * scale;  r_i kept
 *   backward:  delta_i = r_i < p ? 0 : delta_i * scale
 * The forward pass takes the rand() state and returns the state after its n draws. */
#include "kernels.h"
#include "rand.h"

uint64_t dlk_dropout_forward(float *x, ptrdiff_t n, float prob, float scale, float *rnd, uint64_t state)
{
    uint64_t s = state;
    float *v = x, *r = rnd;
    for (ptrdiff_t i = 0; i < n; ++i) {
        float u = (float)musl_rand(&s) / 2147483648.0f;
        r[i] = u;
        v[i] = u < prob ? 0.f : v[i] * scale;
    }
    return s;
}

void dlk_dropout_backward(float *delta, ptrdiff_t n, float prob, float scale, const float *rnd)
{
    float *d = delta;
    const float *r = rnd;
    for (ptrdiff_t i = 0; i < n; ++i) d[i] = r[i] < prob ? 0.f : d[i] * scale;
}
