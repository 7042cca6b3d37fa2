"""The fast mode (`-fast`, DL_SERVER_FAST=1, `dl-server --fast`; docs/darknet-contract.md §10.5)
and its accuracy contract, against the exact path as the oracle:

- kernels: the fast gemm and convolutions, and Winograd F(2x2,3x3) / F(4x4,3x3), within a
  relative error of the exact path's sums of |terms| (TOLERANCE);
- YOLOv3-tiny on Debian's darknet images (dog, person, horses, kite: /usr/share/darknet/data,
  sha256-pinned, never downloaded): every layer's output within LAYER_TOLERANCE of its largest
  exact value, and the same detections (classes, boxes within 1 pixel, probabilities within
  1 point); the component gives the native fast path's bytes;
- MNIST: `classifier valid` on the 10000 test images, same top-1 within 0.01%; LeNet trained
  2000 batches in fast mode reaches top-1 >= 0.95 (slow).
"""

import hashlib
import os
import random
import re
import shutil
from array import array
from pathlib import Path

import pytest

from conftest import NEEDS_HOST_WASM, PREDICT_ARGS, ROOT, run_host, run_wasmtime, seed_file
from dlserver import fastmode, kernels
from dlserver.boxes import do_nms_sort, get_network_boxes
from dlserver.commands.detector import NMS
from dlserver.image.load import load_image_color
from dlserver.image.ops import letterbox_image
from dlserver.main import main
from dlserver.network import parse_network_cfg
from dlserver.weights import load_weights

WEIGHTS = ROOT / "model" / "yolov3-tiny.weights"
DEBIAN_IMAGES = Path("/usr/share/darknet/data")
IMAGES = {  # Debian's darknet package (CI installs it), checked before use
    "dog.jpg": "5a9522051c3cec2bbd2f6323fccba32e8fbf3ddcc2b3e2fd46b04c720bc6f866",
    "person.jpg": "cdcbab947e46110fc2b77784ac54ddbbab2640f1e44cb5e91fc8984a9793a7d1",
    "horses.jpg": "c8f0a677a1356569e2ce71d2fa88c1030c0ae57ecf5e14170e02d9a86a20dcb4",
    "kite.jpg": "87410f52f79cc256c3949b48a3548632c07c8e9943468ef8caa6250f6643be8e",
}
# |fast - exact| <= TOLERANCE[kernel] * sum over the terms of |w * x|
TOLERANCE = {"fused": 1e-5, 2: 2e-6, 4: 2e-5}
LAYER_TOLERANCE = 1e-3  # YOLOv3-tiny: max |fast - exact| <= this * max |exact|, layer by layer
THRESH = 0.5


@pytest.fixture(autouse=True)
def exact_afterwards():
    yield
    kernels.set_fast_mode(False)


def floats(rng: random.Random, n: int, zeros: float = 0.0) -> array:
    return array("f", [0.0 if rng.random() < zeros else rng.uniform(-1, 1) for _ in range(n)])


def conv_exact(inp, c, h, w, W, n, pad, size=3):
    """The exact path (im2col + gemm) and the sums of |terms| of each output."""
    oh, ow = h + 2 * pad - size + 1, w + 2 * pad - size + 1
    K, spatial = c * size * size, oh * ow
    col = array("f", bytes(4 * K * spatial))
    kernels.im2col(inp, c, h, w, size, 1, pad, col)
    out, mag = array("f", bytes(4 * n * spatial)), array("f", bytes(4 * n * spatial))
    kernels.gemm(0, 0, n, spatial, K, 1.0, W, K, col, spatial, 1.0, out, spatial)
    absolute = array("f", map(abs, W)), array("f", map(abs, col))
    kernels.gemm(0, 0, n, spatial, K, 1.0, absolute[0], K, absolute[1], spatial, 1.0, mag, spatial)
    return out, mag


def worst(fast, exact, mag) -> float:
    return max(abs(a - b) / m if m else abs(a - b) for a, b, m in zip(fast, exact, mag))


# ---------------------------------------------------------------- the switch


def test_flag_taken_out_anywhere_and_env(monkeypatch):
    monkeypatch.delenv(fastmode.ENV, raising=False)
    assert fastmode.take(["dl-server", "detect", "-fast", "a.cfg"]) == (
        ["dl-server", "detect", "a.cfg"],
        True,
    )
    assert fastmode.take(["dl-server", "detect", "a.cfg"]) == (["dl-server", "detect", "a.cfg"], False)
    monkeypatch.setenv(fastmode.ENV, "1")
    assert fastmode.take(["dl-server", "detect"])[1] is True
    monkeypatch.setenv(fastmode.ENV, "0")
    assert fastmode.take(["dl-server", "detect"])[1] is False


