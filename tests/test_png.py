"""PNG decoder (guest/dlserver/image/png.py) against Pillow and against hand-made files.

Pillow writes the ordinary files; a small writer below makes the rest (every
filter type, Adam7 interlacing, 1/2/4/16-bit, chunk-level damage). Expected
pixels follow stb_image v2.19 as Darknet uses it: 16-bit -> high byte, 1/2/4-bit
gray scaled to 0..255, palette expanded (RGBA when tRNS is present).
"""

import glob
import io
import os
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
from PIL import Image

from dlserver.errors import DLServerError
from dlserver.image.png import PNGError, decode_png

SIG = b"\x89PNG\r\n\x1a\n"
CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


# ---------------------------------------------------------------- a tiny PNG writer


def chunk(ctype: bytes, body: bytes, crc=None) -> bytes:
    crc = zlib.crc32(ctype + body) if crc is None else crc
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", crc)


def ihdr(w, h, depth, colour, interlace=0, compression=0, filtering=0) -> bytes:
    return chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, colour, compression, filtering, interlace))


def pack_rows(samples: np.ndarray, depth: int) -> list:
    """samples (h, w, channels) of unsigned ints -> one packed scanline (bytes) per row."""
    h, w, c = samples.shape
    rows = []
    for y in range(h):
        vals = [int(v) for v in samples[y].reshape(-1)]
        if depth == 8:
            rows.append(bytes(vals))
        elif depth == 16:
            rows.append(b"".join(struct.pack(">H", v) for v in vals))
        else:
            per = 8 // depth
            out = bytearray((len(vals) * depth + 7) // 8)
            for i, v in enumerate(vals):
                out[i // per] |= v << (8 - depth * (i % per + 1))
            rows.append(bytes(out))
    return rows


def paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else (b if pb <= pc else c)


def filter_rows(rows: list, bpp: int, filters) -> bytes:
    """Forward-filter scanlines; filters[y % len(filters)] is row y's filter type."""
    out = bytearray()
    prev = bytes(len(rows[0])) if rows else b""
    for y, row in enumerate(rows):
        f = filters[y % len(filters)]
        out.append(f)
        for i, x in enumerate(row):
            a = row[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            pred = (0, a, b, (a + b) // 2, paeth(a, b, c))[f]
            out.append((x - pred) & 255)
        prev = row
    return bytes(out)


def scanlines(samples, colour, depth, interlace=0, filters=(0, 1, 2, 3, 4)) -> bytes:
    """The (uncompressed) filtered image data of `samples` (h, w, channels)."""
    bpp = max(1, CHANNELS[colour] * depth // 8)
    if not interlace:
        return filter_rows(pack_rows(samples, depth), bpp, filters)
    data = b""
    for x0, y0, dx, dy in ADAM7:
        sub = samples[y0::dy, x0::dx]
        if sub.shape[0] and sub.shape[1]:
            data += filter_rows(pack_rows(sub, depth), bpp, filters)
    return data


def make_png(
    samples,
    colour,
    depth,
    interlace=0,
    filters=(0, 1, 2, 3, 4),
    palette=None,
    trns=None,
    raw=None,
    level=6,
    idat_split=None,
    extra=b"",
    before_idat=b"",
) -> bytes:
    """A complete PNG. `raw` overrides the scanline data; `idat_split` cuts the
    zlib stream into IDAT chunks of that many bytes."""
    h, w = samples.shape[:2]
    if raw is None:
        raw = scanlines(samples, colour, depth, interlace, filters)
    z = zlib.compress(raw, level)
    parts = [SIG, ihdr(w, h, depth, colour, interlace)]
    if palette is not None:
        parts.append(chunk(b"PLTE", bytes(palette)))
    if trns is not None:
        parts.append(chunk(b"tRNS", bytes(trns)))
    parts.append(before_idat)
    step = idat_split or max(1, len(z))
    parts += [chunk(b"IDAT", z[i : i + step]) for i in range(0, len(z), step)]
    parts.append(chunk(b"IEND", b""))
    return b"".join(parts) + extra


def random_samples(rng, h, w, colour, depth, entries=None):
    top = entries if colour == 3 and entries else (1 << depth)
    return rng.integers(0, top, size=(h, w, CHANNELS[colour]), dtype=np.int64)


def stb_expected(samples, colour, depth, palette=None, trns=None) -> np.ndarray:
    """What stb_image gives (8-bit samples), shape (h, w, comps)."""
    if colour == 3:
        pal = np.array(palette, dtype=np.uint8).reshape(-1, 3)
        if trns is not None:
            alpha = np.full((len(pal), 1), 255, dtype=np.uint8)
            alpha[: len(trns), 0] = trns
            pal = np.concatenate([pal, alpha], axis=1)
        return pal[samples[..., 0]]
    if depth == 16:
        return (samples >> 8).astype(np.uint8)
    if depth < 8:
        return (samples * {1: 255, 2: 85, 4: 17}[depth]).astype(np.uint8)
    return samples.astype(np.uint8)


def decoded(data: bytes) -> np.ndarray:
    w, h, comps, pixels = decode_png(data)
    assert isinstance(pixels, bytes) and len(pixels) == w * h * comps
    return np.frombuffer(pixels, dtype=np.uint8).reshape(h, w, comps)


def pillow_pixels(data: bytes, comps: int) -> np.ndarray:
    """Pillow's decode of the same bytes, mapped to stb's 8-bit result."""
    im = Image.open(io.BytesIO(data))
    im.load()
    if im.mode in ("I;16", "I;16B", "I"):
        a = (np.asarray(im).astype(np.int64) >> 8).astype(np.uint8)
    else:
        a = np.asarray(im.convert({1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[comps]))
    return a.reshape(im.height, im.width, comps)


def check(data, expected):
    got = decoded(data)
    assert got.shape == expected.shape
    assert np.array_equal(got, expected)
    assert np.array_equal(got, pillow_pixels(data, got.shape[2]))


# ---------------------------------------------------------------- Pillow-written files


def pillow_png(im, **opts) -> bytes:
    f = io.BytesIO()
    im.save(f, format="PNG", **opts)
    return f.getvalue()


@pytest.mark.parametrize("mode, comps", [("L", 1), ("LA", 2), ("RGB", 3), ("RGBA", 4)])
@pytest.mark.parametrize("size", [(1, 1), (3, 7), (33, 17), (64, 48)])
def test_pillow_modes(mode, comps, size):
    rng = np.random.default_rng(comps * 10000 + size[0] * 100 + size[1])
    shape = (size[1], size[0]) + ((comps,) if comps > 1 else ())
    arr = rng.integers(0, 256, size=shape, dtype=np.uint8)
    arr[: size[1] // 2] //= 16  # some smooth areas, so the encoder picks varied filters
    data = pillow_png(Image.frombytes(mode, size, arr.tobytes()))
    check(data, arr.reshape(size[1], size[0], comps))


def test_pillow_gradient_uses_filters():
    x = np.arange(96, dtype=np.uint8)
    arr = np.stack([np.add.outer(x, x), np.add.outer(x, 2 * x), np.add.outer(3 * x, x)], axis=-1)
    data = pillow_png(Image.fromarray(arr.astype(np.uint8)))
    check(data, arr.astype(np.uint8))


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("transparency", [False, True])
def test_pillow_palette(bits, transparency):
    rng = np.random.default_rng(bits)
    n = 1 << bits
    pal = rng.integers(0, 256, size=3 * n, dtype=np.uint8)
    idx = rng.integers(0, n, size=(13, 19), dtype=np.uint8)
    im = Image.frombytes("P", (19, 13), idx.tobytes())
    im.putpalette(pal.tolist())
    opts = {"bits": bits} if bits < 8 else {}
    if transparency:
        alpha = rng.integers(0, 256, size=n - 1, dtype=np.uint8)  # shorter than the palette
        opts["transparency"] = bytes(alpha)
    data = pillow_png(im, **opts)
    w, h, comps, _ = decode_png(data)
    assert (w, h, comps) == (19, 13, 4 if transparency else 3)
    trns = list(opts["transparency"]) if transparency else None
    # Pillow may shorten the palette it writes; expected colours come from the indexes
    expected = stb_expected(idx[..., None].astype(np.int64), 3, 8, pal.tolist()[: 3 * n], trns)
    check(data, expected)


def test_pillow_1bit():
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 2, size=(9, 21), dtype=np.uint8).astype(bool)
    data = pillow_png(Image.fromarray(arr))  # bool -> mode "1"
    assert data[24:26] == bytes([1, 0])  # bit depth 1, colour type 0
    check(data, (arr.astype(np.uint8) * 255)[..., None])


def test_pillow_16bit_gray():
    rng = np.random.default_rng(16)
    arr = rng.integers(0, 65536, size=(11, 5), dtype=np.uint16)
    data = pillow_png(Image.frombytes("I;16", (5, 11), arr.astype("<u2").tobytes()))
    assert data[24:26] == bytes([16, 0])
    check(data, (arr >> 8).astype(np.uint8)[..., None])


def test_pillow_gray_with_transparency_is_ignored():
    arr = np.arange(60, dtype=np.uint8).reshape(6, 10)
    data = pillow_png(Image.fromarray(arr), transparency=7)
    assert b"tRNS" in data
    assert decode_png(data)[2] == 1
    check(data, arr[..., None])


def test_pillow_rgb_with_transparency_is_ignored():
    arr = np.arange(90, dtype=np.uint8).reshape(5, 6, 3)
    data = pillow_png(Image.fromarray(arr), transparency=(0, 1, 2))
    assert b"tRNS" in data
    assert decode_png(data)[2] == 3
    check(data, arr)


# ---------------------------------------------------------------- hand-made files

SIZES = [(1, 1), (3, 7), (7, 3), (33, 17), (8, 8), (9, 1), (1, 9)]
FORMATS = [
    (0, 1),
    (0, 2),
    (0, 4),
    (0, 8),
    (0, 16),
    (2, 8),
    (2, 16),
    (3, 1),
    (3, 2),
    (3, 4),
    (3, 8),
    (4, 8),
    (4, 16),
    (6, 8),
    (6, 16),
]


@pytest.mark.parametrize("colour, depth", FORMATS)
@pytest.mark.parametrize("interlace", [0, 1])
def test_formats_sizes_interlace(colour, depth, interlace):
    rng = np.random.default_rng(colour * 100 + depth + 1000 * interlace)
    for w, h in SIZES:
        palette = trns = None
        if colour == 3:
            entries = int(rng.integers(1, (1 << depth) + 1))
            palette = rng.integers(0, 256, size=3 * entries).tolist()
            samples = random_samples(rng, h, w, colour, depth, entries)
        else:
            samples = random_samples(rng, h, w, colour, depth)
        data = make_png(samples, colour, depth, interlace, palette=palette)
        check(data, stb_expected(samples, colour, depth, palette))
        if colour == 3:  # again with alpha for the first entries
            trns = rng.integers(0, 256, size=max(1, len(palette) // 6)).tolist()
            data = make_png(samples, colour, depth, interlace, palette=palette, trns=trns)
            assert decode_png(data)[2] == 4
            check(data, stb_expected(samples, colour, depth, palette, trns))


@pytest.mark.parametrize("filt", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("colour, depth", [(0, 8), (2, 8), (6, 16), (0, 4), (4, 8)])
@pytest.mark.parametrize("interlace", [0, 1])
def test_each_filter_type(filt, colour, depth, interlace):
    rng = np.random.default_rng(filt + 10 * colour + depth)
    for w, h in [(1, 1), (3, 7), (33, 17)]:
        samples = random_samples(rng, h, w, colour, depth)
        samples[h // 2 :] = samples[h // 2 :] // 3  # a mix of busy and quiet rows
        data = make_png(samples, colour, depth, interlace, filters=(filt,))
        check(data, stb_expected(samples, colour, depth))


def test_paeth_ties_and_wraparound():
    # values at 0/255 make a + b - c overflow and produce Paeth ties
    samples = np.array(
        [[0, 255, 0, 255], [255, 0, 255, 0], [255, 255, 0, 0], [128, 127, 129, 1]], dtype=np.int64
    )[..., None].repeat(3, axis=2)
    samples[..., 1] = 255 - samples[..., 1]
    for f in range(5):
        data = make_png(samples, 2, 8, filters=(f,))
        check(data, samples.astype(np.uint8))


def test_multiple_idat_chunks_and_ancillary_chunks():
    rng = np.random.default_rng(5)
    samples = random_samples(rng, 17, 33, 2, 8)
    text = chunk(b"tEXt", b"Comment\0hello") + chunk(b"gAMA", struct.pack(">I", 45455))
    for split in (1, 7, 100):
        data = make_png(samples, 2, 8, idat_split=split, before_idat=text)
        assert data.count(b"IDAT") > 1
        check(data, samples.astype(np.uint8))
    # an empty IDAT chunk in the middle is harmless
    data = make_png(samples, 2, 8)
    i = data.index(b"IDAT") - 4
    data = data[:i] + chunk(b"IDAT", b"") + data[i:]
    check(data, samples.astype(np.uint8))


def test_trailing_garbage_after_iend_is_ignored():
    samples = np.arange(12, dtype=np.int64).reshape(3, 4, 1)
    data = make_png(samples, 0, 8, extra=b"garbage after IEND \x00\xff" * 10)
    check(data, samples.astype(np.uint8))


def test_extra_image_data_is_ignored():
    # stb issue #276: more decompressed bytes than the image needs is accepted
    samples = np.arange(12, dtype=np.int64).reshape(3, 4, 1)
    raw = scanlines(samples, 0, 8) + bytes(50)
    data = make_png(samples, 0, 8, raw=raw)
    check(data, samples.astype(np.uint8))


def test_decompression_bomb_is_bounded():
    samples = np.zeros((4, 4, 1), dtype=np.int64)
    raw = bytes(16 << 20)  # 16 MiB of zeros: 4x4 needs 20 bytes
    data = make_png(samples, 0, 8, raw=raw, level=9)
    assert len(data) < 40000
    tracemalloc.start()
    try:
        assert decode_png(data) == (4, 4, 1, bytes(16))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_bytes_like_input():
    samples = np.arange(12, dtype=np.int64).reshape(3, 4, 1)
    data = make_png(samples, 0, 8)
    assert decode_png(bytearray(data)) == decode_png(memoryview(data)) == decode_png(data)


def test_png_error_is_a_dlserver_error():
    assert issubclass(PNGError, DLServerError)


def test_mnist_files_if_present():
    root = os.path.join(os.path.dirname(__file__), "..", "data", "mnist")
    files = sorted(glob.glob(os.path.join(root, "images*", "*.png")))[:50]
    if not files:
        pytest.skip("no MNIST images prepared")
    checked = 0
    for path in files:
        try:  # the tree may be being rewritten meanwhile
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            continue
        if not data.endswith(chunk(b"IEND", b"")):  # still being written
            continue
        w, h, comps, _ = decode_png(data)
        assert (w, h, comps) == (28, 28, 1)
        check(data, np.asarray(Image.open(io.BytesIO(data)).convert("L"))[..., None])
        checked += 1
    if not checked:
        pytest.skip("MNIST images vanished while testing")


# ---------------------------------------------------------------- malformed files


def good_png(colour=0, depth=8, w=6, h=5, **kw) -> bytes:
    samples = np.arange(w * h * CHANNELS[colour], dtype=np.int64).reshape(h, w, -1)
    samples %= 1 << min(depth, 8)
    return make_png(samples, colour, depth, **kw)


IEND = chunk(b"IEND", b"")


def png_of(*chunks) -> bytes:
    return SIG + b"".join(chunks)


def gray_with_idat(zdata: bytes, w=6, h=5) -> bytes:
    """An 8-bit gray w x h PNG whose single IDAT holds `zdata`."""
    return png_of(ihdr(w, h, 8, 0), chunk(b"IDAT", zdata), IEND)


def chunk_offset(data: bytes, ctype: bytes) -> int:
    """Offset of the chunk's length field."""
    return data.index(ctype) - 4


def malformed_cases():
    """(name, file, regex the PNGError text must match)."""
    good = good_png()  # 6 x 5 gray, IHDR ends at 33
    rng = np.random.default_rng(0)
    big = make_png(rng.integers(0, 256, size=(20, 20, 1)), 0, 8)
    idat_at = chunk_offset(big, b"IDAT")
    idat_len = struct.unpack(">I", big[idat_at : idat_at + 4])[0]
    iend_at = chunk_offset(good, b"IEND")
    z = zlib.compress(bytes(6 * 5 + 5))  # valid data for 6 x 5 gray
    pal = bytes([10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120])  # 4 entries
    idx_rows = bytes([0, 0, 1, 2, 3, 0, 3, 2, 5, 1])  # index 5 in row 1
    flipped = bytearray(good)
    flipped[20] ^= 1  # inside IHDR's width
    flipped_idat = bytearray(good)
    flipped_idat[chunk_offset(good, b"IDAT") + 9] ^= 0x40
    bad_filter = bytes([0]) + bytes(6) + bytes([1]) + bytes(6) + bytes([5]) + bytes(6 * 3 + 2)
    adam7 = bytearray(scanlines(np.zeros((5, 6, 1), dtype=np.int64), 0, 8, 1, (0,)))
    adam7[2] = 9  # pass 2's filter byte
    truncated = r"^truncated \(chunk IDAT runs past the end of the file\)$"
    return [
        ("empty", b"", r"^not a PNG file \(empty file\)$"),
        ("jpeg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(40), r"^not a PNG file \(bad signature\)$"),
        ("text", b"hello world, this is not an image", r"^not a PNG file \(bad signature\)$"),
        ("short signature", SIG[:5], r"^truncated \(in the PNG signature\)$"),
        ("signature only", SIG, r"^truncated \(no IEND chunk\)$"),
        ("cut in IDAT", big[: idat_at + 30], truncated),
        ("cut in CRC", big[: idat_at + 8 + idat_len + 2], truncated),
        ("cut in header", good[: iend_at + 5], r"^truncated \(incomplete chunk header at byte \d+\)$"),
        ("no IEND", good[:iend_at], r"^truncated \(no IEND chunk\)$"),
        ("CRC IHDR", bytes(flipped), r"^CRC mismatch in chunk IHDR$"),
        ("CRC IDAT", bytes(flipped_idat), r"^CRC mismatch in chunk IDAT$"),
        ("CRC IEND", good[:-1] + bytes([good[-1] ^ 1]), r"^CRC mismatch in chunk IEND$"),
        ("zero width", png_of(ihdr(0, 5, 8, 0), IEND), r"^bad IHDR \(image size 0 x 5\)$"),
        ("zero height", png_of(ihdr(5, 0, 8, 0), IEND), r"^bad IHDR \(image size 5 x 0\)$"),
        ("too large", png_of(ihdr(1 << 14, 1 << 13, 8, 0), IEND), r"^image too large \(16384 x 8192; "),
        ("too wide", png_of(ihdr((1 << 24) + 1, 1, 8, 0), IEND), r"^image too large"),
        ("depth 3 RGB", png_of(ihdr(4, 4, 3, 2)), r"^unsupported bit depth 3 for colour type 2$"),
        ("depth 4 RGB", png_of(ihdr(4, 4, 4, 2)), r"^unsupported bit depth 4 for colour type 2$"),
        ("depth 16 palette", png_of(ihdr(4, 4, 16, 3)), r"^unsupported bit depth 16 for colour type 3$"),
        ("colour type 5", png_of(ihdr(4, 4, 8, 5)), r"^unsupported colour type 5$"),
        ("colour type 1", png_of(ihdr(4, 4, 8, 1)), r"^unsupported colour type 1$"),
        ("interlace 2", png_of(ihdr(4, 4, 8, 0, interlace=2)), r"^bad IHDR \(interlace method 2\)$"),
        ("compression 1", png_of(ihdr(4, 4, 8, 0, compression=1)), r"^bad IHDR \(compression method 1\)$"),
        ("filter method 1", png_of(ihdr(4, 4, 8, 0, filtering=1)), r"^bad IHDR \(filter method 1\)$"),
        ("IHDR length", png_of(chunk(b"IHDR", bytes(12)), IEND), r"^bad IHDR \(length 12, 13 expected\)$"),
        ("multiple IHDR", good[:33] + good[8:], r"^multiple IHDR chunks$"),
        (
            "bad filter",
            gray_with_idat(zlib.compress(bad_filter)),
            r"^corrupt image data \(bad filter type 5 in row 2\)$",
        ),
        (
            "bad filter interlaced",
            png_of(ihdr(6, 5, 8, 0, 1), chunk(b"IDAT", zlib.compress(bytes(adam7))), IEND),
            r"^corrupt image data \(bad filter type 9 in row 0 of interlace pass 2\)$",
        ),
        ("corrupt deflate", gray_with_idat(b"\x78\x9c" + b"\xff" * 20), r"^corrupt image data \(zlib: .+\)$"),
        (
            "bad zlib header",
            gray_with_idat(b"\x78\x9d" + z[2:]),
            r"^corrupt image data \(zlib: bad header check\)$",
        ),
        (
            "zlib method",
            gray_with_idat(b"\x79\x18" + z[2:]),
            r"^corrupt image data \(zlib: compression method 9\)$",
        ),
        (
            "preset dict",
            gray_with_idat(b"\x78\xbb" + z[2:]),
            r"^corrupt image data \(zlib: preset dictionary\)$",
        ),
        (
            "truncated zlib",
            gray_with_idat(z[: len(z) // 2]),
            r"^corrupt image data \(zlib stream truncated\)$",
        ),
        ("one-byte zlib", gray_with_idat(b"\x78"), r"^corrupt image data \(zlib stream truncated\)$"),
        (
            "too little data",
            gray_with_idat(zlib.compress(bytes(30))),
            r"^image data too short \(30 bytes, 35 needed\)$",
        ),
        (
            "empty image data",
            gray_with_idat(zlib.compress(b"")),
            r"^image data too short \(0 bytes, 35 needed\)$",
        ),
        (
            "palette index",
            png_of(ihdr(4, 2, 8, 3), chunk(b"PLTE", pal), chunk(b"IDAT", zlib.compress(idx_rows)), IEND),
            r"^palette index 5 past the 4-entry palette$",
        ),
        (
            "missing PLTE",
            png_of(ihdr(4, 2, 8, 3), chunk(b"IDAT", zlib.compress(idx_rows)), IEND),
            r"^missing PLTE \(colour type 3 needs a palette\)$",
        ),
        ("PLTE length", png_of(ihdr(4, 2, 8, 3), chunk(b"PLTE", bytes(10))), r"^bad PLTE length 10$"),
        (
            "multiple PLTE",
            png_of(ihdr(4, 2, 8, 3), chunk(b"PLTE", bytes(6)), chunk(b"PLTE", bytes(6))),
            r"^multiple PLTE chunks$",
        ),
        ("tRNS before PLTE", png_of(ihdr(4, 2, 8, 3), chunk(b"tRNS", bytes(1))), r"^tRNS before PLTE$"),
        (
            "tRNS too long",
            png_of(ihdr(4, 2, 8, 3), chunk(b"PLTE", bytes(6)), chunk(b"tRNS", bytes(3))),
            r"^bad tRNS length 3 for a 2-entry palette$",
        ),
        (
            "tRNS gray length",
            png_of(ihdr(4, 2, 8, 0), chunk(b"tRNS", bytes(6))),
            r"^bad tRNS length 6 for colour type 0$",
        ),
        (
            "tRNS with alpha",
            png_of(ihdr(4, 2, 8, 6), chunk(b"tRNS", bytes(8))),
            r"^tRNS in an image with alpha \(colour type 6\)$",
        ),
        ("tRNS after IDAT", good[:iend_at] + chunk(b"tRNS", bytes(2)) + good[iend_at:], r"^tRNS after IDAT$"),
        (
            "IDAT before IHDR",
            png_of(chunk(b"IDAT", z), ihdr(6, 5, 8, 0), IEND),
            r"^missing IHDR \(first chunk is IDAT\)$",
        ),
        (
            "text before IHDR",
            SIG + chunk(b"tEXt", b"a\0b") + good[8:],
            r"^missing IHDR \(first chunk is tEXt\)$",
        ),
        ("IEND only", png_of(IEND), r"^missing IHDR \(first chunk is IEND\)$"),
        ("no IDAT", png_of(ihdr(6, 5, 8, 0), IEND), r"^no IDAT chunk$"),
        ("critical chunk", good[:33] + chunk(b"ABCD", b"xyz") + good[33:], r"^unknown critical chunk ABCD$"),
        ("CgBI", SIG + chunk(b"CgBI", bytes(4)) + good[8:], r"^missing IHDR \(first chunk is CgBI\)$"),
        (
            "binary chunk type",
            good[:33] + chunk(b"\x00\x01\x02\x03", b"") + good[33:],
            r"^unknown critical chunk b'\\x00\\x01\\x02\\x03'$",
        ),
        (
            "huge length",
            good[:33] + struct.pack(">I", 0xFFFFFFF0) + b"IDAT" + bytes(8),
            r"^bad length 4294967280 of chunk IDAT$",
        ),
    ]


CASES = malformed_cases()


@pytest.mark.parametrize("name, data, message", CASES, ids=[c[0] for c in CASES])
def test_malformed(name, data, message):
    with pytest.raises(PNGError, match=message):
        decode_png(data)


def test_malformed_count():
    assert len(CASES) >= 12


def test_good_png_helper_is_valid():
    # the malformed cases derive from this file: it must decode
    assert decode_png(good_png())[:3] == (6, 5, 1)
