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
#include "conv_train.c"
#include "connected_train.c"
#include "random.c"
#include "png_fast.c"
#include "jpeg.c"
#include "detect.c"

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
    {"resize_image", dlk_resize_image, METH_VARARGS,
     "resize_image(src, sw, sh, c, dst, dw, dh, part): Darknet's bilinear resize (part: dw*sh*c floats)"},
    {"image_paste", dlk_image_paste, METH_VARARGS,
     "image_paste(src, sw, sh, c, dst, dw, dh, dx, dy, multiply): embed_image / composite_image"},
    {"upsample", dlk_upsample, METH_VARARGS,
     "upsample(in, batch, c, h, w, stride, scale, out, forward): nearest-neighbour up (or sum back)"},
    {"draw_box_width", dlk_draw_box_width, METH_VARARGS,
     "draw_box_width(im, w, h, x1, y1, x2, y2, width, r, g, b)"},
    {"draw_label", dlk_draw_label, METH_VARARGS, "draw_label(im, w, h, label, lw, lh, row, col, r, g, b)"},
    {"chw_to_pixels", dlk_chw_to_pixels, METH_VARARGS, "chw_to_pixels(im, w, h, c, out): bytes (uchar)(255*v)"},
    {"nms_sort", dlk_nms_sort, METH_VARARGS,
     "nms_sort(boxes, objectness, probs, n, classes, thresh, order) -> boxes taking part: do_nms_sort"},
    {"musl_sort_desc", dlk_musl_sort_desc, METH_VARARGS,
     "musl_sort_desc(keys, n, order): musl qsort (smoothsort) order of keys, descending"},
    {"yolo_candidates", dlk_yolo_candidates, METH_VARARGS,
     "yolo_candidates(output, w, h, n, classes, anchors, netw, neth, thresh, boxes, objectness, probs) -> count"},
    {"conv_forward", dlk_conv_forward, METH_VARARGS,
     "conv_forward(in, batch, c, h, w, weights, n, size, pad, biases, act, out): stride-1 conv + bias + act"},
    {"conv_backward", dlk_conv_backward, METH_VARARGS,
     "conv_backward(in, batch, c, h, w, out, delta, n, size, pad, act, weights, bias_upd, weight_upd, prev_delta|None)"},
    {"maxpool_forward_2x2", dlk_maxpool_forward_2x2, METH_VARARGS,
     "maxpool_forward_2x2(in, planes, h, w, out, indexes): size 2 stride 2, every window inside"},
    {"connected_backward", dlk_connected_backward, METH_VARARGS,
     "connected_backward(in, batch, inputs, out, delta, outputs, act, weights, bias_upd, weight_upd, prev_delta|None)"},
    {"sgd_update", dlk_sgd_update, METH_VARARGS,
     "sgd_update(biases, bias_upd, weights, weight_upd, step, momentum, decay)"},
    {"rand_uniform_fill", dlk_rand_uniform_fill, METH_VARARGS,
     "rand_uniform_fill(out, n, a, b, scale, state) -> state"},
    {"rand_normal_fill", dlk_rand_normal_fill, METH_VARARGS,
     "rand_normal_fill(out, n, scale, state, spare) -> (state, spare)"},
    {"rand_below", dlk_rand_below, METH_VARARGS, "rand_below(n, m, state) -> (state, [rand() % m, ...])"},
    {"png_load_chw", dlk_png_load_chw, METH_VARARGS,
     "png_load_chw(data, width, height, out) -> True, or False: not a plain 8-bit PNG of that size"},
    {"png_load_rows", dlk_png_load_rows, METH_VARARGS,
     "png_load_rows(files, width, height, out) -> [rows png_load_chw did not take]"},
    {"read_files", dlk_read_files, METH_VARARGS, "read_files(paths) -> [bytes, or None where open/pread failed]"},
    {NULL, NULL, 0, NULL}
};

static struct PyModuleDef dlk_module = {PyModuleDef_HEAD_INIT, "_dlk", "dl-server kernels", -1, dlk_methods};

PyMODINIT_FUNC PyInit__dlk(void)
{
    PyObject *m = PyModule_Create(&dlk_module);
    if (m == NULL) return NULL;
    static const struct { const char *name; long value; } constants[] = {
        {"ACT_LINEAR", ACT_LINEAR}, {"ACT_RELU", ACT_RELU}, {"ACT_LEAKY", ACT_LEAKY}, {"ACT_LOGISTIC", ACT_LOGISTIC},
        {"JPEG_GRAY", JPG_MODE_GRAY}, {"JPEG_YCBCR", JPG_MODE_YCBCR}, {"JPEG_RGB", JPG_MODE_RGB},
        {"JPEG_CMYK", JPG_MODE_CMYK}, {"JPEG_YCCK", JPG_MODE_YCCK},
    };
    for (size_t i = 0; i < sizeof constants / sizeof constants[0]; ++i)
        if (PyModule_AddIntConstant(m, constants[i].name, constants[i].value) < 0) { Py_DECREF(m); return NULL; }
    return m;
}
