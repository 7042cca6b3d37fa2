"""dlserver_tools.federated (dl-server-federated, make federated): FedAvg rounds, each step
a sandboxed dl-server run.

The slow tests run tiny federations (2-4 clients, a few batches, fake MNIST of a few
dozen images prepared by dlserver_tools.mnist in a temporary root) through the real
component; the others check the aggregation tree and the set-up checks without it.
"""

import importlib.util
import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dlserver_host.darknet_output import onnx_value_line
from dlserver_tools import federated as fed

REPO = Path(__file__).resolve().parent.parent
WASM = REPO / "dl-server.wasm"
HEADER = 20  # major, minor, revision, 8-byte seen


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None  # a .py file
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def fake_idx(d: Path, n_train: int, n_test: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = np.arange(n, dtype=np.uint8) % 10
        (d / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x803, n, 28, 28) + x.tobytes())
        (d / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, n) + y.tobytes())


def prepared_root(tmp_path: Path, clients: int, *dist: str, n_train=40, n_test=20) -> Path:
    fake_idx(tmp_path / "idx", n_train, n_test)
    root = tmp_path / "root"
    (root / "data" / "mnist").mkdir(parents=True)
    shutil.copy(REPO / "data" / "mnist" / "mnist.labels.list", root / "data" / "mnist")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "dlserver_tools.mnist",
            "--root",
            str(root),
            "--num-clients",
            str(clients),
            "--mnist-dir",
            str(tmp_path / "idx"),
            *dist,
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    return root


def run_federated(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dlserver_tools.federated", "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )


def params(path: Path) -> np.ndarray:
    return np.frombuffer(path.read_bytes()[HEADER:], dtype="<f4")


# --------------------------------------------------------------------------
# set-up checks (no component)
# --------------------------------------------------------------------------


def test_refuses_data_prepared_for_another_split(tmp_path):
    root = prepared_root(tmp_path, 2)
    r = run_federated(root, "--num-clients", "3", "--program", fed.__file__)
    assert r.returncode == 1 and "not prepared for 3 clients" in r.stderr
    r = run_federated(root, "--num-clients", "2", "--data-dist", "non-iid", "--program", fed.__file__)
    assert r.returncode == 1 and "split iid, not non-iid" in r.stderr


