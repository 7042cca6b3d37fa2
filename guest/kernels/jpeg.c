/* JPEG kernels: the loops of guest/dlserver/image/jpeg.py. Marker parsing stays in Python.
 *
 * Decoding follows stb_image v2.19 (what Darknet links) in its generic C paths, the
 * ones a wasm32 build of Darknet runs (no SSE2/NEON; stb's SIMD kernels claim to be
 * bit-identical anyway):
 *   - Huffman decoding with a 9-bit lookup table and stb's fast AC table; baseline
 *     blocks and the four progressive passes (DC first/refine, AC first/refine), with
 *     stb's quirks: AC runs past Se land on coefficient 63, dequantised values are
 *     truncated to int16 (short) exactly where stb truncates;
 *   - the integer IDCT stbi__idct_block (jidctint-style, 12-bit constants, rounding
 *     512 >> 10 then 65536 + 128<<17 >> 17);
 *   - chroma upsampling: triangle filters for 2x1, 1x2 and 2x2 (stbi__resample_row_h_2,
 *     _v_2, _hv_2), nearest neighbour for other ratios, with stb's row state machine;
 *   - colour conversion stbi__YCbCr_to_RGB_row (20-bit fixed point, its cb*g term
 *     masked with 0xffff0000), Adobe RGB pass-through, CMYK/YCCK via stbi__blinn_8x8.
 * Encoding is stb_image_write v1.09's stbi_write_jpg: float AAN DCT, its quantisation
 * (truncation of v +- 0.5), 4:4:4 YCbCr, Huffman codes built from the standard tables.
 *
 * Errors where stb would carry on with made-up data (bad input gets one clear error):
 * entropy-coded data that runs out (at a marker or at the end of the file) before the
 * scan's last block (stb feeds zero bits), no RSTn where a restart is due (stb drops
 * the rest of the scan), a DC magnitude category over 15 (stb indexes past its tables),
 * a Huffman table using the all-ones code (libjpeg refuses it too). Arithmetic wraps
 * where stb's int arithmetic would overflow, so garbage coefficients are harmless. */
#include <stdlib.h>
#include "kernels.h"

#define JPG_FAST_BITS 9
#define JPG_NOT_FAST 0xFFFF

typedef struct {
    uint16_t fast[1 << JPG_FAST_BITS];   /* symbol index for codes of <= 9 bits */
    uint16_t code[256];
    uint8_t values[256];
    uint8_t size[257];
    uint32_t maxcode[18];
    int delta[17];
    int count;
    int16_t fast_ac[1 << JPG_FAST_BITS];  /* AC tables: run, length and value in one */
} jpg_huff;

/* JPEG Annex C code assignment; 0 when the counts overflow the code space (more than
 * 256 codes, or a code of all one bits, which libjpeg refuses too). */
static int jpg_build_huffman(jpg_huff *h, const uint8_t *counts, const uint8_t *values, int ac)
{
    int i, j, k = 0;
    unsigned int code;
    for (i = 0; i < 16; ++i)
        for (j = 0; j < counts[i]; ++j) {
            if (k >= 256) return 0;
            h->size[k++] = (uint8_t)(i + 1);
        }
    h->size[k] = 0;
    h->count = k;
    code = 0;
    k = 0;
    for (j = 1; j <= 16; ++j) {
        h->delta[j] = k - (int)code;
        if (h->size[k] == j) {
            while (h->size[k] == j) h->code[k++] = (uint16_t)(code++);
            if (code >= (1u << j)) return 0;
        }
        h->maxcode[j] = code << (16 - j);
        code <<= 1;
    }
    h->maxcode[17] = 0xffffffff;
    memcpy(h->values, values, 256);
    for (i = 0; i < (1 << JPG_FAST_BITS); ++i) h->fast[i] = JPG_NOT_FAST;
    for (i = 0; i < k; ++i) {
        int s = h->size[i];
        if (s <= JPG_FAST_BITS) {
            int c = h->code[i] << (JPG_FAST_BITS - s), m = 1 << (JPG_FAST_BITS - s);
            for (j = 0; j < m; ++j) h->fast[c + j] = (uint16_t)i;
        }
    }
    if (ac) {   /* stbi__build_fast_ac: small AC values decoded with their magnitude bits */
        for (i = 0; i < (1 << JPG_FAST_BITS); ++i) {
            int fast = h->fast[i];
            h->fast_ac[i] = 0;
            if (fast != JPG_NOT_FAST) {
                int rs = h->values[fast], run = (rs >> 4) & 15, magbits = rs & 15, len = h->size[fast];
                if (magbits && len + magbits <= JPG_FAST_BITS) {
                    int kk = ((i << len) & ((1 << JPG_FAST_BITS) - 1)) >> (JPG_FAST_BITS - magbits);
                    int m = 1 << (magbits - 1);
                    if (kk < m) kk += (int)(~0U << magbits) + 1;
                    if (kk >= -128 && kk <= 127)
                        h->fast_ac[i] = (int16_t)((kk * 256) + (run * 16) + (len + magbits));
                }
            }
        }
    }
    return 1;
}

/* Entropy-coded data reader: bits enter `buf` from the top (MSB first); stuffed 0xFF00
 * gives 0xFF; a marker stops the reader, which then feeds zero bits ("phantom" bits, as
 * stb does). Any phantom bit consumed means the data ran out: bits < phantom. */
typedef struct {
    const uint8_t *data;
    ptrdiff_t pos, end;
    uint32_t buf;
    int bits;
    int phantom;
    int nomore, eof, marker;
    ptrdiff_t marker_pos;
} jpg_reader;

