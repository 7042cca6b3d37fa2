/* Activations (Darknet activations.h of 2018-09, every one it has) and their derivatives, the
 * one definition every kernel that activates or differentiates uses. The derivative is
 * evaluated on the layer's activated output y (what backward passes keep), as Darknet's
 * gradient_array. Each formula is Darknet's inline function with its C types: x is a float,
 * a double constant or exp() makes the expression double, and the result is rounded to float
 * once at the end (f32(...) below); "int" is a comparison's 0 or 1.
 *
 *   act      f(x)                                                 f'(y)
 *   linear   x                                                    1  (delta left as is)
 *   relu     x * (x > 0)          (-0 for x < 0)                  y > 0
 *   leaky    x > 0 ? x : f32(.1 * x)                              y > 0 ? 1 : .1f
 *   logistic f32(1 / (1 + exp(-x)))                               (1 - y) * y
 *   relie    x > 0 ? x : f32(.01 * x)                             y > 0 ? 1 : .01f
 *   ramp     f32(x * (x > 0) + .1 * x)                            f32((y > 0) + .1)
 *   tanh     f32((exp(2x) - 1) / (exp(2x) + 1))   (2x in float)   1 - y*y
 *   plse     x < -4: f32(.01 (x + 4)); x > 4: f32(.01 (x - 4) + 1);  y < 0 or y > 1 ? .01f : .125f
 *            else f32(.125 x + .5)
 *   elu      f32((x >= 0) * x + (x < 0) * (exp(x) - 1))           (y >= 0) + (y < 0) * (y + 1)
 *   loggy    f32(2 / (1 + exp(-x)) - 1)                           t = f32((y + 1.) / 2.); 2 * (1 - t) * t
 *   stair    n = (int)floor(x); n even: f32(floor(x / 2.))        floor(y) == y ? 0 : 1
 *            else f32((x - n) + floor(x / 2.))
 *   hardtan  x < -1: -1; x > 1: 1; else x                         -1 < y < 1 ? 1 : 0
 *   lhtan    x < 0: f32(.001 x); x > 1: f32(.001 (x - 1) + 1); x    0 < y < 1 ? 1 : .001f
 *   selu     f32((x >= 0) * 1.0507 * x + (x < 0) * 1.0507 * 1.6732 * (exp(x) - 1))
 *                                                                 f32((y >= 0) * 1.0507 + (y < 0) * (y + 1.0507 * 1.6732))
 *
 * So the breakpoints are Darknet's: relu'(0) = 0, elu'(0) = 1, hardtan'(+-1) = 0, lhtan'(0) =
 * lhtan'(1) = .001, plse'(0) = plse'(1) = .125, stair' = 0 at integers. Overflow is Darknet's
 * too: tanh of x > ~354 is inf/inf = NaN, elu of x > ~709 is x + 0*inf = NaN. stair's (int) of
 * a float outside int range (or NaN) is what x86 gives, INT_MIN (C leaves it undefined; wasm
 * would trap).
 *
 * act_array: x[i] = f(x[i]);  grad_array: delta[i] *= f'(y[i]);  one loop per activation. */
#ifndef DLK_ACTIVATION_H
#define DLK_ACTIVATION_H

#include <limits.h>
#include <math.h>
#include <stddef.h>
#include "simd.h"

/* codes 0-3 as before (kernels test act >= ACT_LEAKY for "not linear, not relu"); the rest in
 * Darknet's enum order */
enum dlk_activation {
    ACT_LINEAR = 0, ACT_RELU = 1, ACT_LEAKY = 2, ACT_LOGISTIC = 3,
    ACT_RELIE = 4, ACT_RAMP = 5, ACT_TANH = 6, ACT_PLSE = 7, ACT_ELU = 8, ACT_LOGGY = 9,
    ACT_STAIR = 10, ACT_HARDTAN = 11, ACT_LHTAN = 12, ACT_SELU = 13
};
#define ACT_COUNT 14

/* (int)floor(x) as x86's cvttsd2si: INT_MIN outside int range and for NaN */
static inline int act_floor_int(float x)
{
    double f = floor((double)x);
    return (f >= -2147483648.0 && f < 2147483648.0) ? (int)f : INT_MIN;
}