def test_bad_env_is_one_error_line(monkeypatch, capsys):
    monkeypatch.setenv(fastmode.ENV, "yes")
    assert main(["dl-server", "detect", "x.cfg", "x.weights", "x.jpg"]) == 1
    err = capsys.readouterr().err
    assert err == "dl-server: error: DL_SERVER_FAST=yes: must be 0 or 1\n"
    assert not kernels.fast_mode()


def test_fast_mode_is_off_after_a_run(workdir, capsys):
    assert main(["dl-server", "classifier", "predict", "-fast"]) == 1  # too few arguments
    capsys.readouterr()
    assert not kernels.fast_mode()


@NEEDS_HOST_WASM[0]  # component
@NEEDS_HOST_WASM[1]  # skipped without the component
def test_host_fast_sets_the_guests_variable(program, prediction_one, capsys):
    """`dl-server --fast` passes DL_SERVER_FAST=1 (over an --env of it): the bad value fails, and
    with --fast the same run succeeds."""
    sources = ["-i", "args.cfg", "cfg", "model", "data", "-e", "--env", "DL_SERVER_FAST=yes"]
    assert run_host(program, PREDICT_ARGS, *sources) == 1
    assert "dl-server: error: DL_SERVER_FAST=yes: must be 0 or 1\n" in capsys.readouterr().err
    assert run_host(program, PREDICT_ARGS, *sources, "--fast") == 0


# ---------------------------------------------------------------- kernels


@pytest.mark.parametrize("ta, tb, M, N, K", [(0, 0, 37, 50, 300), (0, 1, 9, 70, 513), (1, 0, 64, 13, 40)])
def test_fast_gemm_within_tolerance(ta, tb, M, N, K):
    rng = random.Random(M * N + K)
    A, B = floats(rng, M * K), floats(rng, K * N)
    lda, ldb = (M if ta else K), (K if tb else N)
    results = {}
    for fast in (False, True):
        kernels.set_fast_mode(fast)
        C = array("f", bytes(4 * M * N))
        kernels.gemm(ta, tb, M, N, K, 1.0, A, lda, B, ldb, 1.0, C, N)
        results[fast] = C
    kernels.set_fast_mode(False)
    absA, absB, mag = array("f", map(abs, A)), array("f", map(abs, B)), array("f", bytes(4 * M * N))
    kernels.gemm(ta, tb, M, N, K, 1.0, absA, lda, absB, ldb, 1.0, mag, N)
    assert worst(results[True], results[False], mag) <= TOLERANCE["fused"]


def test_fast_training_convolution_within_tolerance():
    """conv_forward and conv_backward (LeNet's layers) of the fast build against the exact one."""
    rng = random.Random(5)
    b, c, h, w, n, size, pad = 3, 6, 14, 14, 6, 5, 2
    inp, W, bias = floats(rng, b * c * h * w, zeros=0.5), floats(rng, n * c * size * size), floats(rng, n)
    outs = {}
    for fast in (False, True):
        kernels.set_fast_mode(fast)
        out = array("f", bytes(4 * b * n * h * w))
        kernels.conv_forward(inp, b, c, h, w, W, n, size, pad, bias, kernels.Activation.LINEAR, out)
        delta = array("f", [x * 0.5 for x in out])
        bu, wu, prev = (
            array("f", bytes(4 * n)),
            array("f", bytes(4 * len(W))),
            array("f", bytes(4 * len(inp))),
        )
        kernels.conv_backward(inp, b, c, h, w, out, delta, n, size, pad, 0, W, bu, wu, prev)
        outs[fast] = (out, bu, wu, prev)
    for exact, fast in zip(outs[False], outs[True]):
        scale = max(map(abs, exact))
        assert max(abs(x - y) for x, y in zip(exact, fast)) <= TOLERANCE["fused"] * scale * 8