static void jpg_fill(jpg_reader *j)
{
    do {
        unsigned int b = 0;
        if (!j->nomore) {
            if (j->pos >= j->end) {
                j->nomore = 1; j->eof = 1; j->marker_pos = j->end;
            } else if (j->data[j->pos] != 0xFF) {
                b = j->data[j->pos++];
            } else {
                ptrdiff_t q = j->pos + 1;
                while (q < j->end && j->data[q] == 0xFF) ++q;   /* fill bytes */
                if (q >= j->end) {
                    j->nomore = 1; j->eof = 1; j->marker_pos = j->pos;
                } else if (j->data[q] != 0) {
                    j->nomore = 1; j->marker = j->data[q]; j->marker_pos = j->pos;
                } else {
                    b = 0xFF; j->pos = q + 1;
                }
            }
        }
        if (j->nomore) j->phantom += 8;
        j->buf |= b << (24 - j->bits);
        j->bits += 8;
    } while (j->bits <= 24);
}

static const uint32_t jpg_bmask[17] = {0, 1, 3, 7, 15, 31, 63, 127, 255, 511, 1023, 2047, 4095,
                                       8191, 16383, 32767, 65535};
static const int jpg_jbias[16] = {0, -1, -3, -7, -15, -31, -63, -127, -255, -511, -1023, -2047,
                                  -4095, -8191, -16383, -32767};
/* natural (row-major) position of the zigzag index; corrupt runs past 63 stay on 63 */
static const uint8_t jpg_dezigzag[64 + 15] = {
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5,
    12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14, 21, 28,
    35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51,
    58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
    63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63};

static inline uint32_t jpg_rotl(uint32_t x, int n) { return n ? (x << n) | (x >> (32 - n)) : x; }

/* One Huffman symbol, or -1 when no code matches. */
static inline int jpg_huff_decode(jpg_reader *j, const jpg_huff *h)
{
    unsigned int temp;
    int c, k;
    if (j->bits < 16) jpg_fill(j);
    c = (j->buf >> (32 - JPG_FAST_BITS)) & ((1 << JPG_FAST_BITS) - 1);
    k = h->fast[c];
    if (k != JPG_NOT_FAST) {
        int s = h->size[k];
        j->buf <<= s;
        j->bits -= s;
        return h->values[k];
    }
    temp = j->buf >> 16;
    for (k = JPG_FAST_BITS + 1;; ++k)
        if (temp < h->maxcode[k]) break;
    if (k == 17) return -1;
    c = (int)((j->buf >> (32 - k)) & jpg_bmask[k]) + h->delta[k];
    if (c < 0 || c >= h->count || h->size[c] != k) return -1;
    j->bits -= k;
    j->buf <<= k;
    return h->values[c];
}

/* JPEG RECEIVE + EXTEND of n bits (0 < n < 16), stb's branch-free form. */
static inline int jpg_extend_receive(jpg_reader *j, int n)
{
    uint32_t k;
    int sgn;
    if (j->bits < n) jpg_fill(j);
    sgn = (int32_t)j->buf >> 31;
    k = jpg_rotl(j->buf, n);
    j->buf = k & ~jpg_bmask[n];
    k &= jpg_bmask[n];
    j->bits -= n;
    return (int)k + (jpg_jbias[n] & ~sgn);
}

static inline int jpg_get_bits(jpg_reader *j, int n)
{
    uint32_t k;
    if (j->bits < n) jpg_fill(j);
    k = jpg_rotl(j->buf, n);
    j->buf = k & ~jpg_bmask[n];
    k &= jpg_bmask[n];
    j->bits -= n;
    return (int)k;
}

static inline int jpg_get_bit(jpg_reader *j)
{
    uint32_t k;
    if (j->bits < 1) jpg_fill(j);
    k = j->buf;
    j->buf <<= 1;
    --j->bits;
    return (k & 0x80000000u) != 0;
}

/* int16 truncation as in stb's (short) casts; unsigned arithmetic wraps like stb's ints */
#define JPG_S16(x) ((int16_t)(uint16_t)(uint32_t)(x))

typedef struct {
    int progressive, ss, se, ah, al;
    int eob_run;
    uint32_t dc_pred[4];
} jpg_scan_state;

/* Baseline block: coefficients stored undequantised as int16 (dequantising later and
 * truncating to int16 gives stb's (short)(v * q): both are v * q mod 2^16). */
static int jpg_block_baseline(jpg_reader *j, jpg_scan_state *st, int16_t *data, const jpg_huff *hdc,
                              const jpg_huff *hac, int ci)
{
    int t, k, diff;
    if (j->bits < 16) jpg_fill(j);
    t = jpg_huff_decode(j, hdc);
    if (t < 0) return JPEG_ERR_HUFFMAN;
    if (t > 15) return JPEG_ERR_DC;
    memset(data, 0, 64 * sizeof(int16_t));
    diff = t ? jpg_extend_receive(j, t) : 0;
    st->dc_pred[ci] += (uint32_t)diff;
    data[0] = JPG_S16(st->dc_pred[ci]);
    k = 1;
    do {
        int c, r, s;
        if (j->bits < 16) jpg_fill(j);
        c = (j->buf >> (32 - JPG_FAST_BITS)) & ((1 << JPG_FAST_BITS) - 1);
        r = hac->fast_ac[c];
        if (r) {
            k += (r >> 4) & 15;
            s = r & 15;
            j->buf <<= s;
            j->bits -= s;
            data[jpg_dezigzag[k++]] = (int16_t)(r >> 8);
        } else {
            int rs = jpg_huff_decode(j, hac);
            if (rs < 0) return JPEG_ERR_HUFFMAN;
            s = rs & 15;
            r = rs >> 4;
            if (s == 0) {
                if (rs != 0xf0) break;   /* end of block */
                k += 16;
            } else {
                k += r;
                data[jpg_dezigzag[k++]] = JPG_S16(jpg_extend_receive(j, s));
            }
        }
    } while (k < 64);
    return 0;
}

static int jpg_block_prog_dc(jpg_reader *j, jpg_scan_state *st, int16_t *data, const jpg_huff *hdc, int ci)
{
    if (j->bits < 16) jpg_fill(j);
    if (st->ah == 0) {
        int t, diff;
        memset(data, 0, 64 * sizeof(int16_t));
        t = jpg_huff_decode(j, hdc);
        if (t < 0) return JPEG_ERR_HUFFMAN;   /* stb reads values[-1] here; an error is kinder */
        if (t > 15) return JPEG_ERR_DC;
        diff = t ? jpg_extend_receive(j, t) : 0;
        st->dc_pred[ci] += (uint32_t)diff;
        data[0] = JPG_S16(st->dc_pred[ci] << st->al);
    } else {
        if (jpg_get_bit(j)) data[0] = JPG_S16(data[0] + (1 << st->al));
    }
    return 0;
}

