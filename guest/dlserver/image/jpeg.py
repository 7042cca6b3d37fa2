"""JPEG decoder giving the pixels stb_image v2.19 gives Darknet, and stb_image_write
v1.09's JPEG encoder (Darknet's `save_image`, docs/darknet-contract.md §7.2 and §7.5).

`decode_jpeg(data)` returns `(width, height, comps, pixels)` like `decode_png`:
`pixels` holds height x width pixels of `comps` interleaved bytes, 1 for a grayscale
image, 3 (RGB) for everything else. Python parses the markers; `_dlk` runs the loops
(`jpeg_decode_scan`: Huffman decoding of one scan into coefficient blocks;
`jpeg_idct`: dequantisation and stb's integer IDCT; `jpeg_color`: stb's chroma
upsampling and colour conversion).

Supported: baseline and extended Huffman (SOF0, SOF1) and progressive (SOF2), 8-bit;
1 component (gray), 3 (YCbCr; RGB when the component ids are 'R','G','B' or an Adobe
APP14 segment says transform 0 and there is no JFIF APP0, as stb decides) and 4
(Adobe CMYK / YCCK, converted to RGB as stb does); any sampling factors 1-4 whose
ratios to the largest are integers (4:4:4, 4:2:2, 4:2:0, 4:4:0, 4:1:1, ...); image
sizes that are not multiples of the MCU; restart intervals; several DQT/DHT segments
and tables per segment; 16-bit quantisation tables; APPn/COM segments skipped; 0xFF
fill bytes before markers; DNL checked against the frame height.
Results follow stb_image (generic C paths, i.e. what a wasm build of Darknet runs),
byte for byte:
  - triangle-filter upsampling for 2x1, 1x2 and 2x2 ratios, nearest neighbour for
    others, including the quirk of stb's 2x1 filter, which computes the second-to-
    last output column as (3*in[w-2] + in[w-1] + 2) >> 2 (libjpeg weights it the
    other way round); YCbCr->RGB in stb's 20-bit fixed point;
  - dequantised coefficients truncated to int16 as stb does; baseline components
    use the quantisation table in force when their scan was read, progressive ones
    the tables in force at EOI (stb dequantises at those two points too);
  - 4 components: Adobe transform 0 = CMYK, 2 = YCCK, otherwise YCbCr with the 4th
    component ignored; output is RGB (stb with req_comp = 3).
Refused: lossless, hierarchical and arithmetic-coded files, 12-bit samples, 2
components, height 0 (DNL-defined height, as stb and libjpeg), non-integer sampling
ratios (stb v2.19 reads out of bounds on them), images over 2**26 pixels (before any
allocation). Stricter than stb, so bad input gets one clear error instead of a gray
or garbage image: entropy-coded data that ends before the scan's last block (stb
pads with zero bits), a missing restart marker (stb silently drops the rest of the
scan), an undefined Huffman or quantisation table (stb uses uninitialised memory), a
component that no scan covers, a frame with no scan, a Huffman table with an all-ones
code or more than 256 codes. Errors as in stb: a file without EOI, stray bytes after
the SOF where a marker belongs, entropy-coded bytes holding a stuffed 0xFF00 after a
scan's last block. Accepted as in stb: stray bytes between segments before the SOF,
bytes after EOI; also (unlike stb, as the standard allows) 0xFF fill bytes right
after a scan's data and stray RSTn markers between segments.
Error texts carry no file name: callers prefix `<path>: `.

`encode_jpeg(width, height, pixels, quality=80)` is stbi_write_jpg: JFIF header,
two quantisation tables scaled by quality as stb does, 4:4:4 YCbCr, stb's float AAN
DCT and rounding, the standard Huffman tables; the bytes equal stb's for the same
pixel bytes.
"""

from array import array

from .. import kernels, limits
from ..errors import DLServerError
from ..kernels import JpegColour


class JPEGError(DLServerError):
    """A JPEG file that cannot be decoded; the text says why, without the file name."""


