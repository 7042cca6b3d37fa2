"""`classifier valid` made faster (issue 13; docs/darknet-contract.md §10.5):

- fast mode: conv_forward convolves an image whose channel planes are bit-identical (grayscale
  given as R = G = B, as MNIST is read) as one channel with the channels' weights summed; the
  oracle is the exact kernel (within the fast mode's tolerance) and, bit for bit, the same
  kernel on the one-channel image with the weights summed in channel order;
- both modes: the valid loop ranks the label with top_hits instead of sorting indexes; the
  oracle is top_k (Darknet's stable descending order), on ties, signed zeros, infinities, NaN.
"""

import math
import random
from array import array

import pytest

from dlserver import kernels
from dlserver.commands.classifier import top_hits, top_k

TOLERANCE = 1e-5  # |fast - exact| <= this * sum over the terms of |w * x| (test_fast_mode.py's "fused")


@pytest.fixture(autouse=True)
def exact_afterwards():
    yield
    kernels.set_fast_mode(False)


def conv(inp, b, c, h, w, W, n, size, pad, bias, fast: bool):
    kernels.set_fast_mode(fast)
    out = array("f", bytes(4 * b * n * (h + 2 * pad - size + 1) * (w + 2 * pad - size + 1)))
    kernels.conv_forward(inp, b, c, h, w, W, n, size, pad, bias, kernels.Activation.LINEAR, out)
    kernels.set_fast_mode(False)
    return out


def gray_batch(rng: random.Random, b: int, c: int, h: int, w: int, gray: list[bool]) -> array:
    """b images of c planes; image i has c copies of one plane when gray[i] (MNIST-like: half zeros)."""

    def plane() -> list[float]:
        return [0.0 if rng.random() < 0.5 else rng.uniform(0, 1) for _ in range(h * w)]

    data = array("f")
    for i in range(b):
        first = plane()
        data.extend(first)
        for _ in range(1, c):
            data.extend(first if gray[i] else plane())
    return data


@pytest.mark.parametrize(("c", "n", "size", "pad", "h", "w"), [(3, 6, 5, 2, 28, 28), (2, 5, 3, 1, 9, 13)])
def test_fast_gray_images_run_as_one_channel(c, n, size, pad, h, w):
    rng = random.Random(13)
    gray = [True, False, True]
    b = len(gray)
    inp = gray_batch(rng, b, c, h, w, gray)
    W = array("f", [rng.uniform(-1, 1) for _ in range(n * c * size * size)])
    bias = array("f", [rng.uniform(-1, 1) for _ in range(n)])
    exact = conv(inp, b, c, h, w, W, n, size, pad, bias, False)
    fast = conv(inp, b, c, h, w, W, n, size, pad, bias, True)
    # the sums of |terms| of each output (bias included), by the exact kernel on absolute values
    absolute = [array("f", map(abs, x)) for x in (inp, W, bias)]
    mag = conv(absolute[0], b, c, h, w, absolute[1], n, size, pad, absolute[2], False)
    assert all(abs(e - f) <= TOLERANCE * m for e, f, m in zip(exact, fast, mag))
    # gray images: the one-channel convolution with the weights summed in channel order, bit for bit
    ss, plane, out_size = size * size, h * w, len(exact) // b
    merged = array("f", bytes(4 * n * ss))
    for f_ in range(n):
        for j in range(ss):
            s = array("f", [0.0])
            for ch in range(c):
                s[0] = s[0] + W[(f_ * c + ch) * ss + j]  # float32 sum, one rounding per addition
            merged[f_ * ss + j] = s[0]
    for i in range(b):
        image = inp[i * c * plane : (i + 1) * c * plane]
        got = fast[i * out_size : (i + 1) * out_size]
        if gray[i]:
            one = conv(image[:plane], 1, 1, h, w, merged, n, size, pad, bias, True)
            assert got.tobytes() == one.tobytes()
            assert got.tobytes() != exact[i * out_size : (i + 1) * out_size].tobytes()  # the merge did run
        else:  # not gray: the fast build's ordinary path, as a batch of one
            assert got.tobytes() == conv(image, 1, c, h, w, W, n, size, pad, bias, True).tobytes()


def test_fast_planes_differing_in_one_bit_are_not_gray():
    """-0.0 against +0.0 in one pixel of the last plane: not bit-identical, so not merged. (The
    sign of a zero input changes no sum of the ordinary path: it gives what the gray image would
    give unmerged, which differs from the merged result.)"""
    rng = random.Random(2)
    c, h, w, n, size, pad = 3, 12, 12, 4, 5, 2
    plane = [rng.uniform(0, 1) for _ in range(h * w)]
    plane[7] = 0.0
    last = list(plane)
    last[7] = -0.0
    W = array("f", [rng.uniform(-1, 1) for _ in range(n * c * size * size)])
    bias = array("f", [0.0] * n)
    signed = conv(array("f", plane + plane + last), 1, c, h, w, W, n, size, pad, bias, True)
    gray = conv(array("f", plane * 3), 1, c, h, w, W, n, size, pad, bias, True)
    assert signed.tobytes() != gray.tobytes()


VALUES = [0.0, -0.0, 0.25, 0.5, 0.5, 1.0, -1.0, math.inf, -math.inf, 1e-30]


@pytest.mark.parametrize("seed", range(40))
def test_top_hits_is_top_k(seed):
    rng = random.Random(seed)
    n = rng.choice([2, 3, 5, 10])
    for _ in range(200):
        row = [rng.choice(VALUES) if rng.random() < 0.6 else rng.uniform(-1, 1) for _ in range(n)]
        if rng.random() < 0.1:
            row[rng.randrange(n)] = math.nan
        row = array("f", row).tolist()  # float32 values, as the network gives them
        klass = rng.randrange(-1, n)
        k = rng.randint(1, n)
        indexes = top_k(row, k)
        assert top_hits(row, klass, k) == (indexes[0] == klass, klass in indexes), (row, klass, k)


@pytest.mark.parametrize(("planes", "h", "w"), [(6, 28, 28), (6, 14, 14), (3, 2, 10), (2, 6, 2)])
def test_maxpool_2x2_without_indexes_same_output(planes, h, w):
    """Inference (indexes None) gives the outputs of the pass that keeps indexes, bit for bit:
    NaN, infinities, -FLT_MAX, signed zeros and ties included; ow = 7 and 5 exercise the tail."""
    rng = random.Random(planes * h + w)
    special = [math.nan, math.inf, -math.inf, -3.4028234663852886e38, 0.0, -0.0, 1.0]
    n_in = planes * h * w
    values = [rng.choice(special) if rng.random() < 0.3 else rng.uniform(-1, 1) for _ in range(n_in)]
    inp = array("f", values)
    n_out = planes * (h // 2) * (w // 2)
    with_indexes, without = array("f", bytes(4 * n_out)), array("f", bytes(4 * n_out))
    kernels.maxpool_forward_2x2(inp, planes, h, w, with_indexes, array("i", bytes(4 * n_out)))
    kernels.maxpool_forward_2x2(inp, planes, h, w, without, None)
    assert without.tobytes() == with_indexes.tobytes()
