/* conv.c's fast twin (conv2d_direct, conv_forward, conv_backward): fused multiply-adds (fast.h). */
#define DLK_FAST 1
#include "conv.c"
