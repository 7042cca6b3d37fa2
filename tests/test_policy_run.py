"""The README's use cases under a policy made by `dl-server policy init`, with the real dl-server.wasm.

Oracle: the same run without a policy (the `-i`/`-o` command of the README).  Each use case
runs twice in identical workspaces: once with the README's sources, once with `--policy`
alone (its read and write rights become the sources), signed; the guest's stdout and every
file of the workspace must be the same, and `verify` must pass on the signed record.
"""

import json
import shutil
from pathlib import Path

import pytest

from conftest import (
    HOST_WASM,
    MNIST_IMAGE,
    NEEDS_HOST_WASM,
    ROOT,
    flat_lenet_weights,
    lenet_aggregation,
    seed_file,
)
from dlserver_host import cli

pytestmark = NEEDS_HOST_WASM

IMAGES = ["t_00000_c5.png", "t_00001_c0.png", "t_00002_c4.png", "t_00003_c1.png"]
NOT_COMPARED = {"policy.json", "run.json", "op.key", "op.pub", "op.crt"}


def lenet_workspace(ws: Path) -> None:
    """cfg with a 2-batch LeNet, model weights, four MNIST images with train/valid lists."""
    (ws / "cfg").mkdir()
    cfg = (ROOT / "cfg" / "mnist_lenet.cfg").read_text()
    cfg = cfg.replace("batch=100", "batch=4").replace("max_batches=2000", "max_batches=2")
    (ws / "cfg" / "t_lenet.cfg").write_text(cfg)
    shutil.copy(ROOT / "cfg" / "mnist_lenet.cfg", ws / "cfg" / "mnist_lenet.cfg")
    images = ws / "data" / "mnist" / "images_client1"
    images.mkdir(parents=True)
    for name in IMAGES:
        shutil.copy(MNIST_IMAGE.parent / name, images / name)
    for name in ("mnist.labels.list", "mnist.names.list"):
        shutil.copy(ROOT / "data" / "mnist" / name, ws / "data" / "mnist" / name)
    listing = "".join(f"data/mnist/images_client1/{name}\n" for name in IMAGES)
    (ws / "data" / "mnist" / "t.list").write_text(listing)
    (ws / "cfg" / "t.dataset").write_text(
        "classes=10\ntrain=data/mnist/t.list\nvalid=data/mnist/t.list\nbackup=model\n"
        "labels=data/mnist/mnist.labels.list\nnames=data/mnist/mnist.names.list\ntop=2\n"
    )
    (ws / "model").mkdir()
    (ws / "model" / "mnist_lenet.weights").write_bytes(flat_lenet_weights(0.01))
    (ws / "model" / "a.weights").write_bytes(flat_lenet_weights(1.0))
    (ws / "model" / "b.weights").write_bytes(flat_lenet_weights(3.0))


def detect_workspace(ws: Path) -> None:
    weights, dog = ROOT / "model" / "yolov3-tiny.weights", ROOT / "data" / "dog.jpg"
    if not (weights.exists() and dog.exists()):
        pytest.skip("make yolo_detection not run (yolov3-tiny.weights, dog.jpg)")
    for sub in ("cfg", "model", "data"):
        (ws / sub).mkdir()
    for name in ("yolov3-tiny.cfg", "coco.data"):
        shutil.copy(ROOT / "cfg" / name, ws / "cfg")
    (ws / "model" / "yolov3-tiny.weights").hardlink_to(weights)
    shutil.copy(dog, ws / "data")
    shutil.copy(ROOT / "data" / "coco.names", ws / "data")


def onnx_workspace(ws: Path) -> None:
    (ws / "model").mkdir()
    for i in (1, 2, 3):
        shutil.copy(seed_file(f"model/mnist_model_c{i}.onnx"), ws / "model")


