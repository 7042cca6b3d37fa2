/* Federated aggregation rules beyond the mean (dlserver.rules): n client models x_0..x_{n-1}
 * of `len` floats each, given as n pointers (one tensor of every model at a time).
 *
 *   pair_sqdist:  D[i*n+j] += sum_k (x_i[k] - x_j[k])^2 for every i != j (D symmetric, the
 *                 diagonal untouched), each difference and square in double, summed in
 *                 double over blocks of PAIR_BLOCK coordinates (the block's n rows stay in
 *                 cache while every pair is visited)
 *   column_rule:  per coordinate k, the n values x_i[k] sorted ascending into s[0..n-1]
 *                 (a sorting network over blocks of coordinates, see sort_rows; the sign of
 *                 a zero result is unspecified when -0 and +0 tie):
 *                 MEDIAN   s[n/2] for odd n, f32((s[n/2-1] + s[n/2]) / 2) (double) for even n
 *                 TRIMMED  param k: a = f32(... f32(s[k] + s[k+1]) ...+ s[n-k-1]) (float32 steps,
 *                          ascending), out = f32(a / (n - 2k)) (double division)
 *                 CLOSEST  param beta (Bulyan's last step): med = the MEDIAN above; the beta
 *                          values nearest med by f32|s - med| form a window of s around the
 *                          median, grown one value at a time from the side whose next value is
 *                          nearer (the lower side on a tie); out = f32(window sum in float32
 *                          steps, ascending) / beta) (double division)
 *   combine:      out[k] = f32(sum_i c_i * x_i[k]), the sum in double in model order
 *   prox_add:     upd[k] = f32(upd[k] + f32(c * f32(w[k] - g[k])))  (FedProx's term in Darknet's
 *                 negative-gradient sums, c = f32(-mu * B) given by the caller)
 *   clip_update:  x[k] = f32(g[k] + f32(f32(x[k] - g[k]) * s))  (a client's update x - g scaled
 *                 by s, added back to g: Flower's compute_clip_model_update, float32 steps)
 *   gauss_add:    x[k] = f32(x[k] + f32(std * z_k)), z_k standard normals by Box-Muller from
 *                 ChaCha20 (RFC 8439 block function, the 32-byte key given, nonce 0) blocks
 *                 numbered from `counter`: each 64-byte block gives 8 words of 64 bits, each
 *                 pair (w1, w2) -> u = ((w >> 11) + 0.5) * 2^-53, r = sqrt(-2 ln u1),
 *                 z = r cos(2 pi u2), r sin(2 pi u2); returns the next unused block number
 *   fedopt:       one server-optimiser step per coordinate, x the previous global model
 *                 (becomes the new one), a the clients' mean, m and v the optimiser state;
 *                 float32 steps with f32 constants unless said (Flower 1.42's numpy order):
 *                 AVGM     p = {lr, momentum, first}: g = x - a; if momentum > 0:
 *                          m = first ? g : f32(f32(momentum * m) + g), g = m;
 *                          x = f32(x - f32(lr * g))
 *                 d = f32(a - x); m = f32(f32(b1 * m) + f32(f32(1 - b1) * d)); d2 = f32(d * d)
 *                 ADAM     p = {eta_norm (double), b1, b2, tau}: v = f32(f32(b2 * v) +
 *                          f32(f32(1 - b2) * d2)); x = f32(x + (eta_norm * m) / f32(sqrtf(v) + tau))
 *                          (the step in double, numpy's float64 eta_norm)
 *                 YOGI     p = {eta, b1, b2, tau}: v = f32(v - f32(f32(f32(1 - b2) * d2) *
 *                          sign(f32(v - d2)))); x = f32(x + f32(f32(eta * m) / f32(sqrtf(v) + tau)))
 *                 ADAGRAD  p = {eta, b1, -, tau}: v = f32(v + d2); x as YOGI's */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "kernels.h"

#define PAIR_BLOCK 2048

void dlk_pair_sqdist(int n, const float *const *x, ptrdiff_t len, double *D)
{
    for (ptrdiff_t start = 0; start < len; start += PAIR_BLOCK) {
        ptrdiff_t end = start + PAIR_BLOCK < len ? start + PAIR_BLOCK : len;
        for (int i = 0; i < n; ++i)
            for (int j = i + 1; j < n; ++j) {
                const float *a = x[i], *b = x[j];
                double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
                ptrdiff_t k = start;
                for (; k + 4 <= end; k += 4) {
                    double d0 = (double)a[k] - b[k], d1 = (double)a[k + 1] - b[k + 1];
                    double d2 = (double)a[k + 2] - b[k + 2], d3 = (double)a[k + 3] - b[k + 3];
                    s0 += d0 * d0;
                    s1 += d1 * d1;
                    s2 += d2 * d2;
                    s3 += d3 * d3;
                }
                for (; k < end; ++k) {
                    double d = (double)a[k] - b[k];
                    s0 += d * d;
                }
                double s = (s0 + s1) + (s2 + s3);
                D[i * n + j] += s;
                D[j * n + i] += s;
            }
    }
}

