"""PNG decoder giving the pixels stb_image v2.19 gives Darknet (8 bits per sample).

`decode_png(data)` returns `(width, height, comps, pixels)`: `pixels` holds
height x width pixels of `comps` interleaved bytes, 1 gray, 2 gray+alpha, 3 RGB,
4 RGBA. A palette image gives 3 (RGB), or 4 (RGBA) when it has a tRNS chunk.
The conversion to Darknet's 3 float channels (gray replicated, alpha dropped,
as stb with req_comp=3) is `kernels.pixels_to_chw`'s job.

Supported: colour types 0, 2, 3, 4, 6 at every bit depth the PNG spec allows
(gray 1/2/4/8/16, palette 1/2/4/8, the others 8/16); the five scanline filters
(`kernels.png_unfilter`); Adam7 interlacing; any number of IDAT chunks.
Results follow stb_image:
  - 16-bit samples keep their high byte (value >> 8);
  - 1/2/4-bit gray is scaled to 0..255 (x255, x85, x17); palette indexes are not;
  - tRNS gives a palette image its alpha; for gray and RGB images it is checked
    (length) and then ignored: stb with req_comp=3 drops that alpha anyway;
  - tRNS in a gray+alpha/RGBA image, tRNS after IDAT, an unknown critical chunk,
    a first chunk that is not IHDR and a missing IEND are errors, as in stb;
  - image data longer than needed is ignored (stb issue #276); the zlib
    adler32 is not checked (stb does not either; the chunk CRCs cover the bytes).
Stricter than stb: chunk CRCs are checked (stb skips them); bit depths the spec
forbids for a colour type (e.g. 4-bit RGB) are refused; a palette index past
the palette is an error (stb reads uninitialised memory); a second PLTE or a
PLTE after IDAT is an error; images over 2**26 pixels are refused.
Anything after IEND is ignored. Apple's CgBI files are refused (their first
chunk is not IHDR). Filter-error rows are counted from 0.

Decompression output is capped at the size IHDR implies, so a decompression
bomb costs at most that much memory. Error texts carry no file name: callers
prefix `<path>: `.
"""

import zlib
from struct import unpack_from

from .. import kernels, limits
from ..errors import DLServerError

SIGNATURE = b"\x89PNG\r\n\x1a\n"
# width * height above limits.MAX_PIXELS (limits.py) is refused before allocating
MAX_SIDE = 1 << 24  # stb's limit on each side

_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
_GRAY_SCALE = {1: 255, 2: 85, 4: 17}
# Adam7 passes: x origin, y origin, x step, y step
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
_BIT_TABLES: dict[tuple[int, int], list[bytes]] = {}


class PNGError(DLServerError):
    """A PNG file that cannot be decoded; the text says why, without the file name."""


def _name(ctype: bytes) -> str:
    return ctype.decode("latin-1") if ctype.isalpha() else repr(ctype)


