/* PNG straight to network input, for the common files (training sets such as MNIST):
 *
 *   png_load_chw(data, width, height, out) -> True, or False when the file is not one of
 *   these; out[ch][y][x] = f32(byte/255.0) for ch in 0..2 (gray replicated, alpha dropped),
 *   exactly what dlserver.image.png.decode_png followed by _dlk.pixels_to_chw gives.
 *   png_load_rows(files, width, height, out) -> [rows not done]: the same for a list of files,
 *   file r into out[r*3*width*height ..].
 *   read_files(paths) -> [bytes or None]: each file read with open, pread (64 KiB at a time, until
 *   a shorter read) and close; None where that fails (the caller's reader then gives the error).
 *   One call for a batch of files saves the Python calls around each of them.
 *
 * Handled here: 8-bit gray / gray+alpha / RGB / RGBA, not interlaced, of exactly width x
 * height pixels, without PLTE or tRNS chunks. Everything else -- other formats, and every
 * file the Python decoder would refuse or could word an error for -- returns False, and
 * the caller runs the Python decoder, which decodes it or raises its error. So this path
 * accepts a subset of what decode_png accepts and gives the same pixels:
 *   - the signature, IHDR first (length 13), every chunk's CRC, IEND present;
 *   - unknown critical chunks, a second IHDR, PLTE, tRNS: False;
 *   - the zlib header (method 8, no preset dictionary, check bits), then raw deflate of the
 *     concatenated IDAT data until height*(width*comps + 1) bytes are out, then on as far as
 *     zlib's inflate goes before it stops (pf_tail); any deflate error on the way --
 *     bad block type, stored length check, over-subscribed or incomplete Huffman codes
 *     (zlib accepts some incomplete ones: those come back False too), missing end-of-block
 *     code, symbols 286/287 or distance codes 30/31, a distance before the start -- False;
 *   - filter types 0..4 per row (PNG spec 9), anything else False. */
#include "dlk_common.h"
#include <fcntl.h>
#include <unistd.h>

static uint32_t pf_crc_table[4][256];
static int pf_crc_ready;