static int jpg_block_prog_ac(jpg_reader *j, jpg_scan_state *st, int16_t *data, const jpg_huff *hac)
{
    int k;
    if (st->ah == 0) {
        int shift = st->al;
        if (st->eob_run) { --st->eob_run; return 0; }
        k = st->ss;
        do {
            int c, r, s;
            if (j->bits < 16) jpg_fill(j);
            c = (j->buf >> (32 - JPG_FAST_BITS)) & ((1 << JPG_FAST_BITS) - 1);
            r = hac->fast_ac[c];
            if (r) {
                k += (r >> 4) & 15;
                s = r & 15;
                j->buf <<= s;
                j->bits -= s;
                data[jpg_dezigzag[k++]] = JPG_S16((uint32_t)(r >> 8) << shift);
            } else {
                int rs = jpg_huff_decode(j, hac);
                if (rs < 0) return JPEG_ERR_HUFFMAN;
                s = rs & 15;
                r = rs >> 4;
                if (s == 0) {
                    if (r < 15) {
                        st->eob_run = (1 << r);
                        if (r) st->eob_run += jpg_get_bits(j, r);
                        --st->eob_run;
                        break;
                    }
                    k += 16;
                } else {
                    k += r;
                    data[jpg_dezigzag[k++]] = JPG_S16((uint32_t)jpg_extend_receive(j, s) << shift);
                }
            }
        } while (k <= st->se);
    } else {
        int16_t bit = (int16_t)(1 << st->al);
        if (st->eob_run) {
            --st->eob_run;
            for (k = st->ss; k <= st->se; ++k) {
                int16_t *p = &data[jpg_dezigzag[k]];
                if (*p != 0 && jpg_get_bit(j) && (*p & bit) == 0)
                    *p = *p > 0 ? JPG_S16(*p + bit) : JPG_S16(*p - bit);
            }
        } else {
            k = st->ss;
            do {
                int r, s;
                int rs = jpg_huff_decode(j, hac);
                if (rs < 0) return JPEG_ERR_HUFFMAN;
                s = rs & 15;
                r = rs >> 4;
                if (s == 0) {
                    if (r < 15) {
                        st->eob_run = (1 << r) - 1;
                        if (r) st->eob_run += jpg_get_bits(j, r);
                        r = 64;   /* force end of block */
                    }
                    /* r == 15, s == 0: a run of 16 zeros; nothing written */
                } else {
                    if (s != 1) return JPEG_ERR_REFINE;
                    s = jpg_get_bit(j) ? bit : -bit;
                }
                while (k <= st->se) {
                    int16_t *p = &data[jpg_dezigzag[k++]];
                    if (*p != 0) {
                        if (jpg_get_bit(j) && (*p & bit) == 0)
                            *p = *p > 0 ? JPG_S16(*p + bit) : JPG_S16(*p - bit);
                    } else {
                        if (r == 0) { *p = (int16_t)s; break; }
                        --r;
                    }
                }
            } while (k <= st->se);
        }
    }
    return 0;
}

static void jpg_reset(jpg_reader *j, jpg_scan_state *st)
{
    j->buf = 0; j->bits = 0; j->phantom = 0; j->nomore = 0; j->marker = -1;
    st->dc_pred[0] = st->dc_pred[1] = st->dc_pred[2] = st->dc_pred[3] = 0;
    st->eob_run = 0;
}

/* Position of the next marker's first 0xFF at or after `pos` (stuffed 0xFF00 skipped),
 * or `end` when there is none; *code gets the marker byte (-1 at the end). */
static ptrdiff_t jpg_find_marker(const uint8_t *d, ptrdiff_t pos, ptrdiff_t end, int *code)
{
    while (pos < end) {
        const uint8_t *p = memchr(d + pos, 0xFF, (size_t)(end - pos));
        ptrdiff_t q;
        if (!p) break;
        pos = p - d;
        q = pos + 1;
        while (q < end && d[q] == 0xFF) ++q;
        if (q >= end) break;
        if (d[q] != 0) { *code = d[q]; return pos; }
        pos = q + 1;
    }
    *code = -1;
    return end;
}

/* Data ran out (phantom bits consumed)? */
static inline int jpg_starved(const jpg_reader *j) { return j->bits < j->phantom; }

typedef struct {
    ptrdiff_t off;   /* first coefficient (int16 units) */
    int cw, ch, h, v, bw, bh, td, ta;
} jpg_scomp;

/* jpeg_decode_scan: decodes the entropy-coded data of one scan, starting at bytes[start], into
 * the int16 coefficient blocks (64 per block, natural order, not dequantised) of `coeffs`, the
 * scan described by `scan` (kernels.h; checked by the caller: every block it names lies inside
 * coeffs). tables: 8 x (16 counts + 256 values), DC 0-3 then AC 0-3; those the scan uses are
 * built here. Returns 0 with *end = the offset of the marker ending the scan (len when none),
 * a negative JPEG_ERR_* code for bad data, or DLK_ERR_BAD_TABLE / DLK_ERR_NOMEM. */