def test_make_federated_prepares_the_data_first():
    r = subprocess.run(
        [
            "make",
            "-n",
            "-C",
            str(REPO),
            "federated-local",
            "num-clients=3",
            "rounds=2",
            "data-dist=non-iid",
            "batches=5",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    prep = r.stdout.index("mnist_training num-clients=3 data-dist=non-iid")
    run = r.stdout.index("dl-server-federated --num-clients 3 --rounds 2 --data-dist non-iid --batches 5")
    assert prep < run
    r = subprocess.run(["make", "-n", "-C", str(REPO), "federated-local"], capture_output=True, text=True)
    assert "dl-server-federated --num-clients 4 --rounds 3 --data-dist iid" in r.stdout


# --------------------------------------------------------------------------
# tiny federations through the component
# --------------------------------------------------------------------------

needs_component = pytest.mark.skipif(not WASM.is_file(), reason="dl-server.wasm not built (run make)")


@pytest.mark.slow
@pytest.mark.component
@needs_component
def test_two_clients_two_rounds(tmp_path):
    root = prepared_root(tmp_path, 2)
    (root / "args.cfg").write_text("the user's args.cfg\n")
    r = run_federated(root, "--num-clients", "2", "--rounds", "2", "--batches", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert (root / "args.cfg").read_text() == "the user's args.cfg\n"
    work = root / "federated"
    result = json.loads((work / "results.json").read_text())
    assert [row["round"] for row in result["table"]] == [0, 1, 2]
    assert all(0 <= row["top1"] <= row["top5"] <= 1 for row in result["table"])
    assert "round  " in r.stdout and r.stdout.count("valid on 20 test images") == 3
    assert result["settings"]["weighted"] is False and result["settings"]["examples"] == [20, 20]

    # the server's average is the original's byte-exact mean: f32 sum in file order, times f32(1/2)
    for rnd in (1, 2):
        a, b = (params(work / f"client{k}" / f"round{rnd}.weights") for k in (1, 2))
        mean = (a + b) * np.float32(1 / 2)
        glob = (work / "global" / f"round{rnd}.weights").read_bytes()
        assert glob[:HEADER] == (work / "client1" / f"round{rnd}.weights").read_bytes()[:HEADER]
        assert np.array_equal(params(work / "global" / f"round{rnd}.weights"), mean)
        assert not np.array_equal(a, b)  # the clients did train on different data
    # round 1 started from the initial model, round 2 from the round-1 average
    assert len((work / "global" / "round0.weights").read_bytes()) == 191124

    # each client's run saw only its shard, its files and the global model
    m = json.loads((work / "provenance" / "round2-client1.json").read_text())
    allowed = (
        "data/mnist/images_client1/",
        "data/mnist/mnist.train.client1.list",
        "data/mnist/mnist.labels.list",
        "federated/client1/mnist.dataset",
        "federated/client1/mnist_lenet.cfg",
        "federated/global/round1.weights",
    )
    assert all(path.startswith(allowed) for path in m["inputs"]["files"]), list(m["inputs"]["files"])
    assert any(path.startswith("data/mnist/images_client1/t_") for path in m["inputs"]["files"])
    assert m["outputs"]["sources"] == ["federated/client1/out"]
    assert m["guest_argv"][1:] == [
        "classifier",
        "train",
        "federated/client1/mnist.dataset",
        "federated/client1/mnist_lenet.cfg",
        "federated/global/round1.weights",
        "-clear",
        "-seed",
        "2002",
    ]
    assert m["exit_status"] == 0
    cfg = (work / "client1" / "mnist_lenet.cfg").read_text()
    assert "max_batches=2\n" in cfg and "policy=constant\n" in cfg
    assert sorted(p.name for p in (work / "provenance").iterdir()) == sorted(
        [f"round0-{s}.json" for s in ("init", "valid")]
        + [f"round{r}-{s}.json" for r in (1, 2) for s in ("client1", "client2", "aggregate", "valid")]
    )


@pytest.mark.slow
@pytest.mark.component
@needs_component
def test_non_iid_four_clients_weighted_in_one_run(tmp_path):
    root = prepared_root(tmp_path, 4, "--data-dist", "non-iid", n_train=80, n_test=40)
    r = run_federated(
        root,
        "--num-clients",
        "4",
        "--rounds",
        "1",
        "--batches",
        "1",
        "--data-dist",
        "non-iid",
        "--no-manifests",
    )
    assert r.returncode == 0, r.stdout + r.stderr
    work = root / "federated"
    result = json.loads((work / "results.json").read_text())
    counts = result["settings"]["examples"]
    assert result["settings"]["weighted"] is True and len(set(counts)) > 1 and sum(counts) == 80
    assert "  server: weighted average of 4 models" in r.stdout
    assert not (work / "provenance").exists() or not any((work / "provenance").iterdir())
    clients = [params(work / f"client{k}" / "round1.weights").astype(np.float64) for k in range(1, 5)]
    expected = sum(n * w for n, w in zip(counts, clients)) / sum(counts)
    np.testing.assert_allclose(params(work / "global" / "round1.weights"), expected, atol=1e-6)


# --------------------------------------------------------------------------
# ONNX clients: model/mnist_pytorch.py (the seed README's "Client 2")
# --------------------------------------------------------------------------


def png_list(tmp_path: Path, n: int) -> Path:
    from PIL import Image

    rng = np.random.default_rng(3)
    (tmp_path / "png").mkdir()
    lines = []
    for i in range(n):
        path = tmp_path / "png" / f"t_{i:05d}_c{i % 10}.png"
        Image.fromarray(rng.integers(0, 256, size=(28, 28), dtype=np.uint8), "L").save(path)
        lines.append(str(path))
    (tmp_path / "train.list").write_text("".join(line + "\n" for line in lines))
    return tmp_path / "train.list"


@pytest.mark.slow
def test_two_pytorch_clients_average_to_the_numpy_mean(tmp_path, monkeypatch, capsys):
    pytest.importorskip("torch")
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper
    from onnx.reference import ReferenceEvaluator

    client = _load("mnist_pytorch", REPO / "model" / "mnist_pytorch.py")
    listing = png_list(tmp_path, 30)
    for seed in (1, 2):
        assert (
            client.main(
                [
                    "--batches",
                    "3",
                    "--batch-size",
                    "8",
                    "--seed",
                    str(seed),
                    "--train-list",
                    str(listing),
                    "--valid-list",
                    str(listing),
                    "--output",
                    str(tmp_path / f"c{seed}.onnx"),
                    "--input-pb",
                    str(tmp_path / "input.pb"),
                ]
            )
            == 0
        )
    assert "test accuracy" in capsys.readouterr().out
    models = [onnx.load(str(tmp_path / f"c{seed}.onnx")) for seed in (1, 2)]
    for m in models:
        onnx.checker.check_model(m)
    tensors = [{t.name: numpy_helper.to_array(t) for t in m.graph.initializer} for m in models]
    assert list(tensors[0]) == list(tensors[1]) and len(tensors[0]) == 8
    assert all(t.HasField("raw_data") for t in models[0].graph.initializer)
    assert not np.array_equal(tensors[0]["fc2.weight"], tensors[1]["fc2.weight"])  # different seeds

    from dlserver.main import main

    monkeypatch.chdir(tmp_path)
    assert main(["dl-server", "aggregation", "onnx", "avg.onnx", "c1.onnx", "c2.onnx"]) == 0
    assert "save aggregation model to 'avg.onnx' done!" in capsys.readouterr().out
    averaged = onnx.load(str(tmp_path / "avg.onnx"))
    onnx.checker.check_model(averaged)
    got = {t.name: numpy_helper.to_array(t) for t in averaged.graph.initializer}
    for name, a in tensors[0].items():
        b = tensors[1][name]
        assert got[name].dtype == np.float32
        assert np.array_equal(got[name], (a + b) / np.float32(2)), name  # float32: f32(f32(a + b) / 2)

    # the averaged model runs: the guest's interpreter agrees with ONNX's reference one
    x = numpy_helper.to_array(onnx.load_tensor(str(tmp_path / "input.pb")))
    expected = ReferenceEvaluator(averaged).run(None, {"input": x})[0][0]
    assert main(["dl-server", "aggregation", "onnx_predict", "avg.onnx", "input.pb"]) == 0
    values = [v.value for line in capsys.readouterr().out.splitlines() if (v := onnx_value_line(line))]
    np.testing.assert_allclose(values, expected, atol=1e-4)

    # and the component gives the same bytes as the native run
    if WASM.is_file():
        from conftest import run_wasmtime

        result = run_wasmtime(tmp_path, "aggregation", "onnx", "avg_wasm.onnx", "c1.onnx", "c2.onnx")
        assert result.returncode == 0, result.stderr
        assert (tmp_path / "avg_wasm.onnx").read_bytes() == (tmp_path / "avg.onnx").read_bytes()
