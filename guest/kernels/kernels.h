/* The kernels of _dlk: plain C over pointers and sizes, no Python. bindings.c parses the
 * Python arguments, checks that every buffer holds what a kernel touches, and calls them.
 * The math of each kernel is written above it in its file:
 *
 *   gemm.c       gemm
 *   conv.c       im2col, col2im; conv2d_direct; conv_forward, conv_backward (training, fused)
 *   connected.c  connected_backward
 *   pool.c       maxpool_forward, maxpool_backward, maxpool_forward_2x2, avgpool_forward, avgpool_backward
 *   blas.c       axpy, scal, fill, activate, gradient, add_bias, backward_bias, batchnorm_infer,
 *                sgd_update, shortcut
 *   loss.c       softmax, softmax_cost, sse_cost, cost_forward, logistic_x_ent
 *   normalize.c  l2norm_forward, lrn_forward, lrn_backward
 *   dropout.c    dropout_forward, dropout_backward
 *   random.c     rand_uniform_fill, rand_normal_fill, rand_below
 *   image.c      pixels_to_chw, chw_to_pixels, resize_image, image_paste, upsample
 *   draw.c       draw_box_width, draw_label
 *   yolo.c       yolo_candidates, nms_sort (musl's smoothsort), yolo_delta
 *   region.c     reorg, flatten, crop, softmax_strided, region_boxes, detection_boxes, region_delta
 *   local.c      local_forward, local_backward
 *   png.c        png_unfilter, png_expand_palette, png_load_chw (inflate, CRC)
 *   jpeg.c       jpeg_decode_scan, jpeg_idct, jpeg_color, jpeg_encode_scan
 *   io.c         read_file
 *   batchnorm.c  batchnorm_forward_train, batchnorm_backward (training statistics and deltas)
 *   recurrent.c  rnn_mul, rnn_weighted_sum, rnn_weighted_delta, rnn_mult_add
 *   activation.h the activations and their derivatives (one enum, act, grad)
 *   rand.h       musl's rand() step
 *   simd.h       4-lane vectors
 *   fast.h       the fast mode: gemm_fast.c, conv_fast.c (fused multiply-adds), winograd_fast.c
 *
 * Sizes are int where Darknet's are, ptrdiff_t for element counts. Kernels that can fail
 * return 0 or a negative DLK_ERR_* code; the others return nothing or a value. */
#ifndef DLK_KERNELS_H
#define DLK_KERNELS_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "activation.h"

enum {
    DLK_ERR_NOMEM = -100,          /* malloc failed */
    DLK_ERR_BAD_TABLE = -101,      /* a JPEG Huffman table that is no prefix code */
};

/* ------------------------------------------------------------------ gemm.c */

int dlk_gemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
             float beta, float *C, int ldc);

/* ------------------------------------------------------------------ conv.c */

/* output side of a convolution (im2col) */
static inline int dlk_conv_out_size(int n, int ksize, int stride, int pad)
{
    return (n + 2 * pad - ksize) / stride + 1;
}

void dlk_im2col(const float *im, int c, int h, int w, int ksize, int stride, int pad, float *col);
void dlk_col2im(const float *col, int c, int h, int w, int ksize, int stride, int pad, float *im);

long long dlk_conv2d_direct_workspace(int c, int h, int w, int size, int pad);
void dlk_conv2d_direct(const float *in, int batch, int c, int h, int w, const float *weights, int n, int size,
                       int pad, float *out, float *workspace);

/* The training convolution's geometry (dlk_conv_geometry fills it). */
#define DLK_CONV_MAX_SIZE 8
typedef struct {
    int c, h, w, n, size, pad, oh, ow, K;
    int PH, PW;            /* padded input plane (forward reads 8*nblk + size - 1 columns) */
    int nblk;              /* blocks of 8 output columns */
} dlk_conv_geom;
enum {
    DLK_CONV_BAD_GEOMETRY = 1,       /* sizes <= 0, size > DLK_CONV_MAX_SIZE, or pad outside 0 .. size-1 */
    DLK_CONV_KERNEL_TOO_LARGE = 2,   /* no output */
    DLK_CONV_TOO_LARGE = 3,          /* over 2^26 inputs or outputs per image, or 2^16 filters */
};
int dlk_conv_geometry(dlk_conv_geom *g, int c, int h, int w, int n, int size, int pad);
int dlk_conv_forward(const dlk_conv_geom *g, int batch, const float *in, const float *weights, const float *biases,
                     int act, float *out);