int dlk_jpeg_decode_scan(const uint8_t *bytes, ptrdiff_t len, ptrdiff_t start, const dlk_jpeg_scan *scan,
                         const uint8_t *tables, int16_t *coeffs, ptrdiff_t *end)
{
    jpg_scomp sc[4];
    int ns = scan->ncomps, i, status = 0;
    jpg_scan_state st;
    st.progressive = scan->progressive; st.ss = scan->ss; st.se = scan->se; st.ah = scan->ah; st.al = scan->al;
    int restart = scan->restart, mcu_x = scan->mcus_x, mcu_y = scan->mcus_y;
    jpg_huff *huff = (jpg_huff *)malloc(8 * sizeof(jpg_huff));
    if (!huff) return DLK_ERR_NOMEM;
    int built[8] = {0};
    const uint8_t *tb = tables;
    for (i = 0; i < ns; ++i) {
        const dlk_jpeg_scan_comp *q = &scan->comp[i];
        jpg_scomp *c = &sc[i];
        c->off = q->first; c->cw = q->coef_w; c->ch = q->coef_h; c->h = q->h; c->v = q->v;
        c->bw = q->scan_w; c->bh = q->scan_h; c->td = q->dc_table; c->ta = q->ac_table;
        int need_dc = !st.progressive || st.ss == 0, need_ac = !st.progressive || st.ss > 0;
        int tl[2] = {need_dc ? c->td : -1, need_ac ? 4 + c->ta : -1};
        for (int t = 0; t < 2; ++t) {
            int idx = tl[t];
            if (idx < 0 || built[idx]) continue;
            if (!jpg_build_huffman(&huff[idx], tb + idx * 272, tb + idx * 272 + 16, idx >= 4)) {
                status = DLK_ERR_BAD_TABLE; goto done;
            }
            built[idx] = 1;
        }
    }

    int16_t *co = coeffs;
    jpg_reader j;
    j.data = bytes; j.pos = start; j.end = len; j.eof = 0; j.marker_pos = 0;
    jpg_reset(&j, &st);
    int todo = restart ? restart : 0x7fffffff;
    long long units, unit;
    int single = ns == 1;
    units = single ? (long long)sc[0].bw * sc[0].bh : (long long)mcu_x * mcu_y;
    int across = single ? sc[0].bw : mcu_x;
    for (unit = 0; unit < units; ++unit) {
        int ux = (int)(unit % across), uy = (int)(unit / across);
        for (i = 0; i < ns && !status; ++i) {
            jpg_scomp *c = &sc[i];
            int nx = single ? 1 : c->h, ny = single ? 1 : c->v;
            for (int y = 0; y < ny && !status; ++y)
                for (int x = 0; x < nx && !status; ++x) {
                    int bx = single ? ux : ux * c->h + x, by = single ? uy : uy * c->v + y;
                    int16_t *data = co + c->off + 64 * ((ptrdiff_t)by * c->cw + bx);
                    const jpg_huff *hdc = &huff[c->td], *hac = &huff[4 + c->ta];
                    if (!st.progressive) status = jpg_block_baseline(&j, &st, data, hdc, hac, i);
                    else if (st.ss == 0) status = jpg_block_prog_dc(&j, &st, data, hdc, i);
                    else status = jpg_block_prog_ac(&j, &st, data, hac);
                }
        }
        /* data exhausted: that is the error, also when the zero padding made a code invalid */
        if (jpg_starved(&j)) { status = j.eof ? JPEG_ERR_EOF : JPEG_ERR_SHORT; break; }
        if (status) break;
        if (--todo <= 0 && unit + 1 < units) {
            /* restart interval done: RSTn must follow within stb's refill window (stb
             * abandons the scan otherwise; libjpeg would skip the junk) */
            if (j.bits < 24) jpg_fill(&j);
            if (j.eof) { status = JPEG_ERR_EOF; break; }
            if (!j.nomore || j.marker < 0xD0 || j.marker > 0xD7) { status = JPEG_ERR_RESTART; break; }
            ptrdiff_t at = j.marker_pos;
            while (j.data[at] == 0xFF) ++at;   /* fill bytes, then the RST byte */
            j.pos = at + 1;
            jpg_reset(&j, &st);
            todo = restart;
        }
    }
    ptrdiff_t endpos = 0;
    if (!status) {
        /* the scan ends at the next marker; bytes before it are ignored as by stb, unless
         * they hold a stuffed 0xFF00 (stb takes its 0x00 for a marker and fails) */
        int code;
        if (j.nomore) endpos = j.marker_pos;
        else {
            endpos = jpg_find_marker(j.data, j.pos, j.end, &code);
            const uint8_t *ff = memchr(j.data + j.pos, 0xFF, (size_t)(endpos - j.pos));
            if (ff) status = JPEG_ERR_TRAILING;
        }
    }
    *end = endpos;
done:
    free(huff);
    return status;
}

/* ------------------------------------------------------------------ IDCT (stbi__idct_block) */

static inline uint8_t jpg_clamp(int x)
{
    if ((unsigned int)x > 255) return x < 0 ? 0 : 255;
    return (uint8_t)x;
}

#define jpg_f2f(x) ((int)(((x) * 4096 + 0.5)))

/* stb's STBI__IDCT_1D. Its int arithmetic overflows on garbage coefficients (undefined
 * behaviour in C, two's-complement wrap-around in practice); here it wraps by definition:
 * uint32 products and sums, converted back to int32 before the arithmetic shifts. */
#define JPG_U(x) ((uint32_t)(int32_t)(x))
#define JPG_IDCT_1D(s0, s1, s2, s3, s4, s5, s6, s7)                     \
    uint32_t t0, t1, t2, t3, p1, p2, p3, p4, p5, x0, x1, x2, x3;        \
    p2 = JPG_U(s2);                                                     \
    p3 = JPG_U(s6);                                                     \
    p1 = (p2 + p3) * JPG_U(jpg_f2f(0.5411961f));                        \
    t2 = p1 + p3 * JPG_U(jpg_f2f(-1.847759065f));                       \
    t3 = p1 + p2 * JPG_U(jpg_f2f(0.765366865f));                        \
    p2 = JPG_U(s0);                                                     \
    p3 = JPG_U(s4);                                                     \
    t0 = (p2 + p3) * 4096u;                                             \
    t1 = (p2 - p3) * 4096u;                                             \
    x0 = t0 + t3;                                                       \
    x3 = t0 - t3;                                                       \
    x1 = t1 + t2;                                                       \
    x2 = t1 - t2;                                                       \
    t0 = JPG_U(s7);                                                     \
    t1 = JPG_U(s5);                                                     \
    t2 = JPG_U(s3);                                                     \
    t3 = JPG_U(s1);                                                     \
    p3 = t0 + t2;                                                       \
    p4 = t1 + t3;                                                       \
    p1 = t0 + t3;                                                       \
    p2 = t1 + t2;                                                       \
    p5 = (p3 + p4) * JPG_U(jpg_f2f(1.175875602f));                      \
    t0 = t0 * JPG_U(jpg_f2f(0.298631336f));                             \
    t1 = t1 * JPG_U(jpg_f2f(2.053119869f));                             \
    t2 = t2 * JPG_U(jpg_f2f(3.072711026f));                             \
    t3 = t3 * JPG_U(jpg_f2f(1.501321110f));                             \
    p1 = p5 + p1 * JPG_U(jpg_f2f(-0.899976223f));                       \
    p2 = p5 + p2 * JPG_U(jpg_f2f(-2.562915447f));                       \
    p3 = p3 * JPG_U(jpg_f2f(-1.961570560f));                            \
    p4 = p4 * JPG_U(jpg_f2f(-0.390180644f));                            \
    t3 += p1 + p4;                                                      \
    t2 += p2 + p3;                                                      \
    t1 += p2 + p4;                                                      \
    t0 += p1 + p3;

