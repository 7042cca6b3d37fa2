/* Activations (Darknet activations.c) and their derivatives, the one definition every kernel
 * that activates or differentiates uses. The derivative is evaluated on the layer's activated
 * output y (what backward passes keep), as Darknet's gradient_array:
 *
 *   act        f(x)                              f'(y)
 *   linear     x                                 1        (gradient: delta left as is)
 *   relu       x * (x > 0)      (-0 for x < 0)   y > 0
 *   leaky      x > 0 ? x : f32(.1 * x)           y > 0 ? 1 : .1
 *   logistic   f32(1 / (1 + exp(-x))) in double  (1 - y) * y
 *
 * act_array: x[i] = f(x[i]);  grad_array: delta[i] *= f'(y[i]);  one loop per activation. */
#ifndef DLK_ACTIVATION_H
#define DLK_ACTIVATION_H

#include <math.h>
#include <stddef.h>
#include "simd.h"

enum dlk_activation { ACT_LINEAR = 0, ACT_RELU = 1, ACT_LEAKY = 2, ACT_LOGISTIC = 3 };
#define ACT_COUNT 4

static inline float act(float x, int a)
{
    switch (a) {
    case ACT_RELU: return x * (x > 0);
    case ACT_LEAKY: return x > 0 ? x : (float)(.1 * x);
    case ACT_LOGISTIC: return (float)(1. / (1. + exp(-(double)x)));
    default: return x;
    }
}

static inline float grad(float y, int a)
{
    switch (a) {
    case ACT_RELU: return (float)(y > 0);
    case ACT_LEAKY: return y > 0 ? 1.f : .1f;
    case ACT_LOGISTIC: return (1 - y) * y;
    default: return 1.f;
    }
}

/* relu's derivative in four lanes: 1.f where y > 0, else 0.f (as grad(y, ACT_RELU)) */
static inline v4f grad_relu4(v4f y)
{
    v4i alive = y > v4f_splat(0.f);
    return (v4f)(alive & (v4i)v4f_splat(1.f));
}

/* relu in four lanes: x * (x > 0), as act(x, ACT_RELU) */
static inline v4f act_relu4(v4f x) { return x * grad_relu4(x); }

#define DLK_ACT_LOOP(A) for (ptrdiff_t i = 0; i < n; ++i) x[i] = act(x[i], A)
static inline void act_array(float *x, ptrdiff_t n, int a)
{
    switch (a) {
    case ACT_RELU: DLK_ACT_LOOP(ACT_RELU); break;
    case ACT_LEAKY: DLK_ACT_LOOP(ACT_LEAKY); break;
    case ACT_LOGISTIC: DLK_ACT_LOOP(ACT_LOGISTIC); break;
    default: break;
    }
}
#undef DLK_ACT_LOOP

/* linear: no loop (delta * 1 would only quieten signalling NaNs). Not inlined: in the large
 * backward kernels an inlined copy costs the wasm build more than the call. */
#define DLK_GRAD_LOOP(A) for (ptrdiff_t i = 0; i < n; ++i) delta[i] *= grad(y[i], A)
static __attribute__((noinline)) void grad_array(const float *y, float *delta, ptrdiff_t n, int a)
{
    switch (a) {
    case ACT_RELU: DLK_GRAD_LOOP(ACT_RELU); break;
    case ACT_LEAKY: DLK_GRAD_LOOP(ACT_LEAKY); break;
    case ACT_LOGISTIC: DLK_GRAD_LOOP(ACT_LOGISTIC); break;
    default: break;
    }
}
#undef DLK_GRAD_LOOP

#endif
