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

#endif