int dlk_conv_backward(const dlk_conv_geom *g, int batch, const float *in, const float *out, float *delta, int act,
                      const float *weights, float *bias_upd, float *weight_upd, float *prev);

/* ------------------------------------------------------------------ connected.c */

int dlk_connected_backward(const float *in, int batch, int inputs, const float *out, float *delta, int outputs,
                           int act, const float *weights, float *bias_upd, float *weight_upd, float *prev);

/* ------------------------------------------------------------------ pool.c */

/* output side of a max pool */
static inline int dlk_pool_out_size(int n, int size, int stride, int pad) { return (n + pad - size) / stride + 1; }

void dlk_maxpool_forward(const float *in, int batch, int c, int h, int w, int size, int stride, int pad, float *out,
                         int32_t *indexes);
ptrdiff_t dlk_maxpool_backward(const float *out_delta, const int32_t *indexes, ptrdiff_t n, float *in_delta,
                               ptrdiff_t n_in);
void dlk_maxpool_forward_2x2(const float *in, int planes, int h, int w, float *out, int32_t *indexes);
void dlk_avgpool_forward(const float *in, int planes, int n, float *out);
void dlk_avgpool_backward(const float *out_delta, int planes, int n, float *in_delta);

/* ------------------------------------------------------------------ blas.c */

void dlk_axpy(ptrdiff_t n, float a, const float *x, float *y);
void dlk_scal(ptrdiff_t n, float a, float *x);
void dlk_fill(ptrdiff_t n, float a, float *x);
void dlk_activate(float *x, ptrdiff_t n, int act);
void dlk_gradient(const float *y, ptrdiff_t n, int act, float *delta);
void dlk_add_bias(float *out, const float *biases, int batch, int n, int size);
void dlk_backward_bias(float *bias_upd, const float *delta, int batch, int n, int size);
void dlk_batchnorm_infer(float *x, const float *mean, const float *var, const float *scales, const float *biases,
                         int batch, int n, int size);
void dlk_sgd_update(float *biases, float *bias_upd, ptrdiff_t nb, float *weights, float *weight_upd, ptrdiff_t nw,
                    float step, float momentum, float decay);
void dlk_shortcut(int batch, int w1, int h1, int c1, const float *add, int w2, int h2, int c2, float s1, float s2,
                  float *out);

/* ------------------------------------------------------------------ loss.c */

void dlk_softmax(const float *in, int batch, int n, float temp, float *out);
float dlk_softmax_cost(const float *y, const float *truth, float *delta, ptrdiff_t n);
float dlk_sse_cost(const float *x, const float *truth, float *delta, ptrdiff_t n);
enum dlk_cost_type { COST_L2 = 0, COST_MASKED = 1, COST_SMOOTH = 2, COST_L1 = 3 };
float dlk_cost_forward(int type, float *x, const float *truth, float *delta, float *err, ptrdiff_t n);
float dlk_logistic_x_ent(const float *p, const float *truth, float *delta, float *err, ptrdiff_t n);

/* ------------------------------------------------------------------ normalize.c */

void dlk_l2norm_forward(const float *in, int batch, int c, int spatial, float *out);
void dlk_lrn_forward(const float *in, int batch, int c, int spatial, int size, float alpha, float beta, float kappa,
                     float *squared, float *norms, float *out);
void dlk_lrn_backward(const float *norms, const float *delta, ptrdiff_t n, float beta, float *prev_delta);

/* ------------------------------------------------------------------ dropout.c, random.c */

uint64_t dlk_dropout_forward(float *x, ptrdiff_t n, float prob, float scale, float *rnd, uint64_t state);
void dlk_dropout_backward(float *delta, ptrdiff_t n, float prob, float scale, const float *rnd);

