"""SandboxedFedAvg: Flower's FedAvg whose aggregation is a sandboxed ``aggregation darknet``.

``aggregate_train`` writes each reply's arrays to a .weights file (header of the global
model), checks the file's sha256 against the output hash in the client's manifest, orders
the clients by their number and averages their files in the sandbox (mean, ``-weights``
by examples, or any ``-method`` rule of docs/darknet-contract.md 8.4 from the run config's
``method``: krum, bulyan, geomed, ...; FedOpt and DP rules get the previous global model and
carry their state file from round to round, see steps.aggregate). A reply that is an error, whose arrays are
not the cfg's tensors, or whose bytes are not what its manifest says, is refused by name;
the round goes on while at least ``min_clients`` remain.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from .. import darknet_arrays as da
from . import steps


def to_record(arrays: dict) -> ArrayRecord:
    return ArrayRecord({name: Array(a) for name, a in arrays.items()})


def from_record(record: ArrayRecord) -> dict:
    return {name: a.numpy() for name, a in record.items()}


def read_weights(cfg: da.Sections, path: Path) -> tuple[bytes, ArrayRecord]:
    header, arrays = da.decode(cfg, path.read_bytes(), str(path))
    return header, to_record(arrays)


class SandboxedFedAvg(FedAvg):
    """FedAvg on Darknet weights files, aggregated by dl-server in the sandbox."""

    def __init__(
        self,
        settings: steps.Settings,
        *,
        num_clients: int,
        min_clients: int,
        weighting: str,
        method: str,
        fraction_evaluate: float = 0.0,
        node_clients: dict[int, int] | None = None,
    ):
        super().__init__(
            fraction_train=1.0,
            fraction_evaluate=fraction_evaluate,
            min_train_nodes=num_clients,
            min_evaluate_nodes=max(1, round(fraction_evaluate * num_clients)),
            min_available_nodes=num_clients,
        )
        self.settings = settings
        self.cfg = da.read_cfg(settings.path(settings.base_cfg))
        self.min_clients = min_clients
        self.weighting = weighting
        self.method = method
        # Deployment: the authenticated node ID (its registered key) -> the client it is; a reply
        # is then that client's whatever it says, and must have trained on that client's shard.
        self.node_clients = node_clients or {}
        self.header = b""  # of the current global model
        self.global_sha256 = ""  # of the current global model's file: what clients must train from
        self.rounds: list[dict] = []  # what each round did, for the table
        self.sent = 0  # train messages of the current round
        self.sent_at = 0.0  # when they were made (time.time(): the bench's breakdown of a run)

    def set_global(self, path: Path) -> ArrayRecord:
        """The global model is now this file: its arrays (sent to clients), header and sha256."""
        data = path.read_bytes()
        self.header, arrays = da.decode(self.cfg, data, str(path))
        self.global_sha256 = hashlib.sha256(data).hexdigest()
        return to_record(arrays)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        config["header"] = self.header  # the arrays' .weights header, so clients rebuild the file exactly
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self.sent = len(messages)
        self.sent_at = time.time()
        return messages

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        config["header"] = self.header
        return super().configure_evaluate(server_round, arrays, config, grid)

    def accept(self, r: int, reply: Message) -> tuple[int, str, int, float] | str:
        """(client, its file, examples, loss) of a good reply, else why it is refused."""
        if reply.has_error():
            return f"node {reply.metadata.src_node_id}: error reply: {reply.error.reason}"
        content: Any = reply.content  # records of any kind: checked here, one line if wrong
        try:
            meta = content["meta"]
            k = int(meta["client"])
            manifest = json.loads(str(meta["manifest"]))
            header = bytes(meta["header"])
            arrays = from_record(content["arrays"])
            metrics = content["metrics"]
        except (KeyError, ValueError, TypeError) as e:
            return f"node {reply.metadata.src_node_id}: malformed reply ({e})"
        name = f"client {k}"
        if self.node_clients:
            node = reply.metadata.src_node_id
            if node not in self.node_clients:
                return f"node {node}: not a registered client node"
            if self.node_clients[node] != k:
                return (
                    f"node {node}: its key is client {self.node_clients[node]}'s, its reply says client {k}"
                )
            shard = f"{steps.MNIST}/mnist.train.client{k}.list"
            if shard not in manifest.get("inputs", {}).get("files", {}):
                return f"{name}: its manifest does not show a training run on its shard {shard}"
        try:
            data = da.encode(self.cfg, header, arrays, "arrays")
            expected = steps.manifest_sha256(manifest, "outputs", f"{steps.BASE}.weights")
            started_from = steps.manifest_sha256(manifest, "inputs", f"global{r - 1}.weights")
        except (da.ArraysError, steps.StepError) as e:
            return f"{name}: {e}"
        digest = hashlib.sha256(data).hexdigest()
        if digest != expected:
            return f"{name}: arrays hash to {digest[:12]}, its manifest says {expected[:12]}"
        if started_from != self.global_sha256:
            return f"{name}: trained from {started_from[:12]}, not the global model {self.global_sha256[:12]}"
        s = self.settings
        rel = f"{s.work}/server/round{r}/client{k}.weights"
        s.path(rel).parent.mkdir(parents=True, exist_ok=True)
        s.path(rel).write_bytes(data)
        s.write(f"{s.work}/server/round{r}/client{k}.manifest.json", json.dumps(manifest, indent=1) + "\n")
        return k, rel, int(metrics["num-examples"]), float(metrics["loss"])

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        accepted: list[tuple[int, str, int, float]] = []
        refused: list[str] = []
        replies = list(replies)
        missing = self.sent - len(replies)  # nodes that did not answer within the round timeout
        if missing > 0:
            print(f"  no reply from {missing} of {self.sent} nodes", file=sys.stderr, flush=True)
        for reply in replies:
            verdict = self.accept(server_round, reply)
            if isinstance(verdict, str):
                refused.append(verdict)
            else:
                accepted.append(verdict)
        numbers = [k for k, *_ in accepted]
        twice = sorted({k for k in numbers if numbers.count(k) > 1})
        refused += [f"client {k}: {numbers.count(k)} replies in one round" for k in twice]
        accepted = sorted(a for a in accepted if a[0] not in twice)  # by client number, as the local runner
        for why in refused:
            print(f"  refused: {why}", file=sys.stderr, flush=True)
        if len(accepted) < self.min_clients:
            raise steps.StepError(
                f"round {server_round}: {len(accepted)} good replies, at least {self.min_clients} needed"
                + (f" (refused: {'; '.join(refused)})" if refused else "")
            )
        counts = [n for _, _, n, _ in accepted]
        weighted = self.weighting == "examples" or (self.weighting == "auto" and len(set(counts)) > 1)
        out = steps.aggregate(
            self.settings,
            server_round,
            [f for _, f, _, _ in accepted],
            counts if weighted else None,
            self.method,
        )
        arrays = self.set_global(out)
        total = sum(counts)
        loss = sum(n * loss for _, _, n, loss in accepted) / total
        self.rounds.append(
            {
                "round": server_round,
                "clients": [k for k, *_ in accepted],
                "refused": refused,
                "no_reply": max(missing, 0),
                "loss": loss,
                "sent_at": self.sent_at,  # wall clock (time.time()) of the train messages, and
                "aggregated_at": time.time(),  # of the new global model: `make bench-federated`
            }
        )
        return arrays, MetricRecord({"num-examples": total, "loss": loss, "clients": len(accepted)})
