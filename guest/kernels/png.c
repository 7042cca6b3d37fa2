/* PNG: the loops of dlserver.image.png, and a whole decoder for the common files.
 *
 * png_unfilter -- scanline reconstruction (PNG spec section 9), bytes per pixel `bpp`, row
 * length `rowbytes`:
 *   each input row = 1 filter byte + rowbytes filtered bytes; a = left, b = up, c = up-left (0 outside)
 *   0 None: x   1 Sub: x + a   2 Up: x + b   3 Average: x + floor((a + b)/2)   4 Paeth: x + paeth(a, b, c)
 *   paeth: p = a + b - c; the one of a, b, c closest to p (ties in that order); all mod 256
 *
 * png_expand_palette -- out[i*comps + k] = palette[idx[i]*comps + k] (PNG spec 11.2.3)
 *
 * png_load_chw -- PNG straight to network input, for the common files (training sets such as
 * MNIST): 1 and out[ch][y][x] = f32(byte/255.0) for ch in 0..2 (gray replicated, alpha
 * dropped), exactly what dlserver.image.png.decode_png followed by pixels_to_chw gives; or 0
 * when the file is not one of these.
 *
 * Handled here: 8-bit gray / gray+alpha / RGB / RGBA, not interlaced, of exactly width x
 * height pixels, without PLTE or tRNS chunks. Everything else -- other formats, and every
 * file the Python decoder would refuse or could word an error for -- returns 0, and
 * the caller runs the Python decoder, which decodes it or raises its error. So this path
 * accepts a subset of what decode_png accepts and gives the same pixels:
 *   - the signature, IHDR first (length 13), every chunk's CRC, IEND present;
 *   - unknown critical chunks, a second IHDR, PLTE, tRNS: 0;
 *   - the zlib header (method 8, no preset dictionary, check bits), then raw deflate of the
 *     concatenated IDAT data until height*(width*comps + 1) bytes are out, then on as far as
 *     zlib's inflate goes before it stops (pf_tail); any deflate error on the way --
 *     bad block type, stored length check, over-subscribed or incomplete Huffman codes
 *     (zlib accepts some incomplete ones: those come back 0 too), missing end-of-block
 *     code, symbols 286/287 or distance codes 30/31, a distance before the start -- 0;
 *   - filter types 0..4 per row (PNG spec 9), anything else 0. */
#include <stdlib.h>
#include "kernels.h"
#include "pixels.h"

/* Reconstruct `height` rows (each: filter byte + rowbytes bytes) into o; returns -1, or the
 * index of the first row whose filter type is past 4. */
int dlk_png_unfilter(const uint8_t *in, int height, int rowbytes, int bpp, uint8_t *o)
{
    for (int y = 0; y < height; ++y) {
        int filter = in[(long long)y * (rowbytes + 1)];
        const unsigned char *x = in + (long long)y * (rowbytes + 1) + 1;
        unsigned char *row = o + (long long)y * rowbytes;
        const unsigned char *up = y ? row - rowbytes : NULL;
        switch (filter) {
        case 0: memcpy(row, x, rowbytes); break;
        case 1:
            for (int i = 0; i < rowbytes; ++i) row[i] = x[i] + (i >= bpp ? row[i - bpp] : 0);
            break;
        case 2:
            for (int i = 0; i < rowbytes; ++i) row[i] = x[i] + (up ? up[i] : 0);
            break;
        case 3:
            for (int i = 0; i < rowbytes; ++i) {
                int a = i >= bpp ? row[i - bpp] : 0, b = up ? up[i] : 0;
                row[i] = x[i] + ((a + b) >> 1);
            }
            break;
        case 4:
            for (int i = 0; i < rowbytes; ++i) {
                int a = i >= bpp ? row[i - bpp] : 0, b = up ? up[i] : 0;
                int c = (i >= bpp && up) ? up[i - bpp] : 0;
                int p = a + b - c, pa = abs(p - a), pb = abs(p - b), pc = abs(p - c);
                row[i] = x[i] + ((pa <= pb && pa <= pc) ? a : (pb <= pc ? b : c));
            }
            break;
        default:
            return y;
        }
    }
    return -1;
}

/* Returns -1, or the position of the first index past the palette (an error; the entries
 * before it are written). */
ptrdiff_t dlk_png_expand_palette(const uint8_t *indexes, const uint8_t *palette, ptrdiff_t entries, ptrdiff_t n,
                                 int comps, uint8_t *out)
{
    const unsigned char *ix = indexes, *p = palette;
    unsigned char *o = out;
    for (ptrdiff_t i = 0; i < n; ++i) {
        if (ix[i] >= entries) return i;
        memcpy(o + i * comps, p + ix[i] * comps, comps);
    }
    return -1;
}

/* ------------------------------------------------------------------ the fast path: CRC */

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

/* 1: decoded into out; 0: not handled here (the Python decoder decides); DLK_ERR_NOMEM. */
int dlk_png_load_chw(const uint8_t *d, size_t n, int want_w, int want_h, float *out)
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
        if (!stream) return DLK_ERR_NOMEM;
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
        if (!raw || !pix) ok = DLK_ERR_NOMEM;
        else if (pf_inflate(z + 2, idat_total - 2, raw, want) && dlk_png_unfilter(raw, (int)height, rowbytes, comps, pix) < 0) {
            bytes_to_chw(pix, (int)width, (int)height, comps, out);
            ok = 1;
        }
    }
    free(stream); free(raw); free(pix);
    return ok;
}
