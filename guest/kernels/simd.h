/* Four-lane float and int vectors (wasm SIMD128 with -msimd128, SSE natively), with
 * unaligned loads and stores. Lanes always hold different elements, never parts of one sum. */
#ifndef DLK_SIMD_H
#define DLK_SIMD_H

#include <stdint.h>
#include <string.h>

typedef float v4f __attribute__((vector_size(16)));
typedef int32_t v4i __attribute__((vector_size(16)));

static inline v4f v4f_load(const float *p) { v4f v; memcpy(&v, p, 16); return v; }
static inline void v4f_store(float *p, v4f v) { memcpy(p, &v, 16); }
static inline v4f v4f_splat(float x) { v4f v = {x, x, x, x}; return v; }

/* acc + a*b lane by lane: a product rounded, then a sum rounded (Darknet's two roundings).
 * Fast units built with DLK_FAST_FMA (scripts/build_kernels.py, off by default): one fused
 * rounding, f32x4.relaxed_madd in wasm (-mrelaxed-simd; fused under wasmtime on x86-64 with
 * FMA, and always with relaxed_simd_deterministic), fma natively (-mfma). */
#if defined(DLK_FAST_FMA) && defined(__wasm_relaxed_simd__)
#define v4f_madd(acc, a, b) __builtin_wasm_relaxed_madd_f32x4((a), (b), (acc))
#elif defined(DLK_FAST_FMA)
#define v4f_madd(acc, a, b) __builtin_elementwise_fma((a), (b), (acc))
#else
#define v4f_madd(acc, a, b) ((acc) + (a) * (b))
#endif

/* r = the rows of the transpose of the 4x4 block whose rows are r */
static inline __attribute__((always_inline)) void v4_transpose(v4f r[4])
{
    v4f t0 = __builtin_shufflevector(r[0], r[1], 0, 4, 1, 5), t1 = __builtin_shufflevector(r[0], r[1], 2, 6, 3, 7);
    v4f t2 = __builtin_shufflevector(r[2], r[3], 0, 4, 1, 5), t3 = __builtin_shufflevector(r[2], r[3], 2, 6, 3, 7);
    r[0] = __builtin_shufflevector(t0, t2, 0, 1, 4, 5);
    r[1] = __builtin_shufflevector(t0, t2, 2, 3, 6, 7);
    r[2] = __builtin_shufflevector(t1, t3, 0, 1, 4, 5);
    r[3] = __builtin_shufflevector(t1, t3, 2, 3, 6, 7);
}

#endif
