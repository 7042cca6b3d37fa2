"""Training kernels (conv.c, connected.c, random.c) against the loops they replace.

Each new kernel must give the floats of the im2col + gemm / axpy / Python code it replaces
(Darknet's order), bit for bit; `==` on float arrays also equates +0 and -0, the one
difference the zero-skipping kernels may make."""

import math
import re
from array import array

import numpy as np
import pytest

import _dlk
import reference.training
from dlserver import kernels
from dlserver.buffers import view, zeros
from dlserver.rng import Random, f32


def f32a(values) -> array:
    return array("f", np.asarray(values, dtype=np.float32).ravel().tobytes())


def arr(buf) -> np.ndarray:
    return np.frombuffer(buf, dtype=np.float32).copy()


def sparse_image(rng, batch, c, h, w, zero_frac=0.7, same_channels=False):
    x = rng.standard_normal((batch, c, h, w)).astype(np.float32)
    x[rng.random((batch, c, h, w)) < zero_frac] = 0
    x[:, :, :, : w // 4] = 0  # whole zero columns and rows, like MNIST borders
    x[:, :, : h // 5, :] = 0
    if same_channels:
        x[:] = x[:, :1]
    return x


def sparse_delta(rng, shape, zero_frac=0.75):
    d = rng.standard_normal(shape).astype(np.float32)
    d[rng.random(shape) < zero_frac] = 0
    return d


def reference_conv_forward(x, batch, c, h, w, W, n, size, pad, bias, act):
    """conv2d_direct (Darknet's k order) + add_bias + activate."""
    oh, ow = h + 2 * pad - size + 1, w + 2 * pad - size + 1
    out = zeros(batch * n * oh * ow)
    ws = zeros(_dlk.conv2d_direct_workspace(c, h, w, size, pad))
    _dlk.conv2d_direct(x, batch, c, h, w, W, n, size, pad, out, ws)
    _dlk.add_bias(out, bias, batch, n, oh * ow)
    _dlk.activate(out, len(out), act)
    return out


# batch, c, h, w, n, size, pad: LeNet's two layers; kernel sizes 1..8; size*c up to 32 (channel-last
# backward) and past it; pad 0..size-1 (and pad >= size for the forward only)
GEOMETRIES = [
    (3, 3, 28, 28, 6, 5, 2),
    (4, 6, 14, 14, 6, 5, 2),
    (2, 1, 9, 13, 5, 3, 1),
    (2, 2, 7, 6, 3, 4, 0),
    (2, 3, 10, 11, 7, 5, 0),
    (1, 2, 8, 8, 2, 7, 3),
    (2, 4, 5, 5, 9, 1, 0),
    (1, 3, 12, 5, 4, 6, 5),
    (2, 2, 6, 17, 1, 8, 4),
    (2, 7, 9, 9, 3, 5, 2),
    (1, 5, 6, 7, 2, 7, 1),
]


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("act", [0, 1, 2, 3])
def test_conv_forward_matches_direct_conv_bias_activation(geometry, act):
    batch, c, h, w, n, size, pad = geometry
    rng = np.random.default_rng(hash((geometry, act)) % 2**32)
    x = f32a(sparse_image(rng, batch, c, h, w, same_channels=c == 3))
    W = f32a(rng.standard_normal(n * c * size * size))
    bias = f32a(rng.standard_normal(n))
    oh, ow = h + 2 * pad - size + 1, w + 2 * pad - size + 1
    out = zeros(batch * n * oh * ow)
    _dlk.conv_forward(x, batch, c, h, w, W, n, size, pad, bias, act, out)
    ref = reference_conv_forward(x, batch, c, h, w, W, n, size, pad, bias, act)
    assert np.array_equal(arr(out), arr(ref))


def reference_conv_backward(x, batch, c, h, w, out, delta, n, size, pad, act, W, bias_upd, w_upd, prev):
    """The im2col + gemm backward of ConvolutionalLayer (Darknet's loops)."""
    oh, ow = h + 2 * pad - size + 1, w + 2 * pad - size + 1
    spatial, K, inputs, outputs = oh * ow, c * size * size, c * h * w, n * oh * ow
    _dlk.gradient(out, len(out), act, delta)
    _dlk.backward_bias(bias_upd, delta, batch, n, spatial)
    cols = zeros(K * spatial)
    for b in range(batch):
        d = view(delta, b * outputs, outputs)
        _dlk.im2col(view(x, b * inputs, inputs), c, h, w, size, 1, pad, cols)
        _dlk.gemm(0, 1, n, K, spatial, 1.0, d, spatial, cols, spatial, 1.0, w_upd, K)
        if prev is not None:
            _dlk.gemm(1, 0, K, spatial, n, 1.0, W, K, d, spatial, 0.0, cols, spatial)
            _dlk.col2im(cols, c, h, w, size, 1, pad, view(prev, b * inputs, inputs))


@pytest.mark.parametrize("geometry", [g for g in GEOMETRIES if g[6] < g[5] or g[5] == 1])
@pytest.mark.parametrize("act", [0, 1, 2, 3])
@pytest.mark.parametrize("with_prev", [True, False])
def test_conv_backward_matches_im2col_gemm(geometry, act, with_prev):
    batch, c, h, w, n, size, pad = geometry
    if pad >= size:
        pytest.skip("conv_backward needs pad < size")
    rng = np.random.default_rng(hash((geometry, act, with_prev)) % 2**32)
    oh, ow = h + 2 * pad - size + 1, w + 2 * pad - size + 1
    x = f32a(sparse_image(rng, batch, c, h, w, same_channels=c == 3))
    W = f32a(rng.standard_normal(n * c * size * size))
    out = f32a(
        np.maximum(rng.standard_normal(batch * n * oh * ow), 0)
        if act == 1
        else rng.random(batch * n * oh * ow)
    )
    delta0 = sparse_delta(rng, batch * n * oh * ow)
    bias0 = rng.standard_normal(n).astype(np.float32)
    wupd0 = rng.standard_normal(n * c * size * size).astype(np.float32)
    prev0 = rng.standard_normal(batch * c * h * w).astype(np.float32)
    results = []
    for kernel in ("new", "reference"):
        delta, bias_upd, w_upd = f32a(delta0), f32a(bias0), f32a(wupd0)
        prev = f32a(prev0) if with_prev else None
        if kernel == "new":
            _dlk.conv_backward(x, batch, c, h, w, out, delta, n, size, pad, act, W, bias_upd, w_upd, prev)
        else:
            reference_conv_backward(
                x, batch, c, h, w, out, delta, n, size, pad, act, W, bias_upd, w_upd, prev
            )
        results.append([arr(delta), arr(bias_upd), arr(w_upd)] + ([arr(prev)] if with_prev else []))
    for new, ref in zip(*results):
        assert np.array_equal(new, ref)


def test_conv_backward_same_channel_shortcut_is_exact():
    """Grayscale replicated into 3 channels: the channel-0 sums serve all three, same floats."""
    rng = np.random.default_rng(5)
    batch, c, h, w, n, size, pad = 4, 3, 28, 28, 6, 5, 2
    x = sparse_image(rng, batch, c, h, w, same_channels=True)
    x[1, 2, 10, 10] += 1.0  # image 1 is not gray: the general path for it
    x = f32a(x)
    W = f32a(rng.standard_normal(n * c * size * size))
    out = f32a(rng.random(batch * n * h * w))
    d0 = sparse_delta(rng, batch * n * h * w)
    got, ref = f32a(np.zeros(n * c * 25)), f32a(np.zeros(n * c * 25))
    _dlk.conv_backward(x, batch, c, h, w, out, f32a(d0), n, size, pad, 0, W, zeros(n), got, None)
    reference_conv_backward(x, batch, c, h, w, out, f32a(d0), n, size, pad, 0, W, zeros(n), ref, None)
    assert np.array_equal(arr(got), arr(ref))


def test_conv_kernels_check_sizes():
    x, W, b, out = zeros(3 * 28 * 28), zeros(6 * 75), zeros(6), zeros(6 * 28 * 28)
    with pytest.raises(ValueError, match="conv output"):
        _dlk.conv_forward(x, 1, 3, 28, 28, W, 6, 5, 2, b, 1, zeros(10))
    with pytest.raises(ValueError, match="conv input"):
        _dlk.conv_forward(x, 2, 3, 28, 28, W, 6, 5, 2, b, 1, out)
    with pytest.raises(ValueError, match="bad geometry"):
        _dlk.conv_forward(x, 1, 3, 28, 28, W, 6, 9, 2, b, 1, out)
    with pytest.raises(ValueError, match="activation"):
        _dlk.conv_forward(x, 1, 3, 28, 28, W, 6, 5, 2, b, 14, out)  # 14 = ACT_COUNT
    with pytest.raises(ValueError, match="conv weight updates"):
        _dlk.conv_backward(x, 1, 3, 28, 28, out, zeros(len(out)), 6, 5, 2, 1, W, b, zeros(5), None)
    with pytest.raises(ValueError, match="conv input delta"):
        _dlk.conv_backward(x, 1, 3, 28, 28, out, zeros(len(out)), 6, 5, 2, 1, W, b, zeros(450), zeros(5))
    with pytest.raises(ValueError, match="bad geometry"):
        _dlk.conv_backward(x, 1, 3, 28, 28, out, zeros(len(out)), 6, 5, 5, 1, W, b, zeros(450), None)
    with pytest.raises(BufferError):
        _dlk.conv_backward(x, 1, 3, 28, 28, out, zeros(len(out)), 6, 5, 2, 1, W, b, zeros(450), b"readonly")


@pytest.mark.parametrize("planes, h, w", [(6, 28, 28), (5, 14, 14), (3, 2, 2), (2, 6, 18), (1, 4, 10)])
def test_maxpool_2x2_matches_maxpool_forward(planes, h, w):
    rng = np.random.default_rng(planes * h + w)
    x = rng.integers(-3, 3, (planes, h, w)).astype(np.float32)  # many ties: the first maximum wins
    x[0, 0, :2] = -np.inf
    x[0, 1, :2] = -np.inf  # a window of -inf: index -1, -FLT_MAX
    if planes > 1:
        x[1, 0, 0] = np.nan
    x = f32a(x)
    n_out = planes * (h // 2) * (w // 2)
    out, idx = zeros(n_out), array("i", bytes(4 * n_out))
    ref, ref_idx = zeros(n_out), array("i", bytes(4 * n_out))
    _dlk.maxpool_forward_2x2(x, planes, h, w, out, idx)
    _dlk.maxpool_forward(x, 1, planes, h, w, 2, 2, 1, ref, ref_idx)
    assert out.tobytes() == ref.tobytes() and idx.tobytes() == ref_idx.tobytes()
    with pytest.raises(ValueError):
        _dlk.maxpool_forward_2x2(x, planes, h + 1, w, out, idx)
    with pytest.raises(ValueError):
        _dlk.maxpool_forward_2x2(x, planes, h, w, zeros(n_out - 1), idx)


@pytest.mark.parametrize("batch, inputs, outputs", [(100, 294, 120), (7, 13, 5), (3, 4, 9), (1, 1, 1)])
@pytest.mark.parametrize("act", [0, 1, 2, 3])
@pytest.mark.parametrize("with_prev", [True, False])
def test_connected_backward_matches_gemm(batch, inputs, outputs, act, with_prev):
    rng = np.random.default_rng(batch * inputs + outputs + act)
    x = f32a(sparse_delta(rng, batch * inputs, 0.5))
    W = f32a(rng.standard_normal(outputs * inputs))
    out = f32a(rng.random(batch * outputs) - 0.3)
    d0 = sparse_delta(rng, batch * outputs, 0.6)
    b0, w0 = (
        rng.standard_normal(outputs).astype(np.float32),
        rng.standard_normal(outputs * inputs).astype(np.float32),
    )
    p0 = rng.standard_normal(batch * inputs).astype(np.float32)
    delta, bu, wu, prev = f32a(d0), f32a(b0), f32a(w0), f32a(p0) if with_prev else None
    _dlk.connected_backward(x, batch, inputs, out, delta, outputs, act, W, bu, wu, prev)
    rdelta, rbu, rwu, rprev = f32a(d0), f32a(b0), f32a(w0), f32a(p0) if with_prev else None
    _dlk.gradient(out, len(out), act, rdelta)
    _dlk.backward_bias(rbu, rdelta, batch, outputs, 1)
    _dlk.gemm(1, 0, outputs, inputs, batch, 1.0, rdelta, outputs, x, inputs, 1.0, rwu, inputs)
    if with_prev:
        _dlk.gemm(0, 0, batch, inputs, outputs, 1.0, rdelta, outputs, W, inputs, 1.0, rprev, inputs)
        assert np.array_equal(arr(prev), arr(rprev))
    for new, ref in ((delta, rdelta), (bu, rbu), (wu, rwu)):
        assert np.array_equal(arr(new), arr(ref))
    with pytest.raises(ValueError, match="connected weight updates"):
        _dlk.connected_backward(x, batch, inputs, out, delta, outputs, act, W, bu, zeros(len(W) - 1), prev)


def test_sgd_update_matches_axpy_scal():
    rng = np.random.default_rng(1)
    arrays = [rng.standard_normal(n).astype(np.float32) for n in (10, 10, 333, 333)]
    step, momentum, decay = f32(0.0099800136 / 100), 0.9, f32(-f32(5e-05) * 100)
    b, bu, w, wu = (f32a(a) for a in arrays)
    _dlk.sgd_update(b, bu, w, wu, step, momentum, decay)
    rb, rbu, rw, rwu = (f32a(a) for a in arrays)
    _dlk.axpy(len(rb), step, rbu, rb)
    _dlk.scal(len(rbu), momentum, rbu)
    _dlk.axpy(len(rw), decay, rw, rwu)
    _dlk.axpy(len(rw), step, rwu, rw)
    _dlk.scal(len(rwu), momentum, rwu)
    for new, ref in ((b, rb), (bu, rbu), (w, rw), (wu, rwu)):
        assert new.tobytes() == ref.tobytes()
    with pytest.raises(ValueError):
        _dlk.sgd_update(b, bu, w, zeros(3), step, momentum, decay)


def python_uniform_weights(rng, n, scale):
    return array("f", [f32(scale * rng.uniform(-1.0, 1.0)) for _ in range(n)])


def python_normal_weights(rng, n, scale):
    return array("f", [f32(scale * rng.normal()) for _ in range(n)])


@pytest.mark.parametrize("seed", [None, 0, 7, 123456789])
def test_bulk_draws_match_python_random(seed):
    py, c = Random(seed), Random(seed)
    for n, kind in (
        (450, "normal"),
        (901, "normal"),
        (35280, "uniform"),
        (3, "normal"),
        (10080, "uniform"),
        (1, "normal"),
        (1, "normal"),
        (840, "uniform"),
        (100, "below"),
    ):
        if kind == "normal":
            scale = f32(math.sqrt(2.0 / 75))
            ref = python_normal_weights(py, n, scale)
            got = zeros(n)
            c.state, c.spare = _dlk.rand_normal_fill(got, n, scale, c.state, c.spare)
        elif kind == "uniform":
            scale = f32(math.sqrt(2.0 / 294))
            ref = python_uniform_weights(py, n, scale)
            got = zeros(n)
            c.state = _dlk.rand_uniform_fill(got, n, -1.0, 1.0, scale, c.state)
        else:
            ref = [py.rand() % 60000 for _ in range(n)]
            c.state, got = _dlk.rand_below(n, 60000, c.state)
        assert (got.tobytes() == ref.tobytes()) if kind != "below" else got == ref
        assert (c.state, c.spare) == (py.state, py.spare)
    with pytest.raises(ValueError):
        _dlk.rand_uniform_fill(zeros(2), 3, -1.0, 1.0, 1.0, 0)
    with pytest.raises(ValueError):
        _dlk.rand_below(1, 0, 0)


def _png_bytes(pixels: np.ndarray, mode: str, **options) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    image = Image.fromarray(pixels) if mode is None else Image.fromarray(pixels, mode)
    image.save(buf, "PNG", **options)
    return buf.getvalue()


def _python_chw(data: bytes, w: int, h: int):
    """decode_png + pixels_to_chw (the dataset's slow path), or the error it raises."""
    from dlserver.errors import DLServerError
    from dlserver.image.png import decode_png

    try:
        width, height, comps, pixels = decode_png(data)
    except DLServerError as e:
        return e
    if (width, height) != (w, h) or comps is None:
        return None
    out = zeros(3 * w * h)
    _dlk.pixels_to_chw(pixels, width, height, comps, out)
    return out


def _check_png(data: bytes, w: int = 28, h: int = 28) -> bool:
    """png_load_chw is True only where the Python decoder succeeds, with the same floats."""
    out = zeros(3 * w * h)
    fast = _dlk.png_load_chw(data, w, h, out)
    ref = _python_chw(data, w, h)
    if fast:
        assert isinstance(ref, array) and out.tobytes() == ref.tobytes()
    return fast


def test_png_fast_path_matches_python_decoder():
    rng = np.random.default_rng(11)
    handled = 0
    for i in range(120):
        mode = ("L", "LA", "RGB", "RGBA")[i % 4]
        shape = (28, 28) if mode == "L" else (28, 28, len(mode))
        kind = i % 3
        if kind == 0:
            pixels = rng.integers(0, 256, shape, dtype=np.uint8)  # noise: stored/dynamic blocks
        elif kind == 1:
            pixels = np.zeros(shape, np.uint8)
            pixels[5:20, 8:12] = 255  # MNIST-like strokes
        else:
            pixels = (np.arange(np.prod(shape)) % 7).astype(np.uint8).reshape(shape)  # long matches
        level = (0, 1, 6, 9)[i % 4]
        handled += _check_png(_png_bytes(pixels, mode, compress_level=level, optimize=i % 5 == 0))
    assert handled == 120


def test_png_fast_path_refuses_what_it_does_not_handle():
    gray = np.random.default_rng(2).integers(0, 256, (28, 28), dtype=np.uint8)
    good = _png_bytes(gray, "L")
    assert _check_png(good)
    assert not _check_png(good, 27, 28)  # another size: resize path
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(gray, "L").convert("P").save(buf, "PNG")
    assert not _check_png(buf.getvalue())  # palette
    assert not _check_png(_png_bytes(gray.astype(np.uint16) * 200, None))  # 16-bit
    import zlib

    rng = np.random.default_rng(3)
    strokes = (gray > 200).astype(np.uint8) * 255
    for source in (
        good,
        _png_bytes(strokes, "L"),
        _png_bytes(strokes, "L", compress_level=9),
        _png_bytes(np.stack([gray] * 3, -1), "RGB", compress_level=1),
        _png_bytes(gray, "L", compress_level=0),
    ):
        accepted = 0
        for trial in range(300):  # corrupted files
            data = bytearray(source)
            for _ in range(1 + trial % 3):
                data[rng.integers(8, len(data))] ^= 1 << rng.integers(0, 8)
            if trial % 4:  # ... with CRCs fixed up, so
                pos = 8  # the inflate checks run
                while pos + 12 <= len(data):
                    length = int.from_bytes(data[pos : pos + 4], "big")
                    if pos + 12 + length > len(data):
                        break
                    crc = zlib.crc32(bytes(data[pos + 4 : pos + 8 + length]))
                    data[pos + 8 + length : pos + 12 + length] = crc.to_bytes(4, "big")
                    pos += 12 + length
            accepted += _check_png(bytes(data))
        assert accepted > 0  # the inflate path was reached
    for cut in range(0, len(good), 7):  # truncated files
        assert not _check_png(good[:cut])
    with pytest.raises(ValueError):
        _dlk.png_load_chw(good, 28, 28, zeros(100))


# ---------------------------------------------------------------- end to end


def _tiny_set(workdir, max_batches=25, batch=30):
    """90 synthetic 28x28 gray PNGs of 3 classes (sparse noise plus a bar), a dataset and a cfg."""
    from PIL import Image

    from test_training import lenet_cfg

    rng = np.random.default_rng(4)
    (workdir / "data" / "tiny").mkdir(parents=True)
    paths = []
    for i in range(90):
        label = i % 3
        pixels = rng.integers(0, 30, (28, 28), dtype=np.uint8)
        pixels[rng.random((28, 28)) < 0.5] = 0
        pixels[label * 9 : label * 9 + 9, 4:24] = 200 + label * 20
        paths.append(f"data/tiny/t_{i:05d}_c{label}.png")
        Image.fromarray(pixels, "L").save(workdir / paths[-1])
    (workdir / "data" / "tiny.list").write_text("\n".join(paths) + "\n")
    (workdir / "data" / "labels.list").write_text("c0\nc1\nc2\n")
    (workdir / "cfg" / "tiny.dataset").write_text(
        "classes=3\ntrain=data/tiny.list\nbackup=model\nlabels=data/labels.list\n"
    )
    (workdir / "cfg" / "tiny.cfg").write_text(
        lenet_cfg(max_batches=max_batches, batch=batch, policy="constant").replace("output= 10", "output= 3")
    )
    return ["classifier", "train", "cfg/tiny.dataset", "cfg/tiny.cfg"]


def _train_tiny(capsys, args, seed):
    from dlserver.main import main

    status = main(["dl-server", *args, "-seed", str(seed)])
    out, err = capsys.readouterr()
    assert status == 0, err
    return out


def test_training_equals_the_loops_it_replaced(workdir, capsys, monkeypatch):
    """Train from scratch for 25 batches (init, loading, forward, backward, update, dropout draws):
    the new kernels and the old code paths give the same loss lines and the same weight bytes."""
    monkeypatch.setenv("DL_SERVER_CLOCK", "0")
    args = _tiny_set(workdir)
    weights = workdir / "model" / "tiny.weights"
    new_out = _train_tiny(capsys, args, 3)
    new = weights.read_bytes()
    with kernels.using(reference.training):
        ref_out = _train_tiny(capsys, args, 3)
    assert new_out == ref_out
    assert weights.read_bytes() == new


@pytest.mark.component
def test_training_in_component_equals_native(component, workdir, capsys, monkeypatch):
    """The kernels built for wasm32 (SIMD128) and natively give the same loss lines and weights."""
    from conftest import run_wasmtime

    monkeypatch.setenv("DL_SERVER_CLOCK", "0")
    args = _tiny_set(workdir, max_batches=12)
    native_out = _train_tiny(capsys, args, 5)
    weights = workdir / "model" / "tiny.weights"
    native = weights.read_bytes()
    weights.unlink()
    result = run_wasmtime(workdir, *args, "-seed", "5")
    assert result.returncode == 0, result.stderr
    assert weights.read_bytes() == native

    def strip(text):
        return [re.sub(r"[\d.]+ seconds", "", line) for line in text.splitlines()]

    assert strip(result.stdout) == strip(native_out)