PREDICT = ["classifier", "predict", "cfg/t.dataset", "cfg/mnist_lenet.cfg", "model/mnist_lenet.weights"]
USE_CASES = {
    "train": (
        lenet_workspace,
        ["classifier", "train", "cfg/t.dataset", "cfg/t_lenet.cfg"],
        ["-i", "args.cfg", "cfg", "data", "-o", "model"],
    ),
    "predict": (
        lenet_workspace,
        [*PREDICT, "data/mnist/images_client1/t_00000_c5.png"],
        [
            "-i",
            "args.cfg",
            "cfg",
            "model",
            "data/mnist/mnist.names.list",
            "data/mnist/images_client1/t_00000_c5.png",
        ],
    ),
    "valid": (
        lenet_workspace,
        ["classifier", "valid", "cfg/t.dataset", "cfg/mnist_lenet.cfg", "model/mnist_lenet.weights"],
        ["-i", "args.cfg", "cfg", "model", "data"],
    ),
    "detect": (
        detect_workspace,
        ["detect", "cfg/yolov3-tiny.cfg", "model/yolov3-tiny.weights", "data/dog.jpg"],
        ["-i", "args.cfg", "cfg", "model", "data/coco.names", "data/dog.jpg", "-o", "./"],
    ),
    "aggregation darknet": (
        lenet_workspace,
        lenet_aggregation("model/sum.weights", "model/a.weights", "model/b.weights"),
        ["-i", "args.cfg", "cfg", "model", "-o", "model"],
    ),
    "aggregation onnx": (
        onnx_workspace,
        [
            "aggregation",
            "onnx",
            "model/mnist_model_sum.onnx",
            *(f"model/mnist_model_c{i}.onnx" for i in (1, 2, 3)),
        ],
        ["-i", "args.cfg", "model", "-o", "model"],
    ),
}


def tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in NOT_COMPARED
    }


def run_in(ws: Path, monkeypatch, capfd, *flags: str) -> str:
    monkeypatch.chdir(ws)
    capfd.readouterr()
    assert cli.main(["--program", str(HOST_WASM), *flags, "-d"]) == 0, capfd.readouterr().err
    return capfd.readouterr().out


@pytest.mark.parametrize("case", list(USE_CASES))
def test_use_case_under_a_policy_runs_unchanged(program, tmp_path, monkeypatch, capfd, case):
    build, guest_args, sources = USE_CASES[case]
    if build is not detect_workspace and not MNIST_IMAGE.exists():
        pytest.skip("MNIST not prepared (make mnist_training)")
    plain, guarded = tmp_path / "plain", tmp_path / "guarded"
    for ws in (plain, guarded):
        ws.mkdir()
        build(ws)
        (ws / "args.cfg").write_text("".join(a + "\n" for a in guest_args))
    expected = run_in(plain, monkeypatch, capfd, *sources)

    monkeypatch.chdir(guarded)
    assert cli.main(["keygen", "op"]) == 0
    assert cli.main(["policy", "init", "-r", program, *sources, "--certificate", "op.crt"]) == 0
    flags = ["--policy", "policy.json", "--manifest", "run.json", "--sign-key", "op.key"]
    assert run_in(guarded, monkeypatch, capfd, *flags) == expected
    assert tree(guarded) == tree(plain)
    written = json.loads((guarded / "run.json").read_text())["outputs"]["files"]
    assert bool(written) == ("-o" in sources), written  # train, detect, aggregations write back

    assert cli.main(["verify", "run.json", "--policy", "policy.json", "--files", "."]) == 0
    lines = capfd.readouterr().out.splitlines()
    checks = [line[6:].split(":")[0] for line in lines]
    assert all(line.startswith("ok ") for line in lines), lines
    assert checks == [
        *("signature", "signer", "policy", "program", "expiry", "sources", "limits"),
        *("program file", "input files", "output files"),
    ]


def test_a_stream_the_policy_does_not_grant_is_dropped(program, tmp_path, monkeypatch, capfd):
    if not MNIST_IMAGE.exists():
        pytest.skip("MNIST not prepared (make mnist_training)")
    build, guest_args, sources = USE_CASES["predict"]
    build(tmp_path)
    (tmp_path / "args.cfg").write_text("".join(a + "\n" for a in guest_args))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["policy", "init", "-r", program, *sources]) == 0
    doc = json.loads(Path("policy.json").read_text())
    rights = doc["programs"][0]["file_rights"]
    doc["programs"][0]["file_rights"] = [r for r in rights if r["file_name"] != "stdout"]
    doc["std_streams_table"] = [s for s in doc["std_streams_table"] if "Stdout" not in s]
    Path("policy.json").write_text(json.dumps(doc))
    capfd.readouterr()
    assert cli.main(["--program", program, "--policy", "policy.json", "--manifest", "run.json"]) == 0
    out, err = capfd.readouterr()
    assert out == "" and "Predicted" in err  # stderr is still granted
    record = json.loads(Path("run.json").read_text())
    assert (record["policy"]["stdout"], record["policy"]["stderr"]) == (False, True)