def decode_png(data) -> tuple:
    """Decode a PNG; returns (width, height, comps, pixels) with 8-bit interleaved
    pixels, comps = 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA (palette -> 3, or 4 with tRNS)."""
    if not isinstance(data, bytes):
        data = bytes(data)
    n = len(data)
    if data[:8] != SIGNATURE:
        if n == 0:
            raise PNGError("not a PNG file (empty file)")
        if n < 8 and SIGNATURE.startswith(data):
            raise PNGError("truncated (in the PNG signature)")
        raise PNGError("not a PNG file (bad signature)")
    crc32 = zlib.crc32
    if n < 33 or data[12:16] != b"IHDR":
        # the first chunk must be IHDR; let the loop below name the problem
        ihdr = None
        pos = 8
    else:
        (length,) = unpack_from(">I", data, 8)
        if length != 13:
            raise PNGError(f"bad IHDR (length {length}, 13 expected)")
        if crc32(data[12:29]) != unpack_from(">I", data, 29)[0]:
            raise PNGError("CRC mismatch in chunk IHDR")
        ihdr = unpack_from(">IIBBBBB", data, 16)
        _check_ihdr(*ihdr)
        pos = 33
    palette: bytes | bytearray | None = None
    trns = None
    idat: list[bytes] = []
    while True:
        if pos + 8 > n:
            if pos == n:
                raise PNGError("truncated (no IEND chunk)")
            raise PNGError(f"truncated (incomplete chunk header at byte {pos})")
        length, ctype = unpack_from(">I4s", data, pos)
        start = pos + 8
        end = start + length
        if end + 4 > n:
            if length > 0x7FFFFFFF:
                raise PNGError(f"bad length {length} of chunk {_name(ctype)}")
            raise PNGError(f"truncated (chunk {_name(ctype)} runs past the end of the file)")
        if crc32(data[pos + 4 : end]) != unpack_from(">I", data, end)[0]:
            raise PNGError(f"CRC mismatch in chunk {_name(ctype)}")
        pos = end + 4
        if ctype == b"IDAT":
            if ihdr is None:
                raise PNGError("missing IHDR (first chunk is IDAT)")
            if not idat and ihdr[3] == 3 and palette is None:
                raise PNGError("missing PLTE (colour type 3 needs a palette)")
            idat.append(data[start:end])
        elif ctype == b"IEND":
            break
        elif ihdr is None:
            if ctype == b"IHDR":  # only reached when the IHDR length is wrong
                raise PNGError(f"bad IHDR (length {length}, 13 expected)")
            raise PNGError(f"missing IHDR (first chunk is {_name(ctype)})")
        elif ctype == b"IHDR":
            raise PNGError("multiple IHDR chunks")
        elif ctype == b"PLTE":
            if palette is not None:
                raise PNGError("multiple PLTE chunks")
            if idat:
                raise PNGError("PLTE after IDAT")
            if length == 0 or length % 3 or length > 768:
                raise PNGError(f"bad PLTE length {length}")
            palette = data[start:end]
        elif ctype == b"tRNS":
            if idat:
                raise PNGError("tRNS after IDAT")
            colour = ihdr[3]
            if colour == 3:
                if palette is None:
                    raise PNGError("tRNS before PLTE")
                if length > len(palette) // 3:
                    raise PNGError(f"bad tRNS length {length} for a {len(palette) // 3}-entry palette")
                trns = data[start:end]
            elif colour in (4, 6):
                raise PNGError(f"tRNS in an image with alpha (colour type {colour})")
            elif length != 2 * _CHANNELS[colour]:
                raise PNGError(f"bad tRNS length {length} for colour type {colour}")
            # gray/RGB colour key: ignored (stb with req_comp=3 drops alpha)
        elif not ctype[0] & 0x20:
            raise PNGError(f"unknown critical chunk {_name(ctype)}")
        # other ancillary chunks are skipped
    if ihdr is None:
        raise PNGError("missing IHDR (first chunk is IEND)")
    if not idat:
        raise PNGError("no IDAT chunk")
    width, height, depth, colour, _, _, interlace = ihdr
    stream = idat[0] if len(idat) == 1 else b"".join(idat)
    if depth == 8 and not interlace and colour != 3:
        # fast path (MNIST and most files): no unpacking, no palette, no interlacing
        comps = _CHANNELS[colour]
        rowbytes = width * comps
        buf = bytearray(height * rowbytes)
        _unfilter(_inflate(stream, height * (rowbytes + 1)), height, rowbytes, comps, buf, "")
        return width, height, comps, bytes(buf)
    channels = _CHANNELS[colour]
    bits = depth * channels
    if interlace:
        passes = []
        expected = 0
        for number, (x0, y0, dx, dy) in enumerate(_ADAM7, 1):
            pw = (width - x0 + dx - 1) // dx
            ph = (height - y0 + dy - 1) // dy
            if pw and ph:
                rowbytes = (pw * bits + 7) >> 3
                passes.append((number, x0, y0, dx, dy, pw, ph, rowbytes, expected))
                expected += ph * (rowbytes + 1)
    else:
        rowbytes = (width * bits + 7) >> 3
        expected = height * (rowbytes + 1)
    raw = _inflate(stream, expected)

    bpp = max(1, bits >> 3)
    if colour == 3:  # IDAT checked that PLTE came first
        assert palette is not None
        if trns is not None:
            comps = 4
            pal = bytearray(len(palette) // 3 * 4)
            pal[0::4] = palette[0::3]
            pal[1::4] = palette[1::3]
            pal[2::4] = palette[2::3]
            pal[3::4] = trns + b"\xff" * (len(palette) // 3 - len(trns))
            palette = pal
        else:
            comps = 3
    else:
        palette = None  # a suggested palette of a true-colour image
        comps = channels

    if not interlace:
        buf = bytearray(height * rowbytes)
        _unfilter(raw, height, rowbytes, bpp, buf, "")
        pixels = _samples(buf, width, height, rowbytes, depth, colour, palette, comps)
        return width, height, comps, pixels if type(pixels) is bytes else bytes(pixels)

    out = bytearray(width * height * comps)
    stride = width * comps
    rawv = memoryview(raw)
    for number, x0, y0, dx, dy, pw, ph, rowbytes, off in passes:
        buf = bytearray(ph * rowbytes)
        _unfilter(
            rawv[off : off + ph * (rowbytes + 1)], ph, rowbytes, bpp, buf, f" of interlace pass {number}"
        )
        sub = _samples(buf, pw, ph, rowbytes, depth, colour, palette, comps)
        step = dx * comps
        rowlen = pw * comps
        span = (pw - 1) * step + 1  # slice length covering pw pixels
        for r in range(ph):
            base = (y0 + r * dy) * stride + x0 * comps
            srow = sub[r * rowlen : (r + 1) * rowlen]
            if comps == 1:
                out[base : base + span : step] = srow
            else:
                for k in range(comps):
                    out[base + k : base + k + span : step] = srow[k::comps]
    return width, height, comps, bytes(out)


def _check_ihdr(width, height, depth, colour, compression, filtering, interlace):
    if colour not in _CHANNELS:
        raise PNGError(f"unsupported colour type {colour}")
    if depth not in _DEPTHS[colour]:
        raise PNGError(f"unsupported bit depth {depth} for colour type {colour}")
    if compression:
        raise PNGError(f"bad IHDR (compression method {compression})")
    if filtering:
        raise PNGError(f"bad IHDR (filter method {filtering})")
    if interlace > 1:
        raise PNGError(f"bad IHDR (interlace method {interlace})")
    if not width or not height:
        raise PNGError(f"bad IHDR (image size {width} x {height})")
    if width > MAX_SIDE or height > MAX_SIDE or width * height > limits.MAX_PIXELS:
        raise PNGError(
            f"image too large ({width} x {height}; at most {limits.MAX_PIXELS} pixels"
            f" and {MAX_SIDE} per side,"
            " DL_SERVER_MAX_PIXELS raises it)"
        )
    limits.charge_pixels(width, height)


def _inflate(stream, expected: int) -> bytes:
    """The first `expected` bytes of the zlib stream (header checked as stb does,
    adler32 not checked); never produces more than `expected` bytes."""
    if len(stream) < 2:
        raise PNGError("corrupt image data (zlib stream truncated)")
    cmf, flg = stream[0], stream[1]
    if (cmf << 8 | flg) % 31:
        raise PNGError("corrupt image data (zlib: bad header check)")
    if cmf & 15 != 8:
        raise PNGError(f"corrupt image data (zlib: compression method {cmf & 15})")
    if flg & 0x20:
        raise PNGError("corrupt image data (zlib: preset dictionary)")
    d = zlib.decompressobj(-15)
    try:
        raw = d.decompress(stream[2:], expected)
    except zlib.error as e:
        msg = str(e)
        raise PNGError(f"corrupt image data (zlib: {msg.partition(': ')[2] or msg})") from None
    if len(raw) < expected:
        if d.eof:
            raise PNGError(f"image data too short ({len(raw)} bytes, {expected} needed)")
        raise PNGError("corrupt image data (zlib stream truncated)")
    return raw


def _unfilter(raw, height, rowbytes, bpp, out, where):
    try:
        kernels.png_unfilter(raw, height, rowbytes, bpp, out)
    except ValueError as e:
        raise PNGError(f"corrupt image data ({e}{where})") from None


def _bit_tables(depth: int, scale: int) -> list:
    """For each sample position in a byte (most significant first), a 256-byte
    translate table from the byte to that sample times `scale`."""
    key = (depth, scale)
    tables = _BIT_TABLES.get(key)
    if tables is None:
        mask = (1 << depth) - 1
        tables = [
            bytes(((b >> (8 - depth * (j + 1))) & mask) * scale for b in range(256))
            for j in range(8 // depth)
        ]
        _BIT_TABLES[key] = tables
    return tables


def _samples(buf, width, height, rowbytes, depth, colour, palette, comps):
    """Unfiltered scanlines -> width x height pixels of `comps` bytes."""
    if depth == 8:
        pix = buf  # rowbytes == width * channels: no padding
    elif depth == 16:
        pix = buf[0::2]  # big-endian: keep the high byte
    else:
        per = 8 // depth
        pix = bytearray(len(buf) * per)
        tables = _bit_tables(depth, 1 if colour == 3 else _GRAY_SCALE[depth])
        for j, table in enumerate(tables):
            pix[j::per] = buf.translate(table)
        padded = rowbytes * per
        if padded != width:
            v = memoryview(pix)
            pix = b"".join([v[y * padded : y * padded + width] for y in range(height)])
    if palette is None:
        return pix
    out = bytearray(width * height * comps)
    try:
        kernels.png_expand_palette(pix, palette, width * height, comps, out)
    except ValueError as e:
        raise PNGError(str(e)) from None
    return out