/* Batcher's odd-even merge sort network for any n (comparators with an index >= n dropped),
 * applied to the rows of a block: row a and row b are compare-exchanged for every column at
 * once (a branch-free min/max loop the compiler vectorises). Equal values keep their rows. */
static void sort_rows(float *rows, int n, int width)
{
    for (int p = 1; p < n; p <<= 1)
        for (int k = p; k >= 1; k >>= 1)
            for (int j = k % p; j <= n - 1 - k; j += 2 * k)
                for (int i = 0; i <= k - 1 && i <= n - j - k - 1; ++i)
                    if ((i + j) / (2 * p) == (i + j + k) / (2 * p)) {
                        float *a = rows + (ptrdiff_t)(i + j) * width, *b = rows + (ptrdiff_t)(i + j + k) * width;
                        for (int c = 0; c < width; ++c) {
                            float x = a[c], y = b[c];
                            a[c] = y < x ? y : x;
                            b[c] = y < x ? x : y;
                        }
                    }
}

#define COLUMN_BLOCK 512

/* CLOSEST on a block of sorted rows: the window of each column grows in lock step over the
 * columns (selects instead of branches: the side taken differs from column to column). */
static void closest_means(const float *rows, int n, int width, int beta, int *lo, float *acc, float *out)
{
    const float *mid_lo = rows + (ptrdiff_t)((n - 1) / 2) * width, *mid_hi = rows + (ptrdiff_t)(n / 2) * width;
    for (int c = 0; c < width; ++c) {
        acc[c] = n % 2 ? mid_hi[c] : (float)(((double)mid_lo[c] + (double)mid_hi[c]) / 2); /* the median */
        lo[c] = (n - 1) / 2;
    }
    for (int size = 0; size < beta; ++size)
        for (int c = 0; c < width; ++c) {
            int l = lo[c], h = l + size; /* the window s[l..h) */
            float med = acc[c];
            float below = l > 0 ? fabsf(rows[(ptrdiff_t)(l - 1) * width + c] - med) : INFINITY;
            float above = h < n ? fabsf(rows[(ptrdiff_t)h * width + c] - med) : INFINITY;
            lo[c] = l - (l > 0 && (h == n || below <= above));
        }
    for (int c = 0; c < width; ++c) {
        float a = 0;
        for (int r = lo[c]; r < lo[c] + beta; ++r) a += rows[(ptrdiff_t)r * width + c];
        out[c] = (float)((double)a / beta);
    }
}

int dlk_column_rule(int rule, int n, const float *const *x, ptrdiff_t len, int param, float *out)
{
    float *rows = malloc((size_t)n * COLUMN_BLOCK * sizeof *rows);
    float *acc = malloc(COLUMN_BLOCK * sizeof *acc);
    int *lo_at = malloc(COLUMN_BLOCK * sizeof *lo_at);
    if (!rows || !acc || !lo_at) {
        free(rows);
        free(acc);
        free(lo_at);
        return DLK_ERR_NOMEM;
    }
    for (ptrdiff_t start = 0; start < len; start += COLUMN_BLOCK) {
        int width = len - start < COLUMN_BLOCK ? (int)(len - start) : COLUMN_BLOCK;
        for (int i = 0; i < n; ++i) memcpy(rows + (ptrdiff_t)i * width, x[i] + start, (size_t)width * sizeof *rows);
        sort_rows(rows, n, width);
        float *o = out + start;
        if (rule == DLK_RULE_MEDIAN) {
            const float *lo = rows + (ptrdiff_t)((n - 1) / 2) * width, *hi = rows + (ptrdiff_t)(n / 2) * width;
            if (n % 2)
                memcpy(o, hi, (size_t)width * sizeof *o);
            else
                for (int c = 0; c < width; ++c) o[c] = (float)(((double)lo[c] + (double)hi[c]) / 2);
        } else if (rule == DLK_RULE_TRIMMED) {
            for (int c = 0; c < width; ++c) acc[c] = 0;
            for (int r = param; r < n - param; ++r) {
                const float *row = rows + (ptrdiff_t)r * width;
                for (int c = 0; c < width; ++c) acc[c] += row[c];
            }
            for (int c = 0; c < width; ++c) o[c] = (float)((double)acc[c] / (n - 2 * param));
        } else {
            closest_means(rows, n, width, param, lo_at, acc, o);
        }
    }
    free(rows);
    free(acc);
    free(lo_at);
    return 0;
}

void dlk_combine(int n, const float *const *x, const double *c, ptrdiff_t len, float *out)
{
    for (ptrdiff_t k = 0; k < len; ++k) {
        double s = 0;
        for (int i = 0; i < n; ++i) s += c[i] * x[i][k];
        out[k] = (float)s;
    }
}

