"""aggregation darknet (docs/darknet-contract.md §8.1): the original's arithmetic byte for byte,
plus weighted, median and trimmed means."""

import shutil

import numpy as np
import pytest

from conftest import seed_file
from dlserver.main import main

SEEDS = ["mnist_lenet_1.weights", "mnist_lenet_2.weights", "mnist_lenet.weights"]


@pytest.fixture
def models(workdir):
    for name in SEEDS + ["mnist_lenet_3.weights"]:
        shutil.copy(seed_file(f"model/{name}"), workdir / "model" / name)
    return workdir / "model"


def floats(path):
    data = path.read_bytes()
    return data[:20], np.frombuffer(data[20:], np.float32)


def run(capsys, *argv):
    status = main(["dl-server", "aggregation", "darknet", "cfg/mnist_lenet.cfg", *argv])
    return status, capsys.readouterr()


def test_seed_args_file_gives_the_originals_bytes(models, workdir, capsys):
    shutil.copy(workdir / "args_files" / "aggregation_darknet.cfg", workdir / "args.cfg")
    assert main(["dl-server"]) == 0
    err = capsys.readouterr().err
    assert err.count("layer     filters") == 2
    assert err.endswith("Saving weights to model/mnist_lenet_sum.weights\n")
    header, _ = floats(models / SEEDS[0])
    arrays = [floats(models / n)[1] for n in SEEDS]
    expected = ((arrays[0] + arrays[1]) + arrays[2]) * np.float32(1.0 / 3)
    assert expected.dtype == np.float32
    assert (models / "mnist_lenet_sum.weights").read_bytes() == header + expected.tobytes()


def test_weighted_mean(models, capsys):
    status, _ = run(capsys, "model/out.weights", "-weights", "1,3", *[f"model/{n}" for n in SEEDS[:2]])
    assert status == 0
    a, b = (floats(models / n)[1] for n in SEEDS[:2])
    expected = np.float32(0.25) * a + np.float32(0.75) * b
    np.testing.assert_array_equal(floats(models / "out.weights")[1], expected)


def test_median_resists_a_poisoned_client(models, capsys):
    poisoned = models / "poison.weights"
    header, good = floats(models / SEEDS[0])
    poisoned.write_bytes(header + (good * np.float32(1000)).tobytes())
    status, _ = run(
        capsys,
        "model/out.weights",
        "-method",
        "median",
        *[f"model/{n}" for n in SEEDS],
        "model/poison.weights",
    )
    assert status == 0
    stack = np.stack([floats(models / n)[1] for n in SEEDS] + [good * np.float32(1000)])
    s = np.sort(stack, axis=0)
    expected = ((s[1].astype(np.float64) + s[2]) / 2).astype(np.float32)
    np.testing.assert_array_equal(floats(models / "out.weights")[1], expected)


def test_trimmed_mean(models, capsys):
    names = SEEDS + ["mnist_lenet_3.weights"]
    status, _ = run(capsys, "model/out.weights", "-method", "trimmed:0.25", *[f"model/{n}" for n in names])
    assert status == 0
    s = np.sort(np.stack([floats(models / n)[1] for n in names]), axis=0)
    expected = ((s[1] + s[2]) / np.float32(2)).astype(np.float32)
    np.testing.assert_array_equal(floats(models / "out.weights")[1], expected)


def test_single_model_is_its_copy(models, capsys):
    status, _ = run(capsys, "model/out.weights", f"model/{SEEDS[0]}")
    assert status == 0
    assert (models / "out.weights").read_bytes() == (models / SEEDS[0]).read_bytes()


@pytest.mark.parametrize(
    "argv, problem",
    [
        (["model/out.weights", "model/mnist_lenet_1.weights", "model/short.weights"], "truncated"),
        (["model/out.weights", "model/mnist_lenet_1.weights", "model/none.weights"], "no such file"),
        (["model/out.weights", "-weights", "1,2,3", "model/mnist_lenet_1.weights"], "3 weights for 1 models"),
        (["model/out.weights", "-method", "mode", "model/mnist_lenet_1.weights"], "unknown"),
        (["model/out.weights", "-method", "trimmed:0.7", "model/mnist_lenet_1.weights"], "[0, 0.5)"),
        (["model/out.weights"], "no weights files"),
        (["model/mnist_lenet_1.weights", "model/mnist_lenet_1.weights"], "would overwrite"),
    ],
)
def test_bad_aggregations_write_nothing(models, capsys, argv, problem):
    (models / "short.weights").write_bytes((models / SEEDS[0]).read_bytes()[:-8])
    status, captured = run(capsys, *argv)
    assert status == 1
    assert problem in captured.err.strip().splitlines()[-1]
    assert not (models / "out.weights").exists()