def winograd_size(n: int, c: int, m: int) -> int:
    """Floats of the transformed weights: (m+2)^2 planes of n filters rounded up to 8, c deep."""
    return (m + 2) ** 2 * ((n + 7) // 8 * 8) * c


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize(
    "c, h, w, n, pad",
    [(16, 26, 26, 32, 1), (5, 13, 11, 7, 1), (8, 9, 10, 4, 0), (3, 5, 5, 2, 2), (3, 64, 61, 9, 1)],
)
def test_winograd_against_exact_convolution(m, c, h, w, n, pad):
    rng = random.Random(c * h + n + m)
    inp, W = floats(rng, c * h * w), floats(rng, n * c * 9)
    exact, mag = conv_exact(inp, c, h, w, W, n, pad)
    U = array("f", bytes(4 * winograd_size(n, c, m)))
    kernels.winograd_weights(W, n, c, m, U)
    out = array("f", [float("nan")]) * len(exact)  # every output written
    kernels.conv_winograd(inp, 1, c, h, w, U, n, pad, m, False, out)
    assert worst(out, exact, mag) <= TOLERANCE[m]
    fused = array("f", [float("nan")]) * len(exact)  # weights transformed as they are used: same floats
    kernels.conv_winograd(inp, 1, c, h, w, W, n, pad, m, True, fused)
    assert fused == out


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("m", [2, 4])
def test_winograd_batch_is_images_one_by_one(m, fused):
    rng = random.Random(m)
    b, c, h, w, n = 3, 6, 7, 9, 5
    inp, W = floats(rng, b * c * h * w), floats(rng, n * c * 9)
    U = array("f", bytes(4 * winograd_size(n, c, m)))
    kernels.winograd_weights(W, n, c, m, U)
    K = W if fused else U
    whole = array("f", bytes(4 * b * n * h * w))
    kernels.conv_winograd(inp, b, c, h, w, K, n, 1, m, fused, whole)
    for i in range(b):
        one = array("f", bytes(4 * n * h * w))
        kernels.conv_winograd(inp[i * c * h * w : (i + 1) * c * h * w], 1, c, h, w, K, n, 1, m, fused, one)
        assert whole[i * n * h * w : (i + 1) * n * h * w] == one


def test_winograd_bad_geometry_is_an_error():
    U, out = array("f", bytes(4 * 16)), array("f", bytes(4 * 16))
    with pytest.raises(ValueError, match="winograd"):
        kernels.conv_winograd(array("f", bytes(4 * 4)), 1, 1, 2, 2, U, 1, 0, 2, False, out)  # 3x3 on 2x2
    with pytest.raises(ValueError, match="bad geometry"):
        kernels.winograd_weights(array("f", bytes(36)), 1, 1, 3, U)  # F(3x3) is not built


# ---------------------------------------------------------------- YOLOv3-tiny on Debian's images


def debian_image(name: str) -> Path:
    path = DEBIAN_IMAGES / name
    if not path.exists():
        pytest.skip(f"{path} missing (Debian's darknet package)")
    if hashlib.sha256(path.read_bytes()).hexdigest() != IMAGES[name]:
        pytest.fail(f"{path}: not the pinned image (sha256 differs)")
    return path


@pytest.fixture
def yolo(workdir):
    if not WEIGHTS.exists():
        pytest.skip("model/yolov3-tiny.weights missing (make yolo_detection)")
    net = parse_network_cfg("cfg/yolov3-tiny.cfg", batch=1)
    load_weights(net, str(WEIGHTS))
    net.set_batch(1)
    return net


def detect(net, path: Path, fast: bool):
    """Every layer's output and the detections [(class, left, right, top, bottom, percent)]."""
    kernels.set_fast_mode(fast)
    im = load_image_color(str(path))
    net.predict(letterbox_image(im, net.w, net.h).data)
    outputs = [array("f", layer.output) for layer in net.layers]
    classes = net.layers[-1].classes
    dets = do_nms_sort(get_network_boxes(net, im.w, im.h, THRESH), classes, NMS)
    found = []
    for d in dets:
        for j in range(classes):
            if d.prob[j] > THRESH:
                box = (
                    (d.x - d.w / 2) * im.w,
                    (d.x + d.w / 2) * im.w,
                    (d.y - d.h / 2) * im.h,
                    (d.y + d.h / 2) * im.h,
                )
                found.append((j, *box, 100 * d.prob[j]))
    kernels.set_fast_mode(False)
    return outputs, sorted(found)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(IMAGES))
def test_same_detections_on_debian_images(yolo, name, capsys):
    path = debian_image(name)
    exact_layers, exact = detect(yolo, path, False)
    fast_layers, fast = detect(yolo, path, True)
    for i, (e, f) in enumerate(zip(exact_layers, fast_layers)):
        scale = max(map(abs, e))
        assert max(abs(x - y) for x, y in zip(e, f)) <= LAYER_TOLERANCE * scale, f"layer {i}"
    assert exact, "no detections: the comparison would prove nothing"
    assert [d[0] for d in fast] == [d[0] for d in exact]
    for e, f in zip(exact, fast):
        assert all(abs(a - b) <= 1.0 for a, b in zip(e[1:5], f[1:5])), (e, f)  # box edges, pixels
        assert abs(e[5] - f[5]) <= 1.0, (e, f)  # percentage points