#define JPG_SHR(x, n) ((int32_t)(x) >> (n))

static void jpg_idct_block(uint8_t *out, int out_stride, const int16_t data[64])
{
    int i, val[64], *v = val;
    uint8_t *o;
    const int16_t *d = data;
    for (i = 0; i < 8; ++i, ++d, ++v) {   /* columns */
        if (d[8] == 0 && d[16] == 0 && d[24] == 0 && d[32] == 0 && d[40] == 0 && d[48] == 0 && d[56] == 0) {
            int dcterm = d[0] * 4;
            v[0] = v[8] = v[16] = v[24] = v[32] = v[40] = v[48] = v[56] = dcterm;
        } else {
            JPG_IDCT_1D(d[0], d[8], d[16], d[24], d[32], d[40], d[48], d[56])
            x0 += 512; x1 += 512; x2 += 512; x3 += 512;
            v[0] = JPG_SHR(x0 + t3, 10);
            v[56] = JPG_SHR(x0 - t3, 10);
            v[8] = JPG_SHR(x1 + t2, 10);
            v[48] = JPG_SHR(x1 - t2, 10);
            v[16] = JPG_SHR(x2 + t1, 10);
            v[40] = JPG_SHR(x2 - t1, 10);
            v[24] = JPG_SHR(x3 + t0, 10);
            v[32] = JPG_SHR(x3 - t0, 10);
        }
    }
    for (i = 0, v = val, o = out; i < 8; ++i, v += 8, o += out_stride) {   /* rows */
        JPG_IDCT_1D(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7])
        x0 += 65536 + (128 << 17);
        x1 += 65536 + (128 << 17);
        x2 += 65536 + (128 << 17);
        x3 += 65536 + (128 << 17);
        o[0] = jpg_clamp(JPG_SHR(x0 + t3, 17));
        o[7] = jpg_clamp(JPG_SHR(x0 - t3, 17));
        o[1] = jpg_clamp(JPG_SHR(x1 + t2, 17));
        o[6] = jpg_clamp(JPG_SHR(x1 - t2, 17));
        o[2] = jpg_clamp(JPG_SHR(x2 + t1, 17));
        o[5] = jpg_clamp(JPG_SHR(x2 - t1, 17));
        o[3] = jpg_clamp(JPG_SHR(x3 + t0, 17));
        o[4] = jpg_clamp(JPG_SHR(x3 - t0, 17));
    }
}

/* jpeg_idct: dequantises (int16 product, as stb) and inverse-transforms blocks_w x blocks_h
 * blocks of int16 coefficients into 8-bit samples: plane is a (blocks_h*8) x (blocks_w*8) array.
 * quant: 64 values in natural order. */
void dlk_jpeg_idct(const int16_t *coeffs, int blocks_w, int blocks_h, const uint16_t quant[64], uint8_t *plane)
{
    const int bw = blocks_w, bh = blocks_h;
    uint16_t q[64];
    memcpy(q, quant, sizeof q);
    const int16_t *c = coeffs;
    uint8_t *p = plane;
    int stride = bw * 8;
    int16_t blk[64];
    for (int by = 0; by < bh; ++by)
        for (int bx = 0; bx < bw; ++bx) {
            const int16_t *src = c + 64 * ((ptrdiff_t)by * bw + bx);
            for (int i = 0; i < 64; ++i) blk[i] = JPG_S16((int)src[i] * q[i]);
            jpg_idct_block(p + (ptrdiff_t)by * 8 * stride + bx * 8, stride, blk);
        }
}

/* ------------------------------------------------------- upsampling and colour conversion */

typedef uint8_t *(*jpg_resample_fn)(uint8_t *out, const uint8_t *in_near, const uint8_t *in_far, int w, int hs);

#define jpg_div4(x) ((uint8_t)((x) >> 2))
#define jpg_div16(x) ((uint8_t)((x) >> 4))

static uint8_t *jpg_resample_1(uint8_t *out, const uint8_t *in_near, const uint8_t *in_far, int w, int hs)
{
    return (uint8_t *)in_near;
}

static uint8_t *jpg_resample_v_2(uint8_t *out, const uint8_t *in_near, const uint8_t *in_far, int w, int hs)
{
    for (int i = 0; i < w; ++i) out[i] = jpg_div4(3 * in_near[i] + in_far[i] + 2);
    return out;
}

static uint8_t *jpg_resample_h_2(uint8_t *out, const uint8_t *in, const uint8_t *in_far, int w, int hs)
{
    int i;
    if (w == 1) { out[0] = out[1] = in[0]; return out; }
    out[0] = in[0];
    out[1] = jpg_div4(in[0] * 3 + in[1] + 2);
    for (i = 1; i < w - 1; ++i) {
        int n = 3 * in[i] + 2;
        out[i * 2 + 0] = jpg_div4(n + in[i - 1]);
        out[i * 2 + 1] = jpg_div4(n + in[i + 1]);
    }
    out[i * 2 + 0] = jpg_div4(in[w - 2] * 3 + in[w - 1] + 2);
    out[i * 2 + 1] = in[w - 1];
    return out;
}

