/* gemm.c's fast twin: fused multiply-adds (fast.h). */
#define DLK_FAST 1
#include "gemm.c"