/* Box-Muller's cached second value: have, and the pair (r1, r2) it comes from */
typedef struct { int have; double r1, r2; } dlk_normal_spare;
uint64_t dlk_rand_uniform_fill(float *out, ptrdiff_t n, double a, double b, double scale, uint64_t state);
uint64_t dlk_rand_normal_fill(float *out, ptrdiff_t n, double scale, uint64_t state, dlk_normal_spare *spare);
uint64_t dlk_rand_below(ptrdiff_t n, long long m, uint64_t state, long long *out);

/* ------------------------------------------------------------------ image.c, draw.c */

void dlk_pixels_to_chw(const uint8_t *src, int width, int height, int comps, float *out);
void dlk_chw_to_pixels(const float *im, int w, int h, int c, uint8_t *out);
void dlk_resize_image(const float *src, int sw, int sh, int c, float *dst, int dw, int dh, float *part);
void dlk_image_paste(const float *src, int sw, int sh, int c, float *dst, int dw, int dh, int dx, int dy,
                     int multiply);
void dlk_upsample(float *in, int batch, int c, int h, int w, int stride, float scale, float *out, int forward);
void dlk_draw_box_width(float *im, int w, int h, int x1, int y1, int x2, int y2, int width, const float rgb[3]);
void dlk_draw_label(float *im, int w, int h, const float *label, int lw, int lh, int r, int c, const float rgb[3]);

/* ------------------------------------------------------------------ yolo.c */

long long dlk_yolo_candidates(const float *output, int w, int h, int n, int classes, const float *anchors, int netw,
                              int neth, float thresh, float *boxes, float *objectness, float *probs);
int dlk_nms_sort(const float *boxes, const float *objectness, float *probs, int n, int classes, float thresh,
                 int *order);
void dlk_yolo_delta(const float *output, float *delta, int batch, int w, int h, int n, int classes, const int *mask,
                    int total, const float *biases, int netw, int neth, const float *truth, long long truth_len,
                    int max_boxes, float ignore_thresh, float truth_thresh, float *stats);
#ifdef DLK_TEST_HOOKS
void dlk_musl_sort_desc(const float *keys, int n, int *order);
#endif

/* ------------------------------------------------------------------ region.c, local.c */

void dlk_reorg(const float *x, int w, int h, int c, int batch, int stride, int forward, float *out);
void dlk_flatten(const float *x, int size, int layers, int batch, int forward, float *out);
void dlk_crop(const float *in, int batch, int c, int h, int w, int out_h, int out_w, int dh, int dw, int flip,
              float scale, float trans, float *out);
void dlk_softmax_strided(const float *in, int n, int batch, int batch_offset, int groups, int group_offset,
                         int stride, float temp, float *out);
void dlk_region_boxes(float *output, int w, int h, int n, int classes, int coords, int background,
                      const float *biases, float thresh, const int *parent, const int *group_size,
                      const int *group_offset, const int *child, float tree_thresh, float *boxes,
                      float *objectness, float *probs);
void dlk_detection_boxes(const float *output, int side, int n, int classes, int sqrt_wh, int w, int h,
                         float thresh, float *boxes, float *objectness, float *probs);
void dlk_region_delta(const float *output, float *delta, int batch, int w, int h, int n, int classes, int coords,
                      const float *biases, const float *truth, float thresh, const float *scales, int rescore,
                      int background, int bias_match, int softmax, long long seen, const int *map, const int *parent,
                      const int *group, const int *group_size, const int *group_offset, float *stats);
void dlk_local_forward(const float *in, int batch, int c, int h, int w, int size, int stride, int pad, int n,
                       const float *weights, const float *biases, float *out, float *workspace);
void dlk_local_backward(const float *in, int batch, int c, int h, int w, int size, int stride, int pad, int n,
                        const float *weights, const float *delta, float *bias_upd, float *weight_upd, float *prev,
                        float *workspace);

/* ------------------------------------------------------------------ png.c */

int dlk_png_unfilter(const uint8_t *in, int height, int rowbytes, int bpp, uint8_t *out);
ptrdiff_t dlk_png_expand_palette(const uint8_t *indexes, const uint8_t *palette, ptrdiff_t entries, ptrdiff_t n,
                                 int comps, uint8_t *out);