# zigzag index -> natural (row-major) position
# fmt: off
_DEZIGZAG = (
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5,
    12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14, 21, 28,
    35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51,
    58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
)
# fmt: on

_NAMES = {
    0xC0: "SOF0",
    0xC1: "SOF1",
    0xC2: "SOF2",
    0xC4: "DHT",
    0xCC: "DAC",
    0xD8: "SOI",
    0xD9: "EOI",
    0xDA: "SOS",
    0xDB: "DQT",
    0xDC: "DNL",
    0xDD: "DRI",
    0xFE: "COM",
}
_UNSUPPORTED_SOF = {
    0xC3: "lossless (SOF3)",
    0xC5: "hierarchical (SOF5)",
    0xC6: "hierarchical (SOF6)",
    0xC7: "hierarchical (SOF7)",
    0xC9: "arithmetic coding (SOF9)",
    0xCA: "arithmetic coding (SOF10)",
    0xCB: "arithmetic coding (SOF11)",
    0xCD: "arithmetic coding (SOF13)",
    0xCE: "arithmetic coding (SOF14)",
    0xCF: "arithmetic coding (SOF15)",
}
_SCAN_ERRORS = {
    -1: "corrupt entropy-coded data (bad Huffman code)",
    -2: "truncated (in the entropy-coded data)",
    -3: "corrupt entropy-coded data (scan ends before its last block)",
    -4: "corrupt entropy-coded data (missing restart marker)",
    -5: "corrupt entropy-coded data (bad DC magnitude)",
    -6: "corrupt entropy-coded data (bad refinement code)",
    -7: "corrupt entropy-coded data (data after the scan's last block)",
}


def _name(code: int) -> str:
    if code in _NAMES:
        return _NAMES[code]
    if 0xE0 <= code <= 0xEF:
        return f"APP{code - 0xE0}"
    if 0xD0 <= code <= 0xD7:
        return f"RST{code - 0xD0}"
    return f"marker 0x{code:02X}"


class _Component:
    __slots__ = ("id", "h", "v", "tq", "x", "y", "cw", "ch", "bw", "bh", "coff", "quant", "scanned")
    id: int
    h: int
    v: int
    tq: int
    x: int
    y: int
    cw: int
    ch: int
    bw: int
    bh: int
    coff: int
    quant: array | None
    scanned: bool