/* CRC-32 (PNG / zlib), four bytes per step ("slicing by 4"). */
static uint32_t pf_crc32(const unsigned char *p, size_t n)
{
    if (!pf_crc_ready) {
        for (uint32_t i = 0; i < 256; ++i) {
            uint32_t c = i;
            for (int k = 0; k < 8; ++k) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            pf_crc_table[0][i] = c;
        }
        for (uint32_t i = 0; i < 256; ++i)
            for (int t = 1; t < 4; ++t)
                pf_crc_table[t][i] = pf_crc_table[0][pf_crc_table[t - 1][i] & 0xFF] ^ (pf_crc_table[t - 1][i] >> 8);
        pf_crc_ready = 1;
    }
    uint32_t c = 0xFFFFFFFFu;
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        c ^= (uint32_t)p[i] | (uint32_t)p[i + 1] << 8 | (uint32_t)p[i + 2] << 16 | (uint32_t)p[i + 3] << 24;
        c = pf_crc_table[3][c & 0xFF] ^ pf_crc_table[2][(c >> 8) & 0xFF] ^ pf_crc_table[1][(c >> 16) & 0xFF] ^
            pf_crc_table[0][c >> 24];
    }
    for (; i < n; ++i) c = pf_crc_table[0][(c ^ p[i]) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

static uint32_t pf_be32(const unsigned char *p) { return (uint32_t)p[0] << 24 | p[1] << 16 | p[2] << 8 | p[3]; }

/* ------------------------------------------------------------------ inflate */

#define PF_FAST 9
typedef struct {
    uint16_t fast[1 << PF_FAST];   /* (length << 9) | symbol for codes up to 9 bits, 0: longer */
    uint16_t first[17];            /* first canonical code of each length */
    uint16_t start[17];            /* index in `sym` of the first symbol of each length */
    uint16_t count[17];
    uint16_t sym[288];
} pf_huff;

typedef struct {
    const unsigned char *in;
    size_t len, pos;               /* bytes; pos may pass len (zero bytes are supplied there) */
    uint64_t bits;
    int nbits;
} pf_bits;

static inline void pf_refill(pf_bits *b)
{
    if (b->pos + 8 <= b->len) {                       /* little-endian 8-byte load */
        uint64_t v;
        memcpy(&v, b->in + b->pos, 8);
        b->bits |= v << b->nbits;
        b->pos += (size_t)(63 - b->nbits) >> 3;
        b->nbits |= 56;
        return;
    }
    while (b->nbits <= 56) {
        uint64_t byte = b->pos < b->len ? b->in[b->pos] : 0;
        b->pos++;
        b->bits |= byte << b->nbits;
        b->nbits += 8;
    }
}

/* More bits consumed than the stream holds? */
static inline int pf_over(const pf_bits *b) { return b->pos * 8 - (size_t)b->nbits > b->len * 8; }

static inline uint32_t pf_take(pf_bits *b, int n)
{
    if (b->nbits < n) pf_refill(b);
    uint32_t v = (uint32_t)(b->bits & ((1ull << n) - 1));
    b->bits >>= n;
    b->nbits -= n;
    return v;
}

/* Canonical Huffman code from code lengths; 0 unless complete (no over-subscription, no gaps). */
static int pf_build(pf_huff *h, const unsigned char *lens, int n)
{
    memset(h->count, 0, sizeof h->count);
    memset(h->fast, 0, sizeof h->fast);
    for (int i = 0; i < n; ++i) h->count[lens[i]]++;
    h->count[0] = 0;
    int left = 1;
    for (int l = 1; l <= 15; ++l) {
        left = (left << 1) - h->count[l];
        if (left < 0) return 0;                       /* over-subscribed */
    }
    if (left != 0) return 0;                          /* incomplete (or empty) */
    int code = 0, idx = 0;
    for (int l = 1; l <= 16; ++l) {
        h->first[l] = (uint16_t)code;
        h->start[l] = (uint16_t)idx;
        if (l <= 15) { code = (code + h->count[l]) << 1; idx += h->count[l]; }
    }
    static uint16_t rev[1 << PF_FAST];             /* PF_FAST-bit reversal */
    if (!rev[1])
        for (int i = 0; i < (1 << PF_FAST); ++i) {
            int r = 0;
            for (int k = 0; k < PF_FAST; ++k) r |= ((i >> k) & 1) << (PF_FAST - 1 - k);
            rev[i] = (uint16_t)r;
        }
    uint16_t next[16], fill[16];
    for (int l = 1; l <= 15; ++l) { next[l] = h->first[l]; fill[l] = h->start[l]; }
    for (int s = 0; s < n; ++s) {
        int l = lens[s];
        if (!l) continue;
        int c = next[l]++;
        h->sym[fill[l]++] = (uint16_t)s;
        if (l <= PF_FAST) {                           /* codes are sent most significant bit first */
            uint16_t e = (uint16_t)(l << 9 | s);
            for (int j = rev[c << (PF_FAST - l)]; j < (1 << PF_FAST); j += 1 << l) h->fast[j] = e;
        }
    }
    return 1;
}

static inline int pf_decode(pf_bits *b, const pf_huff *h)
{
    if (b->nbits < 16) pf_refill(b);
    uint16_t e = h->fast[b->bits & ((1 << PF_FAST) - 1)];
    if (e) {
        int l = e >> 9;
        b->bits >>= l;
        b->nbits -= l;
        return e & 511;
    }
    int code = 0;
    for (int l = 1; l <= 15; ++l) {
        code = (code << 1) | (int)(b->bits & 1);
        b->bits >>= 1;
        b->nbits--;
        int k = code - h->first[l];
        if (k >= 0 && k < h->count[l]) return h->sym[h->start[l] + k];
    }
    return -1;
}

static const uint16_t pf_len_base[29] = {3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31,
                                         35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258};
static const unsigned char pf_len_extra[29] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2,
                                               3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0};