static uint8_t *jpg_resample_hv_2(uint8_t *out, const uint8_t *in_near, const uint8_t *in_far, int w, int hs)
{
    int i, t0, t1;
    if (w == 1) { out[0] = out[1] = jpg_div4(3 * in_near[0] + in_far[0] + 2); return out; }
    t1 = 3 * in_near[0] + in_far[0];
    out[0] = jpg_div4(t1 + 2);
    for (i = 1; i < w; ++i) {
        t0 = t1;
        t1 = 3 * in_near[i] + in_far[i];
        out[i * 2 - 1] = jpg_div16(3 * t0 + t1 + 8);
        out[i * 2] = jpg_div16(3 * t1 + t0 + 8);
    }
    out[w * 2 - 1] = jpg_div4(t1 + 2);
    return out;
}

static uint8_t *jpg_resample_generic(uint8_t *out, const uint8_t *in_near, const uint8_t *in_far, int w, int hs)
{
    for (int i = 0; i < w; ++i)
        for (int j = 0; j < hs; ++j) out[i * hs + j] = in_near[i];
    return out;
}

#define jpg_float2fixed(x) (((int)((x) * 4096.0f + 0.5f)) << 8)

static void jpg_ycbcr_to_rgb_row(uint8_t *out, const uint8_t *y, const uint8_t *pcb, const uint8_t *pcr,
                                 int count, int step)
{
    for (int i = 0; i < count; ++i) {
        int y_fixed = (y[i] << 20) + (1 << 19);
        int r, g, b;
        int cr = pcr[i] - 128, cb = pcb[i] - 128;
        r = y_fixed + cr * jpg_float2fixed(1.40200f);
        g = (int)((unsigned)(y_fixed + cr * -jpg_float2fixed(0.71414f))
                  + ((unsigned)(cb * -jpg_float2fixed(0.34414f)) & 0xffff0000u));
        b = y_fixed + cb * jpg_float2fixed(1.77200f);
        r >>= 20; g >>= 20; b >>= 20;
        if ((unsigned)r > 255) r = r < 0 ? 0 : 255;
        if ((unsigned)g > 255) g = g < 0 ? 0 : 255;
        if ((unsigned)b > 255) b = b < 0 ? 0 : 255;
        out[0] = (uint8_t)r; out[1] = (uint8_t)g; out[2] = (uint8_t)b;
        out += step;
    }
}

static inline uint8_t jpg_blinn_8x8(uint8_t x, uint8_t y)
{
    unsigned int t = x * y + 128;
    return (uint8_t)((t + (t >> 8)) >> 8);
}

/* jpeg_color: upsamples the n component planes (kernels.h: dlk_jpeg_plane, checked by the
 * caller) to width x height (stb's per-row state machine: each output row takes a "near" and a
 * "far" source row, the far one above or below by turns) and converts them to 8-bit pixels in
 * `out`: mode JPEG_GRAY (1 component -> 1 byte), JPEG_YCBCR (3 or 4 components, a 4th ignored),
 * JPEG_RGB, JPEG_CMYK, JPEG_YCCK (4 components), all -> 3 bytes RGB. Returns 0 or DLK_ERR_NOMEM. */
int dlk_jpeg_color(const uint8_t *planes, const dlk_jpeg_plane *comps, int n, int width, int height, int mode,
                   uint8_t *out)
{
    int k;
    int oc = mode == JPEG_GRAY ? 1 : 3;
    struct {
        const uint8_t *line0, *line1, *base;
        jpg_resample_fn resample;
        int stride, rows, hs, vs, w_lores, ystep, ypos;
    } rc[4];
    const uint8_t *pl = planes;
    for (k = 0; k < n; ++k) {
        ptrdiff_t first = comps[k].first;
        int stride = comps[k].stride, rows = comps[k].rows, hs = comps[k].hs, vs = comps[k].vs;
        int w_lores = (int)(((long long)width + hs - 1) / hs);
        rc[k].base = pl + first;
        rc[k].stride = stride; rc[k].rows = rows; rc[k].hs = hs; rc[k].vs = vs;
        rc[k].w_lores = w_lores;
        rc[k].ystep = vs >> 1;
        rc[k].ypos = 0;
        rc[k].line0 = rc[k].line1 = rc[k].base;
        if (hs == 1 && vs == 1) rc[k].resample = jpg_resample_1;
        else if (hs == 1 && vs == 2) rc[k].resample = jpg_resample_v_2;
        else if (hs == 2 && vs == 1) rc[k].resample = jpg_resample_h_2;
        else if (hs == 2 && vs == 2) rc[k].resample = jpg_resample_hv_2;
        else rc[k].resample = jpg_resample_generic;
    }
    uint8_t *linebufs = (uint8_t *)malloc((size_t)n * (width + 3));
    if (!linebufs) return DLK_ERR_NOMEM;
    uint8_t *o = out;
    const uint8_t *cout[4];
    for (int y = 0; y < height; ++y) {
        uint8_t *row = o + (ptrdiff_t)y * width * oc;
        for (k = 0; k < n; ++k) {
            int y_bot = rc[k].ystep >= (rc[k].vs >> 1);
            cout[k] = rc[k].resample(linebufs + (size_t)k * (width + 3), y_bot ? rc[k].line1 : rc[k].line0,
                                     y_bot ? rc[k].line0 : rc[k].line1, rc[k].w_lores, rc[k].hs);
            if (++rc[k].ystep >= rc[k].vs) {
                rc[k].ystep = 0;
                rc[k].line0 = rc[k].line1;
                if (++rc[k].ypos < rc[k].rows) rc[k].line1 += rc[k].stride;
            }
        }
        int i;
        switch (mode) {
        case JPEG_GRAY:
            memcpy(row, cout[0], width);
            break;
        case JPEG_YCBCR:
            jpg_ycbcr_to_rgb_row(row, cout[0], cout[1], cout[2], width, 3);
            break;
        case JPEG_RGB:
            for (i = 0; i < width; ++i) {
                row[3 * i] = cout[0][i]; row[3 * i + 1] = cout[1][i]; row[3 * i + 2] = cout[2][i];
            }
            break;
        case JPEG_CMYK:
            for (i = 0; i < width; ++i) {
                uint8_t m = cout[3][i];
                row[3 * i] = jpg_blinn_8x8(cout[0][i], m);
                row[3 * i + 1] = jpg_blinn_8x8(cout[1][i], m);
                row[3 * i + 2] = jpg_blinn_8x8(cout[2][i], m);
            }
            break;
        case JPEG_YCCK:
            jpg_ycbcr_to_rgb_row(row, cout[0], cout[1], cout[2], width, 3);
            for (i = 0; i < width; ++i) {
                uint8_t m = cout[3][i];
                row[3 * i] = jpg_blinn_8x8(255 - row[3 * i], m);
                row[3 * i + 1] = jpg_blinn_8x8(255 - row[3 * i + 1], m);
                row[3 * i + 2] = jpg_blinn_8x8(255 - row[3 * i + 2], m);
            }
            break;
        }
    }
    free(linebufs);
    return 0;
}