def decode_jpeg(data) -> tuple:
    """Decode a JPEG; returns (width, height, comps, pixels) with 8-bit interleaved
    pixels, comps = 1 (grayscale) or 3 (RGB)."""
    if not isinstance(data, bytes):
        data = bytes(data)
    n = len(data)
    if data[:2] != b"\xff\xd8":
        if n == 0:
            raise JPEGError("not a JPEG file (empty file)")
        if data == b"\xff":
            raise JPEGError("truncated (in the SOI marker)")
        raise JPEGError("not a JPEG file (no SOI marker)")

    qt: list[array | None] = [None] * 4  # array('H') of 64 in natural order
    tables = bytearray(8 * 272)  # DC 0-3, AC 0-3: 16 counts + 256 values
    defined = [False] * 8
    restart = 0
    jfif = False
    adobe = -1  # Adobe APP14 colour transform, -1 without APP14
    frame = None  # (progressive, width, height, comps, hmax, vmax, mcu_x, mcu_y)
    comps = []
    coeffs = None
    scans = 0
    pos = 2
    while True:
        # ---- next marker (fill bytes skipped)
        if pos >= n:
            if frame is None:
                raise JPEGError("truncated (no SOF marker)")
            if not scans:
                raise JPEGError("truncated (no SOS marker)")
            raise JPEGError("truncated (no EOI marker)")
        if data[pos] != 0xFF:
            if frame is None:  # stb skips stray bytes between header segments
                pos = data.find(b"\xff", pos)
                if pos < 0:
                    pos = n
                continue
            raise JPEGError(f"corrupt (expected a marker at byte {pos})")
        while pos < n and data[pos] == 0xFF:
            pos += 1
        if pos >= n:
            raise JPEGError("truncated (in a marker)")
        code = data[pos]
        pos += 1
        if code == 0xD9:  # EOI
            break
        if 0xD0 <= code <= 0xD7 or code == 0x01:  # stray RSTn, TEM: no segment
            continue
        if code == 0xD8:
            raise JPEGError("unexpected SOI marker")
        if code == 0x00:
            raise JPEGError(f"corrupt (expected a marker at byte {pos - 2})")
        # ---- marker segment
        if pos + 2 > n:
            raise JPEGError(f"truncated (in the length of a {_name(code)} segment)")
        length = data[pos] << 8 | data[pos + 1]
        if length < 2:
            raise JPEGError(f"bad {_name(code)} segment length {length}")
        end = pos + length
        if end > n:
            raise JPEGError(f"truncated ({_name(code)} segment runs past the end of the file)")
        body = data[pos + 2 : end]
        pos = end
        if code == 0xDB:
            _parse_dqt(body, qt)
        elif code == 0xC4:
            _parse_dht(body, tables, defined)
        elif code == 0xDD:
            if length != 4:
                raise JPEGError(f"bad DRI segment length {length}")
            restart = body[0] << 8 | body[1]
        elif code == 0xE0:
            if len(body) >= 5 and body[:5] == b"JFIF\0":
                jfif = True
        elif code == 0xEE:
            if len(body) >= 12 and body[:6] == b"Adobe\0":
                adobe = body[11]
        elif 0xE1 <= code <= 0xEF or code == 0xFE:
            pass
        elif code in (0xC0, 0xC1, 0xC2):
            if frame is not None:
                raise JPEGError("multiple SOF markers")
            frame, comps = _parse_sof(code, body)
        elif code in _UNSUPPORTED_SOF:
            raise JPEGError(f"unsupported: {_UNSUPPORTED_SOF[code]}")
        elif code == 0xCC:
            raise JPEGError("unsupported: arithmetic coding (DAC marker)")
        elif code == 0xDC:
            if length != 4:
                raise JPEGError(f"bad DNL segment length {length}")
            if frame is None or (body[0] << 8 | body[1]) != frame[2]:
                raise JPEGError("bad DNL (height differs from the SOF height)")
        elif code == 0xDA:
            if frame is None:
                raise JPEGError("missing SOF before the first SOS")
            if scans >= limits.MAX_JPEG_SCANS:
                raise JPEGError(
                    f"too many scans (more than {limits.MAX_JPEG_SCANS}; DL_SERVER_MAX_JPEG_SCANS raises it)"
                )
            if coeffs is None:
                coeffs = bytearray(2 * sum(c.cw * c.ch * 64 for c in comps))
            pos = _scan(data, pos, body, frame, comps, qt, tables, defined, restart, coeffs)
            scans += 1
        else:
            raise JPEGError(f"unknown marker 0x{code:02X}")

    if frame is None:
        raise JPEGError("missing SOF (EOI before any frame)")
    if not scans:
        raise JPEGError("missing SOS (no scan before EOI)")
    progressive, width, height, nf, hmax, vmax, _, _ = frame
    for c in comps:
        if not c.scanned:
            raise JPEGError(f"no scan data for component {c.id}")
        if progressive:
            c.quant = qt[c.tq]
            if c.quant is None:
                raise JPEGError(f"missing quantization table {c.tq}")

    # dequantise + IDCT into one plane per component (cw*8 x ch*8 samples)
    planes = bytearray(sum(c.cw * c.ch * 64 for c in comps))
    params = array("i")
    poff = 0
    assert coeffs is not None  # allocated by the first SOS, and there was one
    for c in comps:
        assert c.quant is not None  # every component was scanned: checked above or by _scan
        kernels.jpeg_idct(coeffs, c.coff, c.cw, c.ch, c.quant.tobytes(), planes, poff)
        params.extend((poff, c.cw * 8, c.y, hmax // c.h, vmax // c.v))
        poff += c.cw * c.ch * 64
    del coeffs

    if nf == 1:
        mode, out_comps = JpegColour.GRAY, 1
    elif nf == 3:
        rgb = sum(c.id == ord(k) for c, k in zip(comps, "RGB")) == 3
        mode, out_comps = (JpegColour.RGB if rgb or (adobe == 0 and not jfif) else JpegColour.YCBCR), 3
    else:
        mode, out_comps = {0: JpegColour.CMYK, 2: JpegColour.YCCK}.get(adobe, JpegColour.YCBCR), 3
    out = bytearray(width * height * out_comps)
    kernels.jpeg_color(planes, params, width, height, mode, out)
    return width, height, out_comps, bytes(out)


def _parse_dqt(body: bytes, qt: list) -> None:
    i, n = 0, len(body)
    while i < n:
        pq, tq = body[i] >> 4, body[i] & 15
        if pq > 1:
            raise JPEGError(f"bad DQT (precision {pq})")
        if tq > 3:
            raise JPEGError(f"bad DQT (table id {tq})")
        size = 128 if pq else 64
        if i + 1 + size > n:
            raise JPEGError("bad DQT (segment too short)")
        vals: list[int] | bytes
        if pq:  # big-endian 16-bit values
            vals = [body[j] << 8 | body[j + 1] for j in range(i + 1, i + 129, 2)]
        else:
            vals = body[i + 1 : i + 65]
        natural = array("H", bytes(128))
        for k in range(64):
            natural[_DEZIGZAG[k]] = vals[k]
        qt[tq] = natural
        i += 1 + size


def _parse_dht(body: bytes, tables: bytearray, defined: list) -> None:
    i, n = 0, len(body)
    while i < n:
        tc, th = body[i] >> 4, body[i] & 15
        if tc > 1 or th > 3:
            raise JPEGError(f"bad DHT (table class {tc}, id {th})")
        if i + 17 > n:
            raise JPEGError("bad DHT (segment too short)")
        counts = body[i + 1 : i + 17]
        total = sum(counts)
        if total > 256:
            raise JPEGError(f"bad DHT (too many codes: {total})")
        if i + 17 + total > n:
            raise JPEGError("bad DHT (segment too short)")
        code = 0
        for length, count in enumerate(counts, 1):
            code += count
            if count and code >= 1 << length:
                raise JPEGError(f"bad DHT (too many codes of {length} bits or fewer)")
            code <<= 1
        slot = (tc * 4 + th) * 272
        tables[slot : slot + 272] = counts + body[i + 17 : i + 17 + total] + bytes(256 - total)
        defined[tc * 4 + th] = True
        i += 17 + total


def _parse_sof(code: int, body: bytes):
    if len(body) < 6:
        raise JPEGError("bad SOF (segment too short)")
    precision = body[0]
    height = body[1] << 8 | body[2]
    width = body[3] << 8 | body[4]
    nf = body[5]
    if precision != 8:
        if precision in (12, 16):
            raise JPEGError(f"unsupported: {precision}-bit precision")
        raise JPEGError(f"bad SOF (precision {precision})")
    if height == 0:
        raise JPEGError("bad SOF (zero height)")
    if width == 0:
        raise JPEGError("bad SOF (zero width)")
    if nf not in (1, 3, 4):
        if nf == 2:
            raise JPEGError("unsupported: 2 components")
        raise JPEGError(f"bad SOF ({nf} components)")
    if len(body) != 6 + 3 * nf:
        raise JPEGError(f"bad SOF (length {len(body) + 2} for {nf} components)")
    if width * height > limits.MAX_PIXELS:
        raise JPEGError(
            f"image too large ({width} x {height}; at most {limits.MAX_PIXELS} pixels,"
            " DL_SERVER_MAX_PIXELS raises it)"
        )
    limits.charge_pixels(width, height)
    comps: list[_Component] = []
    for k in range(nf):
        cid, hv, tq = body[6 + 3 * k : 9 + 3 * k]
        c = _Component()
        c.id, c.h, c.v, c.tq = cid, hv >> 4, hv & 15, tq
        if not 1 <= c.h <= 4 or not 1 <= c.v <= 4:
            raise JPEGError(f"bad SOF (sampling factors {c.h}x{c.v} of component {cid})")
        if tq > 3:
            raise JPEGError(f"bad SOF (quantization table id {tq})")
        if any(o.id == cid for o in comps):
            raise JPEGError(f"bad SOF (duplicate component id {cid})")
        comps.append(c)
    hmax = max(c.h for c in comps)
    vmax = max(c.v for c in comps)
    for c in comps:
        if hmax % c.h or vmax % c.v:
            factors = ", ".join(f"{o.h}x{o.v}" for o in comps)
            raise JPEGError(f"unsupported: sampling factors {factors} (non-integer ratio)")
    mcu_x = -(-width // (8 * hmax))
    mcu_y = -(-height // (8 * vmax))
    coff = 0
    for c in comps:
        c.x = -(-width * c.h // hmax)  # samples of the component (stb's comp.x, comp.y)
        c.y = -(-height * c.v // vmax)
        c.cw, c.ch = mcu_x * c.h, mcu_y * c.v
        c.bw, c.bh = -(-c.x // 8), -(-c.y // 8)
        c.coff = coff
        c.quant = None
        c.scanned = False
        coff += c.cw * c.ch * 64
    return (code == 0xC2, width, height, nf, hmax, vmax, mcu_x, mcu_y), comps


def _scan(data, pos, body, frame, comps, qt, tables, defined, restart, coeffs) -> int:
    """Parse an SOS header and decode its entropy-coded data; returns the offset of the
    marker after it."""
    progressive, _, _, nf, _, _, mcu_x, mcu_y = frame
    ns = body[0] if body else 0
    if not 1 <= ns <= 4 or ns > nf:
        raise JPEGError(f"bad SOS ({ns} components)")
    if len(body) != 4 + 2 * ns:
        raise JPEGError(f"bad SOS (length {len(body) + 2} for {ns} components)")
    ss, se, a = body[1 + 2 * ns], body[2 + 2 * ns], body[3 + 2 * ns]
    ah, al = a >> 4, a & 15
    if progressive:
        if ss > 63 or se > 63 or ss > se or ah > 13 or al > 13:
            raise JPEGError(f"bad SOS (spectral selection {ss}-{se}, approximation {ah}/{al})")
        if ss == 0 and se != 0:
            raise JPEGError("bad SOS (progressive scan mixes DC and AC coefficients)")
        if ss > 0 and ns != 1:
            raise JPEGError(f"bad SOS (progressive AC scan with {ns} components)")
    elif ss != 0 or ah or al:
        raise JPEGError(
            f"bad SOS (spectral selection {ss}-{se}, approximation {ah}/{al} in a sequential scan)"
        )
    need_dc = not progressive or (ss == 0 and ah == 0)
    need_ac = not progressive or ss > 0
    chosen, scanned = [], []
    for k in range(ns):
        cid, t = body[1 + 2 * k], body[2 + 2 * k]
        c = next((o for o in comps if o.id == cid), None)
        if c is None:
            raise JPEGError(f"bad SOS (scan references undefined component {cid})")
        if c in chosen:
            raise JPEGError(f"bad SOS (component {cid} listed twice)")
        chosen.append(c)
        td, ta = t >> 4, t & 15
        if td > 3 or ta > 3:
            raise JPEGError(f"bad SOS (Huffman table ids {td}/{ta})")
        if need_dc and not defined[td]:
            raise JPEGError(f"missing Huffman table (scan uses undefined DC table {td})")
        if need_ac and not defined[4 + ta]:
            raise JPEGError(f"missing Huffman table (scan uses undefined AC table {ta})")
        if not progressive:
            if qt[c.tq] is None:
                raise JPEGError(f"missing quantization table {c.tq}")
            c.quant = qt[c.tq]
        c.scanned = True
        scanned.append((c.coff, c.cw, c.ch, c.h, c.v, c.bw, c.bh, td | ta << 4))
    end = kernels.jpeg_decode_scan(
        data,
        pos,
        progressive=progressive,
        spectral_start=ss,
        spectral_end=se,
        approx_high=ah,
        approx_low=al,
        restart_interval=restart,
        mcus_x=mcu_x,
        mcus_y=mcu_y,
        components=scanned,
        tables=tables,
        coeffs=coeffs,
    )
    if end < 0:
        raise JPEGError(_SCAN_ERRORS.get(end, "corrupt entropy-coded data"))
    return end


# ------------------------------------------------------------------------- encoder

# fmt: off
_ZIGZAG = (
    0, 1, 5, 6, 14, 15, 27, 28, 2, 4, 7, 13, 16, 26, 29, 42,
    3, 8, 12, 17, 25, 30, 41, 43, 9, 11, 18, 24, 31, 40, 44, 53,
    10, 19, 23, 32, 39, 45, 52, 54, 20, 22, 33, 38, 46, 51, 55, 60,
    21, 34, 37, 47, 50, 56, 59, 61, 35, 36, 48, 49, 57, 58, 62, 63,
)
# fmt: on
# JPEG Annex K tables as stb_image_write v1.09 writes them (natural order for the quantisers)
# fmt: off
_YQT = (
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
)
# fmt: on
# fmt: off
_UVQT = (
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99,
) + (99,) * 32
# fmt: on
_DC_LUM = (bytes((0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0)), bytes(range(12)))
# fmt: off
_AC_LUM = (
    bytes((0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7D)),
    bytes(
        (
            0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06, 0x13, 0x51, 0x61, 0x07,
            0x22, 0x71, 0x14, 0x32, 0x81, 0x91, 0xA1, 0x08, 0x23, 0x42, 0xB1, 0xC1, 0x15, 0x52, 0xD1, 0xF0,
            0x24, 0x33, 0x62, 0x72, 0x82, 0x09, 0x0A, 0x16, 0x17, 0x18, 0x19, 0x1A, 0x25, 0x26, 0x27, 0x28,
            0x29, 0x2A, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3A, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49,
            0x4A, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5A, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69,
            0x6A, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7A, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89,
            0x8A, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0xA2, 0xA3, 0xA4, 0xA5, 0xA6, 0xA7,
            0xA8, 0xA9, 0xAA, 0xB2, 0xB3, 0xB4, 0xB5, 0xB6, 0xB7, 0xB8, 0xB9, 0xBA, 0xC2, 0xC3, 0xC4, 0xC5,
            0xC6, 0xC7, 0xC8, 0xC9, 0xCA, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8, 0xD9, 0xDA, 0xE1, 0xE2,
            0xE3, 0xE4, 0xE5, 0xE6, 0xE7, 0xE8, 0xE9, 0xEA, 0xF1, 0xF2, 0xF3, 0xF4, 0xF5, 0xF6, 0xF7, 0xF8,
            0xF9, 0xFA,
        )
    ),
)
# fmt: on
_DC_CHROMA = (bytes((0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0)), bytes(range(12)))
# fmt: off
_AC_CHROMA = (
    bytes((0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 0x77)),
    bytes(
        (
            0x00, 0x01, 0x02, 0x03, 0x11, 0x04, 0x05, 0x21, 0x31, 0x06, 0x12, 0x41, 0x51, 0x07, 0x61, 0x71,
            0x13, 0x22, 0x32, 0x81, 0x08, 0x14, 0x42, 0x91, 0xA1, 0xB1, 0xC1, 0x09, 0x23, 0x33, 0x52, 0xF0,
            0x15, 0x62, 0x72, 0xD1, 0x0A, 0x16, 0x24, 0x34, 0xE1, 0x25, 0xF1, 0x17, 0x18, 0x19, 0x1A, 0x26,
            0x27, 0x28, 0x29, 0x2A, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3A, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48,
            0x49, 0x4A, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5A, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68,
            0x69, 0x6A, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7A, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87,
            0x88, 0x89, 0x8A, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0xA2, 0xA3, 0xA4, 0xA5,
            0xA6, 0xA7, 0xA8, 0xA9, 0xAA, 0xB2, 0xB3, 0xB4, 0xB5, 0xB6, 0xB7, 0xB8, 0xB9, 0xBA, 0xC2, 0xC3,
            0xC4, 0xC5, 0xC6, 0xC7, 0xC8, 0xC9, 0xCA, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8, 0xD9, 0xDA,
            0xE2, 0xE3, 0xE4, 0xE5, 0xE6, 0xE7, 0xE8, 0xE9, 0xEA, 0xF2, 0xF3, 0xF4, 0xF5, 0xF6, 0xF7, 0xF8,
            0xF9, 0xFA,
        )
    ),
)
# fmt: on
_HUFFMAN = b"".join(
    counts + values + bytes(256 - len(values))
    for counts, values in (_DC_LUM, _AC_LUM, _DC_CHROMA, _AC_CHROMA)
)


def jpeg_quant_tables(quality: int = 80) -> tuple:
    """stb_image_write v1.09's luma and chroma quantisers for `quality` (0 means 90,
    then clamped to 1..100), each 64 bytes in zigzag order as written in DQT."""
    quality = quality or 90
    quality = 1 if quality < 1 else min(quality, 100)
    scale = 5000 // quality if quality < 50 else 200 - quality * 2
    y = bytearray(64)
    uv = bytearray(64)
    for i in range(64):
        y[_ZIGZAG[i]] = min(max((_YQT[i] * scale + 50) // 100, 1), 255)
        uv[_ZIGZAG[i]] = min(max((_UVQT[i] * scale + 50) // 100, 1), 255)
    return bytes(y), bytes(uv)


def encode_jpeg(width: int, height: int, pixels_rgb, quality: int = 80, comps: int = 3) -> bytes:
    """The JPEG file stbi_write_jpg(width, height, comps, pixels, quality) writes:
    `pixels_rgb` holds height x width pixels of `comps` bytes (3 RGB; 1 gray, 2 gray +
    alpha, 4 RGBA also accepted, alpha ignored, as stb)."""
    if not 1 <= width <= 65535 or not 1 <= height <= 65535:
        raise ValueError(f"cannot write a {width} x {height} JPEG (sides 1..65535)")
    if comps not in (1, 2, 3, 4):
        raise ValueError(f"cannot write a JPEG with {comps} components per pixel")
    if len(pixels_rgb) != width * height * comps:
        raise ValueError(f"{len(pixels_rgb)} pixel bytes for a {width} x {height} x {comps} image")
    ytable, uvtable = jpeg_quant_tables(quality)
    head = bytearray(
        b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00\xff\xdb\x00\x84\x00"
    )
    head += ytable
    head.append(1)
    head += uvtable
    head += bytes(
        (
            0xFF,
            0xC0,
            0,
            0x11,
            8,
            height >> 8,
            height & 255,
            width >> 8,
            width & 255,
            3,
            1,
            0x11,
            0,
            2,
            0x11,
            1,
            3,
            0x11,
            1,
            0xFF,
            0xC4,
            0x01,
            0xA2,
        )
    )
    for table_id, (counts, values) in zip(
        (0x00, 0x10, 0x01, 0x11), (_DC_LUM, _AC_LUM, _DC_CHROMA, _AC_CHROMA)
    ):
        head.append(table_id)
        head += counts
        head += values
    head += b"\xff\xda\x00\x0c\x03\x01\x00\x02\x11\x03\x11\x00\x3f\x00"
    scan = kernels.jpeg_encode_scan(pixels_rgb, width, height, comps, ytable, uvtable, _HUFFMAN)
    return bytes(head) + scan + b"\xff\xd9"