static const uint16_t pf_dist_base[30] = {1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385,
                                          513, 769, 1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577};
static const unsigned char pf_dist_extra[30] = {0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7,
                                                8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13};

static pf_huff pf_lit, pf_dist, pf_clh, pf_fixed_lit, pf_fixed_dist;
static int pf_fixed_ready;

static int pf_fixed(void)
{
    if (!pf_fixed_ready) {
        unsigned char lens[320];
        for (int i = 0; i < 144; ++i) lens[i] = 8;
        for (int i = 144; i < 256; ++i) lens[i] = 9;
        for (int i = 256; i < 280; ++i) lens[i] = 7;
        for (int i = 280; i < 288; ++i) lens[i] = 8;
        for (int i = 0; i < 32; ++i) lens[288 + i] = 5;
        if (!pf_build(&pf_fixed_lit, lens, 288) || !pf_build(&pf_fixed_dist, lens + 288, 32)) return 0;
        pf_fixed_ready = 1;
    }
    return 1;
}

/* The header of a dynamic block into pf_lit / pf_dist: 1, 0 on an error, -1 when the input ends first. */
static int pf_dynamic(pf_bits *b)
{
    static const unsigned char order[19] = {16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15};
    int hlit = (int)pf_take(b, 5) + 257, hdist = (int)pf_take(b, 5) + 1, hclen = (int)pf_take(b, 4) + 4;
    if (pf_over(b)) return -1;
    if (hlit > 286 || hdist > 30) return 0;
    unsigned char cl[19] = {0}, lens[320];
    for (int i = 0; i < hclen; ++i) cl[order[i]] = (unsigned char)pf_take(b, 3);
    if (pf_over(b)) return -1;
    if (!pf_build(&pf_clh, cl, 19)) return 0;
    int n = 0;
    while (n < hlit + hdist) {
        int s = pf_decode(b, &pf_clh);
        if (pf_over(b)) return -1;
        if (s < 0) return 0;
        if (s < 16) { lens[n++] = (unsigned char)s; continue; }
        int rep, v = 0;
        if (s == 16) rep = 3 + (int)pf_take(b, 2);
        else if (s == 17) rep = 3 + (int)pf_take(b, 3);
        else rep = 11 + (int)pf_take(b, 7);
        if (pf_over(b)) return -1;
        if (s == 16) { if (!n) return 0; v = lens[n - 1]; }
        if (n + rep > hlit + hdist) return 0;
        while (rep--) lens[n++] = (unsigned char)v;
    }
    if (!lens[256]) return 0;                         /* no end-of-block code */
    if (!pf_build(&pf_lit, lens, hlit) || !pf_build(&pf_dist, lens + hlit, hdist)) return 0;
    return 1;
}

/* zlib's inflate goes on after the output is full until it needs to write a byte, and reports
 * the errors it meets on the way (CPython's decompress(data, max_length) raises them). Returns
 * 0 when it would meet one, 1 when it stops quietly (a byte to write, the end of the input, or
 * the end of the stream). at_symbol: inside a Huffman block (codes lit, dist); else after a block. */
static int pf_tail(pf_bits *b, const pf_huff *lit, const pf_huff *dist, int final, int at_symbol)
{
    for (;;) {
        if (at_symbol) {
            int s = pf_decode(b, lit);
            if (pf_over(b)) return 1;
            if (s < 0) return 0;
            if (s < 256) return 1;
            if (s > 256) {
                s -= 257;
                if (s >= 29) return 0;                /* invalid literal/length code */
                pf_take(b, pf_len_extra[s]);
                int ds = pf_decode(b, dist);
                if (pf_over(b)) return 1;
                return ds >= 0 && ds < 30;            /* then a match to copy: zlib stops there */
            }
        }
        if (final) return 1;
        final = (int)pf_take(b, 1);
        int type = (int)pf_take(b, 2);
        if (pf_over(b)) return 1;
        if (type == 3) return 0;
        if (type == 0) {
            b->bits >>= b->nbits & 7;
            b->nbits -= b->nbits & 7;
            uint32_t n = pf_take(b, 16), nn = pf_take(b, 16);
            if (pf_over(b)) return 1;
            if ((n ^ 0xFFFF) != nn) return 0;
            if (n) return 1;
            at_symbol = 0;
            continue;
        }
        if (type == 1) {
            if (!pf_fixed()) return 0;
            lit = &pf_fixed_lit; dist = &pf_fixed_dist;
        } else {
            int r = pf_dynamic(b);
            if (r <= 0) return r < 0;
            lit = &pf_lit; dist = &pf_dist;
        }
        at_symbol = 1;
    }
}

