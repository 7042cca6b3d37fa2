/* The fast mode (docs/darknet-contract.md §10.5): the hot kernels of gemm.c and conv.c are
 * compiled twice, once as they are (exact, Darknet's roundings) and once more through
 * gemm_fast.c / conv_fast.c with -DDLK_FAST (and -mrelaxed-simd in wasm, -mfma natively on
 * x86-64), where v4f_madd is one fused multiply-add (simd.h) and the exported kernels carry a
 * `_fast` suffix. While dlk_fast_mode is set (kernels.set_fast_mode), each exact kernel hands
 * its call to its fast twin; the exact code itself is unchanged. Include before kernels.h. */
#ifndef DLK_FAST_H
#define DLK_FAST_H

#ifdef DLK_FAST
#define dlk_gemm dlk_gemm_fast
#define dlk_conv2d_direct dlk_conv2d_direct_fast
#define dlk_conv_forward dlk_conv_forward_fast
#define dlk_conv_backward dlk_conv_backward_fast
#endif

#endif