int dlk_png_load_chw(const uint8_t *data, size_t n, int width, int height, float *out);

/* ------------------------------------------------------------------ jpeg.c */

/* jpeg_decode_scan's errors in the data (dlserver.image.jpeg words them) */
enum {
    JPEG_ERR_HUFFMAN = -1,         /* a bit pattern no code of the table matches */
    JPEG_ERR_EOF = -2,             /* the file ends inside the entropy-coded data */
    JPEG_ERR_SHORT = -3,           /* a marker arrives before the scan's last block */
    JPEG_ERR_RESTART = -4,         /* a marker other than RSTn where a restart is due */
    JPEG_ERR_DC = -5,              /* DC magnitude category above 15 */
    JPEG_ERR_REFINE = -6,          /* AC refinement symbol with a magnitude other than 1 */
    JPEG_ERR_TRAILING = -7,        /* entropy-coded bytes after the scan's last block */
};

/* jpeg_color's colour modes */
enum { JPEG_GRAY = 0, JPEG_YCBCR = 1, JPEG_RGB = 2, JPEG_CMYK = 3, JPEG_YCCK = 4 };

/* One component of a scan. */
typedef struct {
    ptrdiff_t first;               /* its first coefficient in coeffs (int16 units) */
    int coef_w, coef_h;            /* blocks per row and per column of its coefficient array */
    int h, v;                      /* sampling factors H, V */
    int scan_w, scan_h;            /* blocks across and down of a non-interleaved scan */
    int dc_table, ac_table;        /* Huffman tables 0..3 */
} dlk_jpeg_scan_comp;

/* A scan (SOS with its frame). For a baseline scan ss, se, ah, al are 0, 63, 0, 0. */
typedef struct {
    int progressive;               /* 0 or 1 */
    int ss, se, ah, al;            /* spectral selection, successive approximation */
    int restart;                   /* restart interval in MCUs, 0: none */
    int mcus_x, mcus_y;            /* MCUs across and down */
    int ncomps;                    /* 1..4 */
    dlk_jpeg_scan_comp comp[4];
} dlk_jpeg_scan;

/* One component plane for jpeg_color. */
typedef struct {
    ptrdiff_t first;               /* its first byte in planes */
    int stride, rows;              /* row stride; rows holding samples */
    int hs, vs;                    /* Hmax/H, Vmax/V: 1..4 */
} dlk_jpeg_plane;

int dlk_jpeg_decode_scan(const uint8_t *bytes, ptrdiff_t len, ptrdiff_t start, const dlk_jpeg_scan *scan,
                         const uint8_t *tables, int16_t *coeffs, ptrdiff_t *end);
void dlk_jpeg_idct(const int16_t *coeffs, int blocks_w, int blocks_h, const uint16_t quant[64], uint8_t *plane);
int dlk_jpeg_color(const uint8_t *planes, const dlk_jpeg_plane *comps, int n, int width, int height, int mode,
                   uint8_t *out);
int dlk_jpeg_encode_scan(const uint8_t *pixels, int width, int height, int comp, const uint8_t ytable[64],
                         const uint8_t uvtable[64], const uint8_t *huffman, uint8_t **data, size_t *len);

/* ------------------------------------------------------------------ batchnorm.c */

void dlk_batchnorm_forward_train(float *out, float *x, float *x_norm, float *mean, float *var, float *rolling_mean,
                                 float *rolling_var, const float *scales, const float *biases, int batch, int n,
                                 int size);
void dlk_batchnorm_backward(const float *x, const float *x_norm, float *delta, const float *mean, const float *var,
                            const float *scales, float *scale_upd, float *bias_upd, float *mean_delta,
                            float *var_delta, int batch, int n, int size);

/* ------------------------------------------------------------------ io.c */