/* Raw deflate into out[0..want): 1 when want bytes came out and zlib would raise no error
 * (see pf_tail), else 0. */
static int pf_inflate(const unsigned char *in, size_t len, unsigned char *out, size_t want)
{
    pf_bits b = {in, len, 0, 0, 0};
    size_t o = 0;
    int final = 0, in_block = 0;
    const pf_huff *lit = NULL, *dist = NULL;
    for (;;) {
        if (!in_block) {
            if (final) return 0;                      /* the stream ended before `want` bytes */
            final = (int)pf_take(&b, 1);
            int type = (int)pf_take(&b, 2);
            if (pf_over(&b)) return 0;
            if (type == 0) {
                b.bits >>= b.nbits & 7;               /* to a byte boundary */
                b.nbits -= b.nbits & 7;
                uint32_t n = pf_take(&b, 16), nn = pf_take(&b, 16);
                if (pf_over(&b) || (n ^ 0xFFFF) != nn) return 0;
                size_t at = b.pos - (size_t)(b.nbits / 8);   /* next byte of the stream */
                b.bits = 0; b.nbits = 0;
                size_t k = n < want - o ? n : want - o;
                if (at + k > len) return 0;
                memcpy(out + o, in + at, k);
                o += k;
                b.pos = at + k;
                if (o == want) return k < n ? 1 : pf_tail(&b, NULL, NULL, final, 0);
                continue;
            }
            if (type == 1) {
                if (!pf_fixed()) return 0;
                lit = &pf_fixed_lit; dist = &pf_fixed_dist;
            } else if (type == 2) {
                if (pf_dynamic(&b) != 1) return 0;
                lit = &pf_lit; dist = &pf_dist;
            } else {
                return 0;
            }
            in_block = 1;
        }
        int s = pf_decode(&b, lit);
        if (s < 0) return 0;
        if (s < 256) {
            out[o++] = (unsigned char)s;
            if (o == want) return !pf_over(&b) && pf_tail(&b, lit, dist, final, 1);
            continue;
        }
        if (s == 256) { in_block = 0; continue; }
        s -= 257;
        if (s >= 29) return 0;
        int L = pf_len_base[s] + (int)pf_take(&b, pf_len_extra[s]);
        int ds = pf_decode(&b, dist);
        if (ds < 0 || ds >= 30) return 0;
        size_t D = pf_dist_base[ds] + pf_take(&b, pf_dist_extra[ds]);
        if (D > o) return 0;
        size_t k = (size_t)L < want - o ? (size_t)L : want - o;
        for (size_t i = 0; i < k; ++i, ++o) out[o] = out[o - D];
        if (o == want) return !pf_over(&b) && (k < (size_t)L || pf_tail(&b, lit, dist, final, 1));
    }
}

/* PNG scanline reconstruction (png.c's png_unfilter_rows); 0 on a filter type past 4. */
static int pf_unfilter(const unsigned char *in, int height, int rowbytes, int bpp, unsigned char *o)
{
    return png_unfilter_rows(in, height, rowbytes, bpp, o) < 0;
}

