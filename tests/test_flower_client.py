"""The ClientApp's train and evaluate called directly (no Ray, no SuperLink) on a fake MNIST
root: the reply carries what the sandboxed run wrote, byte for byte as its manifest says, and
the strategy accepts it."""

import hashlib
import json
import shutil
import struct
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

from dlserver_tools import darknet_arrays as da
from dlserver_tools.flower import client_app, steps
from dlserver_tools.flower.strategy import SandboxedFedAvg, from_record, read_weights, to_record
from test_federated import prepared_root
from test_flower_strategy import task_identity  # noqa: F401  (autouse: messages need a run)

REPO = Path(__file__).resolve().parent.parent
WASM = REPO / "dl-server.wasm"

pytestmark = [
    pytest.mark.component,
    pytest.mark.skipif(not WASM.is_file(), reason="dl-server.wasm not built (run make)"),
]


def run_config(root: Path) -> dict:
    return {
        "root": str(root), "program": str(WASM), "work": "fed", "batches": 3, "policy": "constant",
        "learning-rate": 0.01, "seed": 1, "valid-list": "data/mnist/mnist.valid.list",
        "base-cfg": "cfg/mnist_lenet.cfg", "timeout": 0.0,
    }  # fmt: skip


def context(root: Path, partition: int) -> Context:
    node: dict[str, bool | float | int | str] = {"partition-id": partition, "num-partitions": 2}
    return Context(
        run_id=1, node_id=10 + partition, node_config=node, state=RecordDict(), run_config=run_config(root)
    )


def test_train_and_evaluate_in_the_sandbox(tmp_path):
    root = prepared_root(tmp_path, 2, n_train=60, n_test=20)
    shutil.copytree(REPO / "cfg", root / "cfg")
    s = steps.Settings.from_config(run_config(root))
    init, _ = steps.initialise(s)
    cfg = da.read_cfg(root / "cfg" / "mnist_lenet.cfg")
    header, arrays = read_weights(cfg, init)
    replies = []
    for partition in (1, 0):
        config = ConfigRecord({"server-round": 1, "header": header})
        msg = Message(
            RecordDict({"arrays": arrays, "config": config}), dst_node_id=10 + partition, message_type="train"
        )
        replies.append(client_app.train(msg, context(root, partition), run_config(root)))
    for k, rep in zip((2, 1), replies):
        kept = root / "fed" / f"client{k}" / "round1.weights"
        meta = rep.content["meta"]
        assert meta["client"] == k
        manifest = json.loads(meta["manifest"])
        digest = manifest["outputs"]["files"][f"fed/client{k}/out/mnist_lenet.weights"]
        assert digest == hashlib.sha256(kept.read_bytes()).hexdigest()
        assert (
            manifest["inputs"]["files"][f"fed/client{k}/global0.weights"]
            == hashlib.sha256(init.read_bytes()).hexdigest()
        )
        assert da.encode(cfg, bytes(meta["header"]), from_record(rep.content["arrays"])) == kept.read_bytes()
        assert rep.content["metrics"]["num-examples"] == 30
        assert meta["batches"] == 3
    strategy = SandboxedFedAvg(s, num_clients=2, min_clients=2, weighting="auto", method="mean")
    strategy.set_global(init)
    global_arrays, metrics = strategy.aggregate_train(1, replies)
    assert global_arrays is not None and metrics is not None and metrics["clients"] == 2

    config = ConfigRecord({"server-round": 1, "header": strategy.header})
    msg = Message(
        RecordDict({"arrays": global_arrays, "config": config}), dst_node_id=10, message_type="evaluate"
    )
    result = client_app.evaluate(msg, context(root, 0), run_config(root))
    metrics = result.content["metrics"]
    n_test = len((root / "data" / "mnist" / "mnist.valid.client1.list").read_text().splitlines())
    assert metrics["num-examples"] == n_test
    assert 0.0 <= metrics["top1"] <= metrics["top5"] <= 1.0
    valid = json.loads((root / "fed" / "provenance" / "round1-client1-valid.json").read_text())
    assert (
        valid["inputs"]["files"]["fed/client1/eval1.weights"]
        == hashlib.sha256((root / "fed" / "global" / "round1.weights").read_bytes()).hexdigest()
    )


def test_arrays_that_do_not_fit_the_cfg_fail_the_client(tmp_path):
    root = tmp_path
    shutil.copytree(REPO / "cfg", root / "cfg")
    config = ConfigRecord({"server-round": 1, "header": struct.pack("<iiiQ", 0, 2, 0, 0)})
    msg = Message(
        RecordDict({"arrays": to_record({}), "config": config}), dst_node_id=10, message_type="train"
    )
    with pytest.raises(
        da.ArraysError, match=r"received arrays: not the cfg's tensors \(missing 000.convolutional.biases\)"
    ):
        client_app.train(msg, context(root, 0), run_config(root))