static inline float act(float x, int a)
{
    switch (a) {
    case ACT_RELU: return x * (x > 0);
    case ACT_LEAKY: return x > 0 ? x : (float)(.1 * x);
    case ACT_LOGISTIC: return (float)(1. / (1. + exp(-(double)x)));
    case ACT_RELIE: return x > 0 ? x : (float)(.01 * x);
    case ACT_RAMP: return (float)(x * (x > 0) + .1 * x);
    case ACT_TANH: {
        float x2 = 2 * x;
        return (float)((exp((double)x2) - 1) / (exp((double)x2) + 1));
    }
    case ACT_PLSE:
        if (x < -4) return (float)(.01 * (x + 4));
        if (x > 4) return (float)(.01 * (x - 4) + 1);
        return (float)(.125 * x + .5);
    case ACT_ELU: return (float)((x >= 0) * x + (x < 0) * (exp((double)x) - 1));
    case ACT_LOGGY: return (float)(2. / (1. + exp(-(double)x)) - 1);
    case ACT_STAIR: {
        int n = act_floor_int(x);
        if (n % 2 == 0) return (float)floor(x / 2.);
        return (float)((x - n) + floor(x / 2.));
    }
    case ACT_HARDTAN:
        if (x < -1) return -1;
        if (x > 1) return 1;
        return x;
    case ACT_LHTAN:
        if (x < 0) return (float)(.001 * x);
        if (x > 1) return (float)(.001 * (x - 1) + 1);
        return x;
    case ACT_SELU: return (float)((x >= 0) * 1.0507 * x + (x < 0) * 1.0507 * 1.6732 * (exp((double)x) - 1));
    default: return x;
    }
}

static inline float grad(float y, int a)
{
    switch (a) {
    case ACT_RELU: return (float)(y > 0);
    case ACT_LEAKY: return y > 0 ? 1.f : .1f;
    case ACT_LOGISTIC: return (1 - y) * y;
    case ACT_RELIE: return y > 0 ? 1.f : .01f;
    case ACT_RAMP: return (float)((y > 0) + .1);
    case ACT_TANH: return 1 - y * y;
    case ACT_PLSE: return (y < 0 || y > 1) ? .01f : .125f;
    case ACT_ELU: return (y >= 0) + (y < 0) * (y + 1);
    case ACT_LOGGY: {
        float t = (float)((y + 1.) / 2.);
        return 2 * (1 - t) * t;
    }
    case ACT_STAIR: return floor(y) == y ? 0.f : 1.f;
    case ACT_HARDTAN: return (y > -1 && y < 1) ? 1.f : 0.f;
    case ACT_LHTAN: return (y > 0 && y < 1) ? 1.f : .001f;
    case ACT_SELU: return (float)((y >= 0) * 1.0507 + (y < 0) * (y + 1.0507 * 1.6732));
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
    case ACT_RELIE: DLK_ACT_LOOP(ACT_RELIE); break;
    case ACT_RAMP: DLK_ACT_LOOP(ACT_RAMP); break;
    case ACT_TANH: DLK_ACT_LOOP(ACT_TANH); break;
    case ACT_PLSE: DLK_ACT_LOOP(ACT_PLSE); break;
    case ACT_ELU: DLK_ACT_LOOP(ACT_ELU); break;
    case ACT_LOGGY: DLK_ACT_LOOP(ACT_LOGGY); break;
    case ACT_STAIR: DLK_ACT_LOOP(ACT_STAIR); break;
    case ACT_HARDTAN: DLK_ACT_LOOP(ACT_HARDTAN); break;
    case ACT_LHTAN: DLK_ACT_LOOP(ACT_LHTAN); break;
    case ACT_SELU: DLK_ACT_LOOP(ACT_SELU); break;
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
    case ACT_RELIE: DLK_GRAD_LOOP(ACT_RELIE); break;
    case ACT_RAMP: DLK_GRAD_LOOP(ACT_RAMP); break;
    case ACT_TANH: DLK_GRAD_LOOP(ACT_TANH); break;
    case ACT_PLSE: DLK_GRAD_LOOP(ACT_PLSE); break;
    case ACT_ELU: DLK_GRAD_LOOP(ACT_ELU); break;
    case ACT_LOGGY: DLK_GRAD_LOOP(ACT_LOGGY); break;
    case ACT_STAIR: DLK_GRAD_LOOP(ACT_STAIR); break;
    case ACT_HARDTAN: DLK_GRAD_LOOP(ACT_HARDTAN); break;
    case ACT_LHTAN: DLK_GRAD_LOOP(ACT_LHTAN); break;
    case ACT_SELU: DLK_GRAD_LOOP(ACT_SELU); break;
    default: break;
    }
}
#undef DLK_GRAD_LOOP

#endif