/* ------------------------------------------------------------- encoder (stb_image_write) */

static const uint8_t jpg_zigzag[64] = {
    0, 1, 5, 6, 14, 15, 27, 28, 2, 4, 7, 13, 16, 26, 29, 42, 3, 8, 12, 17, 25, 30, 41, 43, 9, 11, 18,
    24, 31, 40, 44, 53, 10, 19, 23, 32, 39, 45, 52, 54, 20, 22, 33, 38, 46, 51, 55, 60, 21, 34, 37, 47,
    50, 56, 59, 61, 35, 36, 48, 49, 57, 58, 62, 63};

typedef struct {
    uint8_t *buf;
    size_t len, cap;
    int failed;
    unsigned int bitbuf;
    int bitcnt;
} jpg_writer;

static void jpg_putc(jpg_writer *w, uint8_t c)
{
    if (w->len == w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 65536;
        uint8_t *nb = (uint8_t *)realloc(w->buf, cap);
        if (!nb) { w->failed = 1; return; }
        w->buf = nb; w->cap = cap;
    }
    w->buf[w->len++] = c;
}

/* stbiw__jpg_writeBits: bs = {code, length}; 0xFF bytes get a stuffed 0x00 */
static void jpg_write_bits(jpg_writer *w, const unsigned short *bs)
{
    w->bitcnt += bs[1];
    w->bitbuf |= (unsigned int)bs[0] << (24 - w->bitcnt);
    while (w->bitcnt >= 8) {
        uint8_t c = (w->bitbuf >> 16) & 255;
        jpg_putc(w, c);
        if (c == 255) jpg_putc(w, 0);
        w->bitbuf <<= 8;
        w->bitcnt -= 8;
    }
}

static void jpg_fdct(float *d0p, float *d1p, float *d2p, float *d3p, float *d4p, float *d5p, float *d6p, float *d7p)
{
    float d0 = *d0p, d1 = *d1p, d2 = *d2p, d3 = *d3p, d4 = *d4p, d5 = *d5p, d6 = *d6p, d7 = *d7p;
    float z1, z2, z3, z4, z5, z11, z13;
    float tmp0 = d0 + d7, tmp7 = d0 - d7, tmp1 = d1 + d6, tmp6 = d1 - d6;
    float tmp2 = d2 + d5, tmp5 = d2 - d5, tmp3 = d3 + d4, tmp4 = d3 - d4;
    float tmp10 = tmp0 + tmp3, tmp13 = tmp0 - tmp3, tmp11 = tmp1 + tmp2, tmp12 = tmp1 - tmp2;
    d0 = tmp10 + tmp11;
    d4 = tmp10 - tmp11;
    z1 = (tmp12 + tmp13) * 0.707106781f;
    d2 = tmp13 + z1;
    d6 = tmp13 - z1;
    tmp10 = tmp4 + tmp5;
    tmp11 = tmp5 + tmp6;
    tmp12 = tmp6 + tmp7;
    z5 = (tmp10 - tmp12) * 0.382683433f;
    z2 = tmp10 * 0.541196100f + z5;
    z4 = tmp12 * 1.306562965f + z5;
    z3 = tmp11 * 0.707106781f;
    z11 = tmp7 + z3;
    z13 = tmp7 - z3;
    *d5p = z13 + z2;
    *d3p = z13 - z2;
    *d1p = z11 + z4;
    *d7p = z11 - z4;
    *d0p = d0; *d2p = d2; *d4p = d4; *d6p = d6;
}

static void jpg_calc_bits(int val, unsigned short bits[2])
{
    int tmp1 = val < 0 ? -val : val;
    val = val < 0 ? val - 1 : val;
    bits[1] = 1;
    while (tmp1 >>= 1) ++bits[1];
    bits[0] = val & ((1 << bits[1]) - 1);
}