/* 1: decoded into out; 0: not handled here (the Python decoder decides). -1: out of memory. */
static int pf_load_chw(const unsigned char *d, size_t n, int want_w, int want_h, float *out)
{
    static const unsigned char sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
    if (n < 33 || memcmp(d, sig, 8) || pf_be32(d + 8) != 13 || memcmp(d + 12, "IHDR", 4)) return 0;
    if (pf_crc32(d + 12, 17) != pf_be32(d + 29)) return 0;
    uint32_t width = pf_be32(d + 16), height = pf_be32(d + 20);
    int depth = d[24], colour = d[25];
    if (d[26] || d[27] || d[28] || depth != 8) return 0;          /* compression, filter, interlace */
    int comps = colour == 0 ? 1 : colour == 2 ? 3 : colour == 4 ? 2 : colour == 6 ? 4 : 0;
    if (!comps || (int)width != want_w || (int)height != want_h || width > 16384 || height > 16384) return 0;
    /* chunks */
    size_t pos = 33, idat_first = 0, idat_total = 0;
    int idat_count = 0, iend = 0;
    while (pos + 8 <= n) {
        uint32_t length = pf_be32(d + pos);
        const unsigned char *type = d + pos + 4;
        if (length > 0x7FFFFFFF || pos + 12 + (size_t)length > n) return 0;
        if (pf_crc32(type, 4 + (size_t)length) != pf_be32(d + pos + 8 + length)) return 0;
        if (!memcmp(type, "IDAT", 4)) {
            if (!idat_count) idat_first = pos;
            idat_count++;
            idat_total += length;
        } else if (!memcmp(type, "IEND", 4)) {
            iend = 1;
            break;
        } else if (!memcmp(type, "IHDR", 4) || !memcmp(type, "PLTE", 4) || !memcmp(type, "tRNS", 4) ||
                   !(type[0] & 0x20)) {
            return 0;                                 /* Python's rules (or errors) apply */
        }
        pos += 12 + (size_t)length;
    }
    if (!iend || !idat_count || idat_total < 2) return 0;
    int rowbytes = (int)width * comps;
    size_t want = (size_t)height * (rowbytes + 1);
    unsigned char *stream = NULL, *raw = NULL, *pix = NULL;
    const unsigned char *z;
    if (idat_count == 1) {
        z = d + idat_first + 8;
    } else {                                          /* join the IDAT payloads */
        stream = malloc(idat_total);
        if (!stream) return -1;
        size_t at = 0;
        for (size_t p = idat_first; at < idat_total;) {
            uint32_t length = pf_be32(d + p);
            if (!memcmp(d + p + 4, "IDAT", 4)) { memcpy(stream + at, d + p + 8, length); at += length; }
            p += 12 + (size_t)length;
        }
        z = stream;
    }
    int ok = 0;
    int cmf = z[0], flg = z[1];
    if (((cmf << 8) | flg) % 31 == 0 && (cmf & 15) == 8 && !(flg & 0x20)) {
        raw = malloc(want);
        pix = malloc((size_t)height * rowbytes);
        if (!raw || !pix) ok = -1;
        else if (pf_inflate(z + 2, idat_total - 2, raw, want) && pf_unfilter(raw, (int)height, rowbytes, comps, pix)) {
            static float lut[256];
            if (lut[255] == 0.f)
                for (int i = 0; i < 256; ++i) lut[i] = (float)(i / 255.0);
            size_t plane = (size_t)width * height;
            if (comps <= 2)
                for (size_t i = 0; i < plane; ++i) {
                    float v = lut[pix[i * comps]];
                    out[i] = v; out[plane + i] = v; out[2 * plane + i] = v;
                }
            else
                for (size_t i = 0; i < plane; ++i) {
                    out[i] = lut[pix[i * comps]];
                    out[plane + i] = lut[pix[i * comps + 1]];
                    out[2 * plane + i] = lut[pix[i * comps + 2]];
                }
            ok = 1;
        }
    }
    free(stream); free(raw); free(pix);
    return ok;
}

