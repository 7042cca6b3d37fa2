"""Bad input of every kind: one clear error line naming the file, exit status 1, no output file."""

import shutil
import struct
import zlib

import pytest

from conftest import seed_file
from dlserver.main import main

PREDICT = [
    "classifier",
    "predict",
    "cfg/mnist.dataset",
    "cfg/mnist_lenet.cfg",
    "model/mnist_lenet.weights",
    "img.png",
]


def png_bytes(width=28, height=28, gray=128, raw=None, ihdr=None, crc_ok=True):
    def chunk(kind, data, ok=True):
        crc = zlib.crc32(kind + data) ^ (0 if ok else 1)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = ihdr or struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    if raw is None:
        raw = b"".join(b"\0" + bytes([gray]) * width for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header, crc_ok)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def run(argv, capsys):
    status = main(["dl-server", *argv])
    out, err = capsys.readouterr()
    return status, out, err


def error_line(err):
    last = err.rstrip("\n").split("\n")[-1]
    assert last.startswith("dl-server: error: "), err
    return last


@pytest.fixture
def predict_dir(workdir):
    shutil.copy(seed_file("model/mnist_lenet.weights"), workdir / "model" / "mnist_lenet.weights")
    (workdir / "img.png").write_bytes(png_bytes())
    return workdir


def test_good_predict_setup_works(predict_dir, capsys):
    status, out, _ = run(PREDICT, capsys)
    assert status == 0 and out.count("%:") == 5


CFG_CASES = [
    ("", "has no sections"),
    ("[net]\nbatch=1\nheight=28\nwidth=28\nchannels=3\n", "network has no layers"),
    ("[conv]\nfilters=3\n", "first section must be [net]"),
    ("[net]\nheight=28\nwidth=28\nchannels=3\n[convolutional]\nfilters=x\n", "filters=x: not an integer"),
    ("[net]\nheight=28\nwidth=28\nchannels=3\n[bogus]\n", "unknown section [bogus]"),
    ("[net]\nheight=28\nwidth=28\nchannels=3\n[iseg]\n", "layer [iseg] is not supported"),
    ("[net]\nheight=28\nwidth=28\nchannels=3\n[net]\n", "[net] may only be the first section"),
    ("[net]\nbatch=1\n[connected]\noutput=10\n", "no input size"),
    ("[net]\nheight=28\nwidth=28\nchannels=3\n[convolutional]\nsize=40\nactivation=relu\n", "does not fit"),
    (
        "[net]\nheight=28\nwidth=28\nchannels=3\n[convolutional]\nactivation=swish\n",
        "activation 'swish' is unknown",
    ),
    ("[net]\nheight=28\nwidth=28\nchannels=3\npolicy=cosine\n[softmax]\n", "unknown learning-rate policy"),
    ("[net]\nheight=28\nwidth=28\nchannels=3\npolicy=steps\n[softmax]\n", "policy=steps needs"),
    ("[net]\nheight=28\nwidth=28\nchannels=3\n[dropout]\nprobability=1.5\n", "must be in [0, 1)"),
    ("[net]\nheight=28\nwidth=28\nchannels=3\n[cost]\ntype=hinge\n", "cost type 'hinge' is unknown"),
    (
        "[net]\nheight=28\nwidth=28\nchannels=3\nbatch=2\nsubdivisions=4\n[softmax]\n",
        "smaller than subdivisions",
    ),
    ("batch=1\n", "comes before any [section]"),
]


@pytest.mark.parametrize("text, problem", CFG_CASES)
def test_malformed_network_cfg(predict_dir, capsys, text, problem):
    (predict_dir / "cfg" / "bad.cfg").write_text(text)
    status, _, err = run(
        ["classifier", "predict", "cfg/mnist.dataset", "cfg/bad.cfg", "model/mnist_lenet.weights", "img.png"],
        capsys,
    )
    assert status == 1
    line = error_line(err)
    assert "cfg/bad.cfg" in line and problem in line


