"""Deployment: the server maps each authenticated node (the node ID the SuperLink gave its
registered key) to its client (run config `node-clients`) instead of trusting the client number
a reply declares; a reply must also come from a training run on that client's shard."""

import json

import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from dlserver_tools import darknet_arrays as da
from dlserver_tools.flower import steps
from dlserver_tools.flower.server_app import node_clients
from dlserver_tools.flower.strategy import to_record
from test_flower_strategy import CFG, client_arrays, global_sha256, settings, sha256, strategy, task_identity

__all__ = ["settings", "task_identity"]  # fixtures


def reply(node: int, says: int, shard: int) -> Message:
    """A round-1 reply from ``node`` that says it is client ``says`` and trained on ``shard``."""
    header, arrays = client_arrays(says)
    manifest = {
        "inputs": {
            "files": {
                f"fed/client{says}/global0.weights": global_sha256(),
                f"data/mnist/mnist.train.client{shard}.list": "0" * 64,
            }
        },
        "outputs": {
            "files": {f"fed/client{says}/out/mnist_lenet.weights": sha256(da.encode(CFG, header, arrays))}
        },
    }
    content = RecordDict(
        {
            "arrays": to_record(arrays),
            "metrics": MetricRecord({"num-examples": 100, "loss": 1.0}),
            "meta": ConfigRecord({"client": says, "header": header, "manifest": json.dumps(manifest)}),
        }
    )
    return Message(content, reply_to=Message(content=RecordDict(), dst_node_id=node, message_type="train"))


def test_replies_are_the_clients_their_node_keys_are(settings, capsys):
    s = strategy(settings, 4, min_clients=1)
    s.node_clients = node_clients("501:1,502:2,503:3")
    replies = [
        reply(501, 1, 1),  # honest
        reply(502, 3, 3),  # client 2's node says it is client 3 (and used client 3's shard)
        reply(503, 3, 2),  # client 3, trained on client 2's shard
        reply(504, 4, 4),  # a node the server has no key for
    ]
    arrays, metrics = s.aggregate_train(1, replies)
    assert arrays is not None and metrics is not None
    assert s.rounds[0]["clients"] == [1]
    assert s.rounds[0]["refused"] == [
        "node 502: its key is client 2's, its reply says client 3",
        (
            "client 3: its manifest does not show a training run on its shard "
            "data/mnist/mnist.train.client3.list"
        ),
        "node 504: not a registered client node",
    ]


def test_without_a_map_clients_say_who_they_are(settings):
    s = strategy(settings, 2)
    arrays, _ = s.aggregate_train(1, [reply(7, 2, 2), reply(8, 1, 1)])
    assert arrays is not None and s.rounds[0]["clients"] == [1, 2]


def test_a_bad_map_is_an_error():
    assert node_clients("") == {}
    with pytest.raises(steps.StepError, match="node-clients='501=1': expected NODE:CLIENT"):
        node_clients("501=1")
