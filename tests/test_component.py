"""dl-server.wasm under the plain wasmtime CLI, as the README runs it."""

import pytest

from conftest import EXPECTED, MNIST_IMAGE, PREDICT_ARGS, mnist_images, run_wasmtime
from dlserver.main import main

pytestmark = pytest.mark.component


def test_predict_from_args_cfg_prints_the_originals_output(component, prediction_one, workdir):
    result = run_wasmtime(workdir)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines(keepends=True)
    assert lines[:6] == [f"argv[{i}] = '{a}'\n" for i, a in enumerate(PREDICT_ARGS, 1)]
    assert "".join(lines[6:]) == (EXPECTED / "predict_t_00000_c5.stdout").read_text()
    assert result.stderr.endswith("data/mnist/images_client1/t_00000_c5.png: Predicted.\n")


def test_valid_in_component_equals_native(component, lenet_weights, workdir, capsys):
    names = sorted(p.name for p in MNIST_IMAGE.parent.glob("v_*.png"))[:150] if MNIST_IMAGE.exists() else []
    paths = mnist_images(workdir, names)
    (workdir / "data" / "mnist" / "mnist.valid.list").write_text("\n".join(paths) + "\n")
    args = ["classifier", "valid", "cfg/mnist.dataset", "cfg/mnist_lenet.cfg", "model/mnist_lenet.weights"]
    result = run_wasmtime(workdir, *args)
    assert result.returncode == 0, result.stderr
    assert main(["dl-server", *args]) == 0
    native = capsys.readouterr().out
    assert result.stdout == native
    assert result.stdout.count("top 1:") == 150


def test_errors_exit_nonzero_with_one_line(component, workdir):
    result = run_wasmtime(workdir, *PREDICT_ARGS)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "dl-server: error: model/mnist_lenet.weights: cannot open weights file: no such file"
    )
    assert "panic" not in result.stderr


def test_detect_without_weights_fails(component, workdir):
    result = run_wasmtime(
        workdir, "detect", "cfg/yolov3-tiny.cfg", "model/yolov3-tiny.weights", "data/dog.jpg"
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "dl-server: error: model/yolov3-tiny.weights: cannot open weights file: no such file"
    )


def test_predict_through_the_host_with_the_seeds_fee_flags(component, prediction_one, workdir):
    """The seed README's FEE command, with dl-server in place of the engine."""
    import subprocess
    import sys
    from pathlib import Path

    host = Path(sys.executable).parent / "dl-server"
    result = subprocess.run(
        [
            str(host),
            "--program",
            str(component),
            "--input-source",
            "args.cfg",
            "cfg",
            "model",
            "data/mnist/mnist.names.list",
            "data/mnist/images_client1/t_00000_c5.png",
            "-d",
            "-e",
        ],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    echo = "".join(f"argv[{i}] = '{a}'\n" for i, a in enumerate(PREDICT_ARGS, 1))
    expected = (EXPECTED / "predict_t_00000_c5.stdout").read_text()
    assert result.stdout == f"---- stdout dump ----\n{echo}{expected}---- stdout dump end ----\n"
    assert result.stderr.startswith("---- stderr dump ----\nlayer     filters")
    assert result.stderr.endswith("t_00000_c5.png: Predicted.\n---- stderr dump end ----\n")