void dlk_prox_add(ptrdiff_t n, float c, const float *w, const float *g, float *upd)
{
    for (ptrdiff_t k = 0; k < n; ++k) {
        float d = w[k] - g[k];
        upd[k] += c * d;
    }
}

void dlk_clip_update(ptrdiff_t n, float s, const float *g, float *x)
{
    for (ptrdiff_t k = 0; k < n; ++k) {
        float u = x[k] - g[k];
        u *= s;
        x[k] = g[k] + u;
    }
}

/* ChaCha20 block function (RFC 8439 §2.3), nonce 0: 16 words of block `counter`. */
#define ROTL(v, c) (((v) << (c)) | ((v) >> (32 - (c))))
#define QR(a, b, c, d) \
    a += b; d ^= a; d = ROTL(d, 16); c += d; b ^= c; b = ROTL(b, 12); \
    a += b; d ^= a; d = ROTL(d, 8); c += d; b ^= c; b = ROTL(b, 7)

static void chacha20_block(const uint8_t key[32], uint64_t counter, uint32_t out[16])
{
    uint32_t st[16] = {0x61707865, 0x3320646e, 0x79622d32, 0x6b206574};
    for (int i = 0; i < 8; ++i)
        st[4 + i] = (uint32_t)key[4 * i] | (uint32_t)key[4 * i + 1] << 8 | (uint32_t)key[4 * i + 2] << 16 |
                    (uint32_t)key[4 * i + 3] << 24;
    st[12] = (uint32_t)counter;
    st[13] = (uint32_t)(counter >> 32); /* the 64-bit counter of the original ChaCha */
    st[14] = st[15] = 0;
    uint32_t w[16];
    memcpy(w, st, sizeof w);
    for (int r = 0; r < 10; ++r) {
        QR(w[0], w[4], w[8], w[12]);
        QR(w[1], w[5], w[9], w[13]);
        QR(w[2], w[6], w[10], w[14]);
        QR(w[3], w[7], w[11], w[15]);
        QR(w[0], w[5], w[10], w[15]);
        QR(w[1], w[6], w[11], w[12]);
        QR(w[2], w[7], w[8], w[13]);
        QR(w[3], w[4], w[9], w[14]);
    }
    for (int i = 0; i < 16; ++i) out[i] = w[i] + st[i];
}

static double unit_open(uint32_t lo, uint32_t hi)
{
    uint64_t w = (uint64_t)hi << 32 | lo;
    return ((double)(w >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

uint64_t dlk_gauss_add(float *x, ptrdiff_t n, double std, const uint8_t *key, uint64_t counter)
{
    const double two_pi = 6.283185307179586;
    uint32_t b[16];
    for (ptrdiff_t k = 0; k < n; k += 8) {
        chacha20_block(key, counter++, b);
        for (int p = 0; p < 4; ++p) {
            double u1 = unit_open(b[4 * p], b[4 * p + 1]), u2 = unit_open(b[4 * p + 2], b[4 * p + 3]);
            double r = sqrt(-2.0 * log(u1));
            ptrdiff_t i = k + 2 * p;
            if (i < n) x[i] += (float)(std * (r * cos(two_pi * u2)));
            if (i + 1 < n) x[i + 1] += (float)(std * (r * sin(two_pi * u2)));
        }
    }
    return counter;
}

void dlk_fedopt(int kind, ptrdiff_t n, float *x, const float *a, float *m, float *v, const double *p)
{
    if (kind == DLK_OPT_AVGM) {
        float lr = (float)p[0], mom = (float)p[1];
        int first = p[2] != 0;
        for (ptrdiff_t k = 0; k < n; ++k) {
            float g = x[k] - a[k];
            if (mom > 0) {
                m[k] = first ? g : mom * m[k] + g;
                g = m[k];
            }
            x[k] = x[k] - lr * g;
        }
        return;
    }
    float b1 = (float)p[1], c1 = (float)(1 - p[1]), b2 = (float)p[2], c2 = (float)(1 - p[2]);
    float tau = (float)p[3], eta = (float)p[0];
    for (ptrdiff_t k = 0; k < n; ++k) {
        float d = a[k] - x[k];
        float t1 = b1 * m[k], t2 = c1 * d;
        m[k] = t1 + t2;
        float d2 = d * d;
        if (kind == DLK_OPT_ADAM) {
            float u1 = b2 * v[k], u2 = c2 * d2;
            v[k] = u1 + u2;
            float den = sqrtf(v[k]) + tau;
            x[k] = (float)((double)x[k] + (p[0] * (double)m[k]) / (double)den);
            continue;
        }
        if (kind == DLK_OPT_YOGI) {
            float u = c2 * d2, diff = v[k] - d2;
            float sign = (float)((diff > 0) - (diff < 0));
            u *= sign;
            v[k] = v[k] - u;
        } else {
            v[k] = v[k] + d2;
        }
        float num = eta * m[k], den = sqrtf(v[k]) + tau;
        float step = num / den;
        x[k] = x[k] + step;
    }
}