static PyObject *dlk_png_load_chw(PyObject *self, PyObject *args)
{
    Py_buffer data, out;
    int width, height;
    if (!PyArg_ParseTuple(args, "y*iiw*", &data, &width, &height, &out)) return NULL;
    PyObject *result = NULL;
    if (width <= 0 || height <= 0 || (long long)width * height > (1 << 26)) {
        PyErr_SetString(PyExc_ValueError, "_dlk.png_load_chw: bad size"); goto done;
    }
    if (!NEED_F(out, 3LL * width * height, "image")) goto done;
    int r = pf_load_chw((const unsigned char *)data.buf, (size_t)data.len, width, height, F32(out));
    if (r < 0) { PyErr_NoMemory(); goto done; }
    result = r ? Py_True : Py_False;
    Py_INCREF(result);
done:
    PyBuffer_Release(&data); PyBuffer_Release(&out);
    return result;
}

static PyObject *dlk_png_load_rows(PyObject *self, PyObject *args)
{
    PyObject *files, *result = NULL, *left = NULL;
    Py_buffer out;
    int width, height;
    if (!PyArg_ParseTuple(args, "O!iiw*", &PyList_Type, &files, &width, &height, &out)) return NULL;
    if (width <= 0 || height <= 0 || (long long)width * height > (1 << 26)) {
        PyErr_SetString(PyExc_ValueError, "_dlk.png_load_rows: bad size"); goto done;
    }
    Py_ssize_t n = PyList_Size(files);
    long long row = 3LL * width * height;
    if (!NEED_F(out, n * row, "batch")) goto done;
    left = PyList_New(0);
    if (!left) goto done;
    for (Py_ssize_t r = 0; r < n; ++r) {
        Py_buffer data;
        if (PyObject_GetBuffer(PyList_GetItem(files, r), &data, PyBUF_SIMPLE) < 0) goto done;
        int ok = pf_load_chw((const unsigned char *)data.buf, (size_t)data.len, width, height, F32(out) + r * row);
        PyBuffer_Release(&data);
        if (ok < 0) { PyErr_NoMemory(); goto done; }
        if (!ok) {
            PyObject *v = PyLong_FromSsize_t(r);
            if (!v || PyList_Append(left, v) < 0) { Py_XDECREF(v); goto done; }
            Py_DECREF(v);
        }
    }
    result = left;
    left = NULL;
done:
    Py_XDECREF(left);
    PyBuffer_Release(&out);
    return result;
}

#define PF_READ_STEP 65536

static PyObject *dlk_read_files(PyObject *self, PyObject *args)
{
    PyObject *paths;
    if (!PyArg_ParseTuple(args, "O!", &PyList_Type, &paths)) return NULL;
    Py_ssize_t n = PyList_Size(paths);
    PyObject *out = PyList_New(n);
    if (!out) return NULL;
    size_t cap = PF_READ_STEP;
    char *buf = malloc(cap);
    if (!buf) { Py_DECREF(out); return PyErr_NoMemory(); }
    for (Py_ssize_t i = 0; i < n; ++i) {
        PyObject *item = NULL;
        Py_ssize_t len;
        const char *path = PyUnicode_Check(PyList_GetItem(paths, i))
                               ? PyUnicode_AsUTF8AndSize(PyList_GetItem(paths, i), &len) : NULL;
        if (!path) PyErr_Clear();
        int fd = path && (size_t)len == strlen(path) ? open(path, O_RDONLY) : -1;
        if (fd >= 0) {
            size_t got = 0;
            int ok = 1;
            for (;;) {
                if (cap < got + PF_READ_STEP) {
                    char *bigger = realloc(buf, cap * 2);
                    if (!bigger) { ok = 0; break; }
                    buf = bigger;
                    cap *= 2;
                }
                ssize_t r = pread(fd, buf + got, PF_READ_STEP, (off_t)got);
                if (r < 0) { ok = 0; break; }
                got += (size_t)r;
                if (r < PF_READ_STEP) break;
            }
            close(fd);
            if (ok) {
                item = PyBytes_FromStringAndSize(buf, (Py_ssize_t)got);
                if (!item) { free(buf); Py_DECREF(out); return NULL; }
            }
        }
        if (!item) { item = Py_None; Py_INCREF(item); }
        PyList_SetItem(out, i, item);
    }
    free(buf);
    return out;
}
