"""SandboxedFedAvg.aggregate_train on synthetic replies, without Ray: the sandboxed
`aggregation darknet` against Flower's own strategies (FedAvg, FedMedian, FedTrimmedAvg) on
the same replies, and the faults it refuses by name."""

import hashlib
import json
import random
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg, FedMedian, FedTrimmedAvg
from flwr.supercore.task_identity import TaskIdentity

from dlserver_tools import darknet_arrays as da
from dlserver_tools.flower import steps
from dlserver_tools.flower.strategy import SandboxedFedAvg, from_record, to_record

REPO = Path(__file__).resolve().parent.parent
WASM = REPO / "dl-server.wasm"

pytestmark = [
    pytest.mark.component,
    pytest.mark.skipif(not WASM.is_file(), reason="dl-server.wasm not built (run make)"),
]


@pytest.fixture(autouse=True)
def task_identity():
    """Messages need the run they belong to (set by Flower's runtime when there is one)."""
    saved = TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


@pytest.fixture
def settings(tmp_path):
    (tmp_path / "cfg").mkdir()
    shutil.copy(REPO / "cfg" / "mnist_lenet.cfg", tmp_path / "cfg")
    s = steps.Settings(root=tmp_path, program=WASM, work="fed")
    (tmp_path / "fed" / "server").mkdir(parents=True)
    (tmp_path / "fed" / "global").mkdir()
    s.write(s.server_cfg, s.lenet_cfg(5, "constant"))
    header, arrays = client_arrays(0)
    s.path("fed/global/round0.weights").write_bytes(da.encode(CFG, header, arrays))
    return s


CFG = da.read_cfg(REPO / "cfg" / "mnist_lenet.cfg")


def client_arrays(k: int) -> tuple[bytes, dict]:
    rng = np.random.default_rng(k)
    arrays = {name: rng.standard_normal(n).astype(np.float32) for name, n in da.tensor_shapes(CFG)}
    return struct.pack("<iiiQ", 0, 2, 0, 100 * k), arrays


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def global_sha256() -> str:
    header, arrays = client_arrays(0)
    return sha256(da.encode(CFG, header, arrays))


def reply(k: int, examples: int, *, tamper=None, arrays_override=None, started_from=None) -> Message:
    """Client k's train reply: its arrays, examples, loss, header and manifest (the sha256 of
    what it wrote, and of the global model it trained from)."""
    header, arrays = client_arrays(k)
    manifest = {
        "inputs": {"files": {f"fed/client{k}/global0.weights": started_from or global_sha256()}},
        "outputs": {
            "files": {f"fed/client{k}/out/mnist_lenet.weights": sha256(da.encode(CFG, header, arrays))}
        },
    }
    if tamper is not None:
        tamper(arrays)
    content = RecordDict(
        {
            "arrays": to_record(arrays_override or arrays),
            "metrics": MetricRecord({"num-examples": examples, "loss": 1.0 / k}),
            "meta": ConfigRecord({"client": k, "header": header, "manifest": json.dumps(manifest)}),
        }
    )
    return Message(content, reply_to=instruction(k))


def instruction(k: int) -> Message:
    return Message(content=RecordDict(), dst_node_id=100 + k, message_type="train")


def strategy(settings, n: int, *, min_clients=None, weighting="auto", method="mean") -> SandboxedFedAvg:
    s = SandboxedFedAvg(
        settings, num_clients=n, min_clients=min_clients or n, weighting=weighting, method=method
    )
    s.set_global(settings.path("fed/global/round0.weights"))
    return s


def assert_close_to(ours, theirs) -> None:
    ours, theirs = from_record(ours), from_record(theirs)
    assert list(ours) == list(theirs)
    for name in ours:
        np.testing.assert_allclose(ours[name], theirs[name], rtol=2e-6, atol=2e-7, err_msg=name)