@pytest.mark.slow
@pytest.mark.component
def test_component_fast_detect_equals_native_fast(component, workdir, capsys):
    """-fast in the component prints and draws what the native fast path does, byte for byte
    (so the native tests above speak for the component), and the same classes as exact."""
    if not WEIGHTS.exists():
        pytest.skip("model/yolov3-tiny.weights missing (make yolo_detection)")
    shutil.copy(WEIGHTS, workdir / "model" / "yolov3-tiny.weights")
    shutil.copy(debian_image("dog.jpg"), workdir / "data" / "dog.jpg")
    args = ["detect", "cfg/yolov3-tiny.cfg", "model/yolov3-tiny.weights", "data/dog.jpg"]
    fast = run_wasmtime(workdir, *args, "-fast", "-out", "fast")
    exact = run_wasmtime(workdir, *args, "-out", "exact")
    assert fast.returncode == 0 and exact.returncode == 0, fast.stderr + exact.stderr
    os.environ["DL_SERVER_CLOCK"] = "0"
    try:
        assert main(["dl-server", *args, "-out", "native", "-fast"]) == 0
    finally:
        del os.environ["DL_SERVER_CLOCK"]
    native = capsys.readouterr().out.splitlines()
    assert fast.stdout.splitlines()[1:] == native[1:]
    assert (workdir / "fast.jpg").read_bytes() == (workdir / "native.jpg").read_bytes()

    def classes(text: str) -> list[str]:
        return sorted(line.split(":")[0] for line in text.splitlines()[1:])

    assert classes(fast.stdout) == classes(exact.stdout)


# ---------------------------------------------------------------- MNIST


def top1(stdout: str) -> float:
    found = re.findall(r"top 1: ([0-9.]+)", stdout)
    assert found, stdout[-500:]
    return float(found[-1])


@pytest.fixture
def mnist_root():
    """The repository root with MNIST prepared, and the seed's LeNet under build/test-fast/."""
    if not (ROOT / "data" / "mnist" / "mnist.valid.list").exists():
        pytest.skip("MNIST not prepared (make mnist_training)")
    target = ROOT / "build" / "test-fast"
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(seed_file("model/mnist_lenet.weights"), target / "lenet.weights")
    return target


@pytest.mark.slow
@pytest.mark.component
def test_valid_10k_same_top1(component, mnist_root):
    args = [
        "classifier",
        "valid",
        "cfg/mnist.dataset",
        "cfg/mnist_lenet.cfg",
        "build/test-fast/lenet.weights",
    ]
    exact, fast = run_wasmtime(ROOT, *args), run_wasmtime(ROOT, *args, "-fast")
    assert exact.returncode == 0 and fast.returncode == 0, exact.stderr + fast.stderr
    assert abs(top1(exact.stdout) - top1(fast.stdout)) <= 0.0001


@pytest.mark.slow
@pytest.mark.component
def test_lenet_trained_2000_batches_in_fast_mode(component, mnist_root):
    """The seed's cfg (2000 batches of 100), -seed 1, -fast; then valid in fast mode: >= 0.95."""
    dataset = (
        (ROOT / "cfg" / "mnist.dataset").read_text().replace("backup = model", "backup = build/test-fast")
    )
    assert "build/test-fast" in dataset
    (mnist_root / "mnist.dataset").write_text(dataset)
    for stale in mnist_root.glob("mnist_lenet*.weights"):
        stale.unlink()
    train = run_wasmtime(
        ROOT,
        "classifier",
        "train",
        "build/test-fast/mnist.dataset",
        "cfg/mnist_lenet.cfg",
        "-seed",
        "1",
        "-fast",
        timeout=900,
    )
    assert train.returncode == 0, train.stderr[-2000:]
    valid = run_wasmtime(
        ROOT,
        "classifier",
        "valid",
        "cfg/mnist.dataset",
        "cfg/mnist_lenet.cfg",
        "build/test-fast/mnist_lenet.weights",
        "-fast",
    )
    assert valid.returncode == 0, valid.stderr[-2000:]
    assert top1(valid.stdout) >= 0.95
