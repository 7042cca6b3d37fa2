/* Bulk draws from musl's rand() (rand.h), bit for bit those of dlserver.rng.Random:
 *
 *   uniform(a, b): (swap if b < a) u = f32(f32(f32(r) / 2^31) * f32(b - a)) + a  (float32 steps)
 *   normal():      Box-Muller with a cached pair: r1 = r/2147483647.0 (1e-100 if smaller),
 *                  r1 = -2 ln r1, r2 = (r'/2147483647.0) * f64(f32(2 pi));
 *                  f32(sqrt(r1) cos r2), and on the next call f32(sqrt(r1) sin r2)
 *
 * rand_uniform_fill: out[i] = f32(scale * uniform(a, b));   returns the state after the draws
 * rand_normal_fill:  out[i] = f32(scale * normal());        spare: the cached (r1, r2) pair, in/out
 * rand_below:        out[i] = rand() % m
 * The arithmetic is the Python version's (double, rounded to float where it calls f32), and
 * log/cos/sin/sqrt are the same libm functions Python's math module calls. */
#include <math.h>
#include "kernels.h"
#include "rand.h"

uint64_t dlk_rand_uniform_fill(float *out, ptrdiff_t n, double a, double b, double scale, uint64_t state)
{
    if (b < a) { double t = a; a = b; b = t; }
    uint64_t s = state;
    float *o = out;
    double width = (float)(b - a);
    for (ptrdiff_t i = 0; i < n; ++i) {
        double r = (float)((double)(float)musl_rand(&s) / 2147483648.0);
        double u = (float)((double)(float)(r * width) + a);
        o[i] = (float)(scale * u);
    }
    return s;
}

uint64_t dlk_rand_normal_fill(float *out, ptrdiff_t n, double scale, uint64_t state, dlk_normal_spare *spare)
{
    int have = spare->have;
    double r1 = spare->r1, r2 = spare->r2;
    uint64_t s = state;
    float *o = out;
    const double two_pi = 6.2831854820251465;          /* f64(f32(2 pi)) */
    for (ptrdiff_t i = 0; i < n; ++i) {
        double v;
        if (have) {
            v = (float)(sqrt(r1) * sin(r2));
            have = 0;
        } else {
            r1 = musl_rand(&s) / 2147483647.0;
            if (r1 < 1e-100) r1 = 1e-100;
            r1 = -2 * log(r1);
            r2 = (musl_rand(&s) / 2147483647.0) * two_pi;
            have = 1;
            v = (float)(sqrt(r1) * cos(r2));
        }
        o[i] = (float)(scale * v);
    }
    spare->have = have; spare->r1 = r1; spare->r2 = r2;
    return s;
}

uint64_t dlk_rand_below(ptrdiff_t n, long long m, uint64_t state, long long *out)
{
    uint64_t s = state;
    for (ptrdiff_t i = 0; i < n; ++i) out[i] = (long long)(musl_rand(&s) % (unsigned long long)m);
    return s;
}