def test_weighted_mean_is_flowers_fedavg(settings):
    replies = [reply(k, n) for k, n in ((1, 600), (2, 300), (3, 100))]
    ours, metrics = strategy(settings, 3).aggregate_train(1, replies)
    theirs, _ = FedAvg().aggregate_train(1, replies)
    assert ours is not None and theirs is not None and metrics is not None
    assert_close_to(ours, theirs)
    assert metrics["num-examples"] == 1000
    run = json.loads(settings.path("fed/provenance/round1-aggregate.json").read_text())
    assert run["guest_argv"][-2:] == ["-weights", "600,300,100"]
    assert [f for f in run["inputs"]["files"] if f.endswith(".weights")] == [
        f"fed/server/round1/client{k}.weights" for k in (1, 2, 3)
    ]


@pytest.mark.parametrize(
    ("method", "oracle"), [("median", FedMedian()), ("trimmed:0.2", FedTrimmedAvg(beta=0.2))]
)
def test_median_and_trimmed_mean_are_flowers(settings, method, oracle):
    replies = [reply(k, 100) for k in range(1, 6)]
    ours, _ = strategy(settings, 5, method=method).aggregate_train(1, replies)
    theirs, _ = oracle.aggregate_train(1, replies)
    assert ours is not None and theirs is not None
    assert_close_to(ours, theirs)


def test_clients_are_ordered_by_number_whatever_the_reply_order(settings):
    replies = [reply(k, 100 * k) for k in (1, 2, 3, 4)]
    strategy(settings, 4).aggregate_train(1, replies)
    first = settings.path("fed/global/round1.weights").read_bytes()
    shuffled = replies[:]
    random.Random(3).shuffle(shuffled)
    assert shuffled != replies
    strategy(settings, 4).aggregate_train(1, shuffled)
    assert settings.path("fed/global/round1.weights").read_bytes() == first


def test_bad_replies_are_refused_by_name_and_the_round_goes_on(settings, capsys):
    def flip(arrays):
        arrays["004.connected.weights"][7] += 1.0

    _, good = client_arrays(2)
    misshaped = dict(good, **{"006.connected.biases": np.zeros(83, np.float32)})
    replies = [
        reply(1, 100),
        reply(2, 100, arrays_override=misshaped),
        reply(3, 100, tamper=flip),
        Message(Error(code=0, reason="client 4: dl-server: error: out of memory"), reply_to=instruction(4)),
        reply(5, 100),
        reply(6, 100, started_from="ab" * 32),
        reply(7, 100),
        reply(7, 100),
    ]
    s = strategy(settings, 8, min_clients=2)
    ours, metrics = s.aggregate_train(1, replies)
    theirs, _ = FedAvg().aggregate_train(1, [replies[0], replies[4]])
    assert ours is not None and theirs is not None and metrics is not None
    assert_close_to(ours, theirs)
    assert metrics["clients"] == 2
    refused = s.rounds[-1]["refused"]
    assert refused[0] == "client 2: arrays: 006.connected.biases is float32[83], the cfg needs float32[84]"
    assert refused[1].startswith("client 3: arrays hash to ")
    assert refused[2] == "node 104: error reply: client 4: dl-server: error: out of memory"
    assert refused[3] == f"client 6: trained from abababababab, not the global model {global_sha256()[:12]}"
    assert refused[4] == "client 7: 2 replies in one round"
    assert "refused: client 3" in capsys.readouterr().err


def test_too_few_good_replies_fail_the_round(settings):
    def flip(arrays):
        arrays["000.convolutional.biases"][0] = 9.0

    replies = [reply(1, 100), reply(2, 100, tamper=flip), reply(3, 100)]
    with pytest.raises(
        steps.StepError, match=r"round 1: 2 good replies, at least 3 needed \(refused: client 2"
    ):
        strategy(settings, 3).aggregate_train(1, replies)
    assert not settings.path("fed/global/round1.weights").exists()
