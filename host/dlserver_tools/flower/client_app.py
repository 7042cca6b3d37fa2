"""The ClientApp: ``train`` and ``evaluate`` of one client, each a sandboxed dl-server run.

The client is ``partition-id + 1`` of its node config (simulation sets it; a SuperNode is
given it with ``--node-config``); its shard is data/mnist's client<k> lists under the
project root of the run config (``root``; a node may name its own ``root`` and ``program``).
``app`` reads the run config from its Context (``flwr run``); ``client_app(config)`` is the
same app with the run config given (the in-process simulation, flwr's run_simulation).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from .. import darknet_arrays as da
from . import steps
from .strategy import from_record, read_weights


def _settings(run_config: Mapping, context: Context) -> tuple[steps.Settings, int]:
    config = dict(run_config)
    for key in ("root", "program"):  # where this node has the project, if not where the server has it
        if key in context.node_config:
            config[key] = context.node_config[key]
    return steps.Settings.from_config(config), int(context.node_config["partition-id"]) + 1


def _received_weights(s: steps.Settings, msg: Message, rel: str) -> None:
    """The global model as a .weights file at ``rel`` (its header from the config)."""
    cfg = da.read_cfg(s.path(s.base_cfg))
    content: Any = msg.content
    header = bytes(content["config"]["header"])
    s.path(rel).parent.mkdir(parents=True, exist_ok=True)
    s.path(rel).write_bytes(da.encode(cfg, header, from_record(content["arrays"]), "received arrays"))


def _round(msg: Message) -> int:
    content: Any = msg.content
    return int(content["config"]["server-round"])


def train(msg: Message, context: Context, run_config: Mapping) -> Message:
    s, k = _settings(run_config, context)
    r = _round(msg)
    received = f"{s.work}/client{k}/global{r - 1}.weights"
    _received_weights(s, msg, received)
    trained = steps.train(s, k, r, received)
    header, arrays = read_weights(da.read_cfg(s.path(s.base_cfg)), trained.weights)
    content = RecordDict(
        {
            "arrays": arrays,
            "metrics": MetricRecord({"num-examples": trained.examples, "loss": trained.loss}),
            "meta": ConfigRecord(
                {
                    "client": k,
                    "header": header,
                    "manifest": json.dumps(trained.manifest),
                    "seconds": trained.seconds,
                    "batches": trained.batches,
                }
            ),
        }
    )
    return Message(content, reply_to=msg)


def evaluate(msg: Message, context: Context, run_config: Mapping) -> Message:
    s, k = _settings(run_config, context)
    r = _round(msg)
    c = f"{s.work}/client{k}"
    weights = f"{c}/eval{r}.weights"
    _received_weights(s, msg, weights)
    cfg = f"{c}/{steps.BASE}.valid.cfg"
    s.write(cfg, s.lenet_cfg(s.batches, s.policy))
    lst = f"{steps.MNIST}/mnist.valid.client{k}.list"
    top1, top5, n = steps.validate(s, f"round{r}-client{k}-valid", weights, cfg, f"{c}/valid.dataset", lst)
    metrics = MetricRecord({"num-examples": n, "top1": top1, "top5": top5})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


def client_app(config: Mapping | None = None) -> ClientApp:
    """The ClientApp; its run config is ``config``, else the Context's."""
    built = ClientApp()

    @built.train()
    def _train(msg: Message, context: Context) -> Message:
        return train(msg, context, context.run_config if config is None else config)

    @built.evaluate()
    def _evaluate(msg: Message, context: Context) -> Message:
        return evaluate(msg, context, context.run_config if config is None else config)

    return built


app = client_app()