WEIGHT_CASES = [
    (lambda d: d[:-1], "truncated"),
    (lambda d: d[:100], "truncated"),
    (lambda d: d + b"x" * 8, "too long"),
    (lambda d: d[:7], "shorter than the 16-byte header"),
    (lambda d: b"", "shorter than the 16-byte header"),
    (lambda d: struct.pack("<iii", -1, 0, 0) + d[12:], "bad version"),
]


@pytest.mark.parametrize("mangle, problem", WEIGHT_CASES)
def test_malformed_weights(predict_dir, capsys, mangle, problem):
    path = predict_dir / "model" / "mnist_lenet.weights"
    path.write_bytes(mangle(path.read_bytes()))
    status, out, err = run(PREDICT, capsys)
    assert status == 1 and "%:" not in out
    line = error_line(err)
    assert "model/mnist_lenet.weights" in line and problem in line


IMAGE_CASES = [
    (b"", "empty file"),
    (b"GIF89a....", "not a PNG file"),
    (png_bytes()[:40], "bad PNG"),
    (png_bytes(crc_ok=False), "CRC"),
    (png_bytes(raw=b"\x07" * (29 * 28)), "filter"),
    (png_bytes(raw=b"\0" * 10), "bad PNG"),
    (png_bytes(ihdr=struct.pack(">IIBBBBB", 0, 28, 8, 0, 0, 0, 0)), "bad PNG"),
    (png_bytes(ihdr=struct.pack(">IIBBBBB", 28, 28, 3, 2, 0, 0, 0)), "bad PNG"),
    (b"\xff\xd8\xff\xe0JFIF", "JPEG"),
]


@pytest.mark.parametrize("content, problem", IMAGE_CASES)
def test_malformed_images(predict_dir, capsys, content, problem):
    (predict_dir / "img.png").write_bytes(content)
    status, out, err = run(PREDICT, capsys)
    assert status == 1 and "%:" not in out
    line = error_line(err)
    assert "img.png" in line and problem in line


def test_missing_files_name_themselves(predict_dir, capsys):
    for i, missing in (
        (2, "cfg/none.dataset"),
        (3, "cfg/none.cfg"),
        (4, "model/none.weights"),
        (5, "none.png"),
    ):
        argv = list(PREDICT)
        argv[i] = missing
        status, _, err = run(argv, capsys)
        assert status == 1 and missing in error_line(err) and "no such file" in error_line(err)


ARGS_CASES = [
    (b"", "the argument file is empty"),
    (b"\n".join([b"classifier"] * 1025), "at most 1024 are allowed"),
    (b"\xff\xfe\n", "not a text file"),
    (b"frobnicate\n", "Not an option: frobnicate"),
    (b"classifier\nteach\ncfg/mnist.dataset\ncfg/mnist_lenet.cfg\n", "Not an option under classifier: teach"),
    (b"classifier\npredict\n", "usage:"),
    (
        b"classifier\npredict\ncfg/mnist.dataset\ncfg/mnist_lenet.cfg\nmodel/mnist_lenet.weights\n-t\n",
        "needs a value",
    ),
    (
        b"classifier\npredict\ncfg/mnist.dataset\ncfg/mnist_lenet.cfg\nmodel/mnist_lenet.weights\n",
        "no image file",
    ),
]


@pytest.mark.parametrize("content, problem", ARGS_CASES)
def test_malformed_args_file(predict_dir, capsys, content, problem):
    (predict_dir / "args.cfg").write_bytes(content)
    status, _, err = run([], capsys)
    assert status == 1
    assert problem in error_line(err)


def test_no_args_file(predict_dir, capsys):
    status, _, err = run([], capsys)
    assert status == 1 and "Argument file not found" in error_line(err)


def test_detect_without_weights_exits_1(predict_dir, capsys):
    status, _, err = run(
        ["detect", "cfg/yolov3-tiny.cfg", "model/yolov3-tiny.weights", "data/dog.jpg"], capsys
    )
    assert status == 1
    assert (
        error_line(err)
        == "dl-server: error: model/yolov3-tiny.weights: cannot open weights file: no such file"
    )
