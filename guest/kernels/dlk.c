/* _dlk: the loops over memory of dl-server (stable ABI, one source for wasm32 and native).
 * Shapes and wiring stay in Python; each kernel documents its math above it. */
#include "dlk_common.h"
#include "gemm.c"
#include "conv.c"
#include "activation.c"
#include "pool.c"
#include "softmax.c"
#include "blas.c"
#include "image.c"
#include "png.c"
#include "direct_conv.c"
#include "train.c"
#include "jpeg.c"

static PyMethodDef dlk_methods[] = {
    {"gemm", dlk_gemm, METH_VARARGS, "gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc)"},
    {"im2col", dlk_im2col, METH_VARARGS, "im2col(im, c, h, w, ksize, stride, pad, col)"},
    {"col2im", dlk_col2im, METH_VARARGS, "col2im(col, c, h, w, ksize, stride, pad, im)"},
    {"add_bias", dlk_add_bias, METH_VARARGS, "add_bias(out, biases, batch, n, size)"},
    {"activate", dlk_activate, METH_VARARGS, "activate(x, n, act)"},
    {"gradient", dlk_gradient, METH_VARARGS, "gradient(y, n, act, delta)"},
    {"batchnorm_infer", dlk_batchnorm_infer, METH_VARARGS,
     "batchnorm_infer(x, mean, var, scales, biases, batch, n, size)"},
    {"maxpool_forward", dlk_maxpool_forward, METH_VARARGS,
     "maxpool_forward(in, batch, c, h, w, size, stride, pad, out, indexes)"},
    {"maxpool_backward", dlk_maxpool_backward, METH_VARARGS,
     "maxpool_backward(out_delta, indexes, n, in_delta, n_in)"},
    {"softmax", dlk_softmax, METH_VARARGS, "softmax(in, batch, n, temperature, out)"},
    {"axpy", dlk_axpy, METH_VARARGS, "axpy(n, a, x, y): y += a*x"},
    {"scal", dlk_scal, METH_VARARGS, "scal(n, a, x): x *= a"},
    {"fill", dlk_fill, METH_VARARGS, "fill(n, a, x): x = a"},
    {"pixels_to_chw", dlk_pixels_to_chw, METH_VARARGS, "pixels_to_chw(src, width, height, comps, out)"},
    {"png_unfilter", dlk_png_unfilter, METH_VARARGS, "png_unfilter(src, height, rowbytes, bpp, out)"},
    {"png_expand_palette", dlk_png_expand_palette, METH_VARARGS,
     "png_expand_palette(indexes, palette, n, comps, out)"},
    {"conv2d_direct", dlk_conv2d_direct, METH_VARARGS,
     "conv2d_direct(in, batch, c, h, w, weights, n, size, pad, out, workspace): stride-1 convolution"},
    {"conv2d_direct_workspace", dlk_conv2d_direct_workspace, METH_VARARGS,
     "conv2d_direct_workspace(c, h, w, size, pad) -> floats of workspace conv2d_direct needs"},
    {"backward_bias", dlk_backward_bias, METH_VARARGS, "backward_bias(bias_updates, delta, batch, n, size)"},
    {"dropout_forward", dlk_dropout_forward, METH_VARARGS,
     "dropout_forward(x, n, probability, scale, rand, state) -> new rand() state"},
    {"dropout_backward", dlk_dropout_backward, METH_VARARGS, "dropout_backward(delta, n, probability, scale, rand)"},
    {"softmax_cost", dlk_softmax_cost, METH_VARARGS, "softmax_cost(y, truth, delta, n) -> cross-entropy sum"},
    {"sse_cost", dlk_sse_cost, METH_VARARGS, "sse_cost(x, truth, delta, n) -> sum of squares"},
    {"jpeg_decode_scan", dlk_jpeg_decode_scan, METH_VARARGS,
     "jpeg_decode_scan(data, start, params, tables, coeffs) -> end offset or negative error code"},
    {"jpeg_idct", dlk_jpeg_idct, METH_VARARGS,
     "jpeg_idct(coeffs, first, blocks_w, blocks_h, quant, plane, plane_first): dequantise + stb IDCT"},
    {"jpeg_color", dlk_jpeg_color, METH_VARARGS,
     "jpeg_color(planes, params, width, height, mode, out): stb upsampling + colour conversion"},
    {"jpeg_encode_scan", dlk_jpeg_encode_scan, METH_VARARGS,
     "jpeg_encode_scan(pixels, width, height, comp, ytable, uvtable, huffman) -> entropy-coded bytes"},
    {NULL, NULL, 0, NULL}
};

static struct PyModuleDef dlk_module = {PyModuleDef_HEAD_INIT, "_dlk", "dl-server kernels", -1, dlk_methods};

PyMODINIT_FUNC PyInit__dlk(void) { return PyModule_Create(&dlk_module); }
