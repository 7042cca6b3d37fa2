"""Issue 10's aggregation rules through the Flower strategy (run config `method`), without Ray:
SandboxedFedAvg over three rounds of synthetic replies against Flower 1.42's own strategies
fed the same replies and the same global model: FedAdam (its state carried from round to
round: through the rule's state file in the sandbox, in the strategy object in Flower) and
Krum."""

import json

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam, Krum

from dlserver_tools import darknet_arrays as da
from dlserver_tools.flower.strategy import from_record, to_record
from test_flower_strategy import CFG, client_arrays, instruction, settings, sha256, strategy, task_identity

__all__ = ["settings", "task_identity"]  # fixtures


def reply(k: int, r: int, started_from: str) -> Message:
    """Client k's reply in round r, trained (its manifest says) from the model ``started_from``."""
    header, arrays = client_arrays(k + 10 * r)
    manifest = {
        "inputs": {"files": {f"fed/client{k}/global{r - 1}.weights": started_from}},
        "outputs": {
            "files": {f"fed/client{k}/out/mnist_lenet.weights": sha256(da.encode(CFG, header, arrays))}
        },
    }
    content = RecordDict(
        {
            "arrays": to_record(arrays),
            "metrics": MetricRecord({"num-examples": 100 * k, "loss": 1.0}),
            "meta": ConfigRecord({"client": k, "header": header, "manifest": json.dumps(manifest)}),
        }
    )
    return Message(content, reply_to=instruction(k))


@pytest.mark.parametrize(
    ("method", "oracle", "n"),
    [
        ("fedadam:0.1:0.9:0.99:0.001", lambda: FedAdam(eta=0.1, beta_1=0.9, beta_2=0.99, tau=1e-3), 3),
        ("krum:1", lambda: Krum(num_malicious_nodes=1), 5),
    ],
    ids=["fedadam", "krum"],
)
def test_three_rounds_equal_flowers(settings, method, oracle, n):
    ours = strategy(settings, n, method=method)
    theirs = oracle()
    for r in (1, 2, 3):
        replies = [reply(k, r, ours.global_sha256) for k in range(1, n + 1)]
        theirs.current_arrays = from_record(
            ours.set_global(settings.path(f"fed/global/round{r - 1}.weights"))
        )
        got, _ = ours.aggregate_train(r, replies)
        expected, _ = theirs.aggregate_train(r, replies)
        assert got is not None and expected is not None
        got_arrays, expected_arrays = from_record(got), from_record(expected)
        for name, a in expected_arrays.items():
            np.testing.assert_array_equal(
                got_arrays[name], a.astype(np.float32), err_msg=f"round {r}: {name}"
            )
    argv = json.loads(settings.path("fed/provenance/round3-aggregate.json").read_text())["guest_argv"]
    if method.startswith("fedadam"):
        state = [
            "-state",
            "fed/server/aggregate2/rule.state",
            "-state-out",
            "fed/server/aggregate3/rule.state",
        ]
        assert argv[-6:] == ["-global", "fed/global/round2.weights", *state]
    else:
        assert argv[argv.index("-method") + 1] == "krum:1" and "-global" not in argv