static int jpg_process_du(jpg_writer *w, float *cdu, const float *fdtbl, int dc,
                          unsigned short htdc[256][2], unsigned short htac[256][2])
{
    const unsigned short eob[2] = {htac[0x00][0], htac[0x00][1]};
    const unsigned short m16zeroes[2] = {htac[0xF0][0], htac[0xF0][1]};
    int off, i, diff, end0pos;
    int du[64];
    for (off = 0; off < 64; off += 8)
        jpg_fdct(&cdu[off], &cdu[off + 1], &cdu[off + 2], &cdu[off + 3], &cdu[off + 4], &cdu[off + 5],
                 &cdu[off + 6], &cdu[off + 7]);
    for (off = 0; off < 8; ++off)
        jpg_fdct(&cdu[off], &cdu[off + 8], &cdu[off + 16], &cdu[off + 24], &cdu[off + 32], &cdu[off + 40],
                 &cdu[off + 48], &cdu[off + 56]);
    for (i = 0; i < 64; ++i) {
        float v = cdu[i] * fdtbl[i];
        du[jpg_zigzag[i]] = (int)(v < 0 ? v - 0.5f : v + 0.5f);
    }
    diff = du[0] - dc;
    if (diff == 0) {
        jpg_write_bits(w, htdc[0]);
    } else {
        unsigned short bits[2];
        jpg_calc_bits(diff, bits);
        jpg_write_bits(w, htdc[bits[1]]);
        jpg_write_bits(w, bits);
    }
    end0pos = 63;
    for (; end0pos > 0 && du[end0pos] == 0; --end0pos) {}
    if (end0pos == 0) {
        jpg_write_bits(w, eob);
        return du[0];
    }
    for (i = 1; i <= end0pos; ++i) {
        int startpos = i, nrzeroes;
        unsigned short bits[2];
        for (; du[i] == 0 && i <= end0pos; ++i) {}
        nrzeroes = i - startpos;
        if (nrzeroes >= 16) {
            int lng = nrzeroes >> 4;
            for (int nrmarker = 1; nrmarker <= lng; ++nrmarker) jpg_write_bits(w, m16zeroes);
            nrzeroes &= 15;
        }
        jpg_calc_bits(du[i], bits);
        jpg_write_bits(w, htac[(nrzeroes << 4) + bits[1]]);
        jpg_write_bits(w, bits);
    }
    if (end0pos != 63) jpg_write_bits(w, eob);
    return du[0];
}

/* Code/length pairs indexed by symbol, from 16 counts + values (JPEG Annex C). */
static int jpg_encoder_table(unsigned short ht[256][2], const uint8_t *spec)
{
    int code = 0, k = 0;
    memset(ht, 0, 256 * sizeof ht[0]);
    for (int len = 1; len <= 16; ++len) {
        for (int i = 0; i < spec[len - 1]; ++i, ++k) {
            if (k >= 256) return 0;
            ht[spec[16 + k]][0] = (unsigned short)code++;
            ht[spec[16 + k]][1] = (unsigned short)len;
        }
        if (code > (1 << len)) return 0;
        code <<= 1;
    }
    return 1;
}

/* jpeg_encode_scan: the entropy-coded data of stbi_write_jpg (v1.09), fill bits included, EOI
 * excluded: 8x8 blocks in raster order (edge pixels repeated past the right and bottom edges),
 * Y, Cb, Cr one block each (4:4:4). pixels: height x width x comp bytes (comp 1 gray,
 * 2 gray+alpha, 3 RGB, 4 RGBA; alpha ignored). ytable/uvtable: the 64 quantiser values
 * in zigzag order as in the DQT segment. huffman: 4 x (16 counts + 256 values), in the
 * order Y DC, Y AC, chroma DC, chroma AC. Returns 0 with the bytes in *data (malloc'd, the
 * caller frees them) and *len, or DLK_ERR_BAD_TABLE / DLK_ERR_NOMEM. */
int dlk_jpeg_encode_scan(const uint8_t *pixels, int width, int height, int comp, const uint8_t ytable[64],
                         const uint8_t uvtable[64], const uint8_t *huffman, uint8_t **data, size_t *len)
{
    int status = 0;
    jpg_writer w = {NULL, 0, 0, 0, 0, 0};
    unsigned short (*ht)[256][2] = (unsigned short (*)[256][2])malloc(4 * sizeof *ht);
    if (!ht) return DLK_ERR_NOMEM;
    for (int t = 0; t < 4; ++t)
        if (!jpg_encoder_table(ht[t], huffman + 272 * t)) { status = DLK_ERR_BAD_TABLE; goto done; }
    static const float aasf[] = {1.0f * 2.828427125f, 1.387039845f * 2.828427125f, 1.306562965f * 2.828427125f,
                                 1.175875602f * 2.828427125f, 1.0f * 2.828427125f, 0.785694958f * 2.828427125f,
                                 0.541196100f * 2.828427125f, 0.275899379f * 2.828427125f};
    const uint8_t *YTable = ytable, *UVTable = uvtable;
    float fdtbl_Y[64], fdtbl_UV[64];
    for (int row = 0, k = 0; row < 8; ++row)
        for (int col = 0; col < 8; ++col, ++k) {
            fdtbl_Y[k] = 1 / (YTable[jpg_zigzag[k]] * aasf[row] * aasf[col]);
            fdtbl_UV[k] = 1 / (UVTable[jpg_zigzag[k]] * aasf[row] * aasf[col]);
        }
    const uint8_t *img = pixels;
    int DCY = 0, DCU = 0, DCV = 0;
    int ofsG = comp > 2 ? 1 : 0, ofsB = comp > 2 ? 2 : 0;
    for (int y = 0; y < height; y += 8)
        for (int x = 0; x < width; x += 8) {
            float YDU[64], UDU[64], VDU[64];
            for (int row = y, pos = 0; row < y + 8; ++row)
                for (int col = x; col < x + 8; ++col, ++pos) {
                    long long p = (long long)row * width * comp + (long long)col * comp;
                    float r, g, b;
                    if (row >= height) p -= (long long)width * comp * (row + 1 - height);
                    if (col >= width) p -= (long long)comp * (col + 1 - width);
                    r = img[p];
                    g = img[p + ofsG];
                    b = img[p + ofsB];
                    YDU[pos] = +0.29900f * r + 0.58700f * g + 0.11400f * b - 128;
                    UDU[pos] = -0.16874f * r - 0.33126f * g + 0.50000f * b;
                    VDU[pos] = +0.50000f * r - 0.41869f * g - 0.08131f * b;
                }
            DCY = jpg_process_du(&w, YDU, fdtbl_Y, DCY, ht[0], ht[1]);
            DCU = jpg_process_du(&w, UDU, fdtbl_UV, DCU, ht[2], ht[3]);
            DCV = jpg_process_du(&w, VDU, fdtbl_UV, DCV, ht[2], ht[3]);
        }
    static const unsigned short fill_bits[] = {0x7F, 7};
    jpg_write_bits(&w, fill_bits);    if (w.failed) { status = DLK_ERR_NOMEM; goto done; }
    *data = w.buf;
    *len = w.len;
    w.buf = NULL;
done:
    free(w.buf);
    free(ht);
    return status;
}
