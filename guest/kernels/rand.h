/* musl's rand() (wasi-libc links musl's), the one generator of Darknet's randomness (docs/darknet-contract.md §10.2):
 *
 *   s = s*6364136223846793005 + 1 (mod 2^64);  rand() = s >> 33   (31 bits)
 *
 * The state lives with the caller (dlserver.rng.Random); kernels take it and give it back. */
#ifndef DLK_RAND_H
#define DLK_RAND_H

#include <stdint.h>

static inline uint32_t musl_rand(uint64_t *s)
{
    *s = *s * 6364136223846793005ULL + 1;
    return (uint32_t)(*s >> 33);
}

#endif