#define DLK_READ_STEP 65536
#define DLK_DIRS 16
struct dlk_dirs { /* the directories of one batch's files, open (io.c) */
    int fd[DLK_DIRS];
    char *path[DLK_DIRS];
    size_t len[DLK_DIRS];
    int next;
};
void dlk_dirs_init(struct dlk_dirs *dirs);
void dlk_dirs_close(struct dlk_dirs *dirs);
int dlk_read_file(struct dlk_dirs *dirs, const char *path, char **buf, size_t *cap, size_t *len,
                  long long max_bytes);

/* ------------------------------------------------------------------ recurrent.c */

void dlk_rnn_mul(ptrdiff_t n, const float *x, float *y);
void dlk_rnn_weighted_sum(ptrdiff_t n, const float *a, const float *b, const float *s, float *c);
void dlk_rnn_weighted_delta(ptrdiff_t n, const float *a, const float *b, const float *s, float *da, float *db,
                            float *ds, const float *dc);
void dlk_rnn_mult_add(ptrdiff_t n, const float *a, const float *b, float *c);

/* ------------------------------------------------------------------ robust.c */

enum { DLK_RULE_MEDIAN = 0, DLK_RULE_TRIMMED = 1, DLK_RULE_CLOSEST = 2 };
enum { DLK_OPT_AVGM = 0, DLK_OPT_ADAM = 1, DLK_OPT_YOGI = 2, DLK_OPT_ADAGRAD = 3 };
void dlk_pair_sqdist(int n, const float *const *x, ptrdiff_t len, double *D);
int dlk_column_rule(int rule, int n, const float *const *x, ptrdiff_t len, int param, float *out);
void dlk_combine(int n, const float *const *x, const double *c, ptrdiff_t len, float *out);
void dlk_prox_add(ptrdiff_t n, float c, const float *w, const float *g, float *upd);
void dlk_clip_update(ptrdiff_t n, float s, const float *g, float *x);
uint64_t dlk_gauss_add(float *x, ptrdiff_t n, double std, const uint8_t *key, uint64_t counter);
void dlk_fedopt(int kind, ptrdiff_t n, float *x, const float *a, float *m, float *v, const double *p);

/* ------------------------------------------------------------------ fast mode (fast.h) */

/* Nonzero: gemm, conv2d_direct, conv_forward and conv_backward run their fast twins. */
extern int dlk_fast_mode;
/* 1 when this build can run the fast kernels (natively on x86-64: the CPU has FMA). */
int dlk_fast_supported(void);
int dlk_gemm_fast(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                  int ldb, float beta, float *C, int ldc);
void dlk_conv2d_direct_fast(const float *in, int batch, int c, int h, int w, const float *weights, int n,
                            int size, int pad, float *out, float *workspace);
int dlk_conv_forward_fast(const dlk_conv_geom *g, int batch, const float *in, const float *weights,
                          const float *biases, int act, float *out);
int dlk_conv_backward_fast(const dlk_conv_geom *g, int batch, const float *in, const float *out, float *delta,
                           int act, const float *weights, float *bias_upd, float *weight_upd, float *prev);

/* winograd_fast.c: F(m x m, 3 x 3), m = 2 or 4; U = dlk_winograd_weights(W) (size: _size); at most
 * DLK_WINOGRAD_MAX_C input channels (the gemm's packed block of B holds 4 columns at full depth) */
#define DLK_WINOGRAD_MAX_C 8192
long long dlk_winograd_weights_size(int n, int c, int m);
void dlk_winograd_weights(const float *W, int n, int c, int m, float *U);
int dlk_conv_winograd(const float *in, int batch, int c, int h, int w, const float *U, int n, int pad, int m,
                      float *out);
/* ... the same from the 3x3 weights W, transformed as they are used (nothing kept) */
int dlk_conv_winograd_fused(const float *in, int batch, int c, int h, int w, const float *W, int n, int pad, int m,
                            float *out);
/* gemm_fast.c: C = Ap . B^T, op(A) packed by the caller in panels of 8 rows (winograd_fast.c) */
void dlk_gemm_prepacked(int M, int N, int K, const float *Ap, const float *B, int ldb, float *C, int ldc);
void dlk_gemm_pack_bt(int N, int K, const float *B, int ldb, float *bp);
void dlk_gemm_panel8(int N, int K, const float *ap, const float *bp, float *C, int ldc);

#endif
