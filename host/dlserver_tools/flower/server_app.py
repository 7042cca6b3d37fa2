"""The ServerApp: round 0 (Darknet's init), then FedAvg rounds through SandboxedFedAvg;
each global model validated in the sandbox (evaluate_fn) while the clients train the next
round; the table in <work>/results.json. ``app`` reads the run config from its Context
(``flwr run``); ``server_app(config, begun)`` is the same app with the run config given and
round 0 possibly begun already (the in-process simulation begins it while Ray starts, and
validates the last global model while Ray stops)."""

from __future__ import annotations

import concurrent.futures
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from . import steps
from .strategy import SandboxedFedAvg


def node_clients(text: str) -> dict[int, int]:
    """``"NODE:K,NODE:K"`` (run config ``node-clients``, set in deployment from the node IDs the
    SuperLink gave the registered keys) -> {node ID: client K}; empty: clients say who they are."""
    pairs = [item.split(":") for item in text.split(",") if item]
    try:
        return {int(node): int(k) for node, k in pairs}
    except ValueError:
        raise steps.StepError(f"node-clients={text!r}: expected NODE:CLIENT,NODE:CLIENT") from None


class Validations:
    """The global models validated in the background, one at a time in round order: the table."""

    def __init__(self, s: steps.Settings, started: float):
        self.s = s
        self.started = started
        self.table: list[dict] = []
        self.pool = concurrent.futures.ThreadPoolExecutor(1)
        self.pending: list[concurrent.futures.Future] = []

    def submit(self, r: int) -> None:
        self.pending.append(self.pool.submit(self.validate, r))

    def validate(self, r: int) -> None:
        row = steps.global_row(self.s, r)
        print(f"  round {r}: {steps.valid_line(row)}", flush=True)
        self.table.append({**row, "seconds": round(time.perf_counter() - self.started, 1)})

    def wait(self) -> list[dict]:
        """The table, once every validation is done (the first that failed raises here)."""
        try:
            for future in self.pending:
                future.result()
        finally:
            self.pool.shutdown()
        return self.table


@dataclass
class Begun:
    """Round 0 done: a fresh work directory, Darknet's init as global/round0.weights, its
    validation under way."""

    s: steps.Settings
    init: Path
    started: float
    validations: Validations = field(repr=False)


def begin(config: Mapping) -> Begun:
    s = steps.Settings.from_config(config)
    started = time.perf_counter()
    steps.fresh_dir(s.path(s.work))  # nothing left from an earlier federation
    init, seconds = steps.initialise(s)
    print(
        f"round 0: initial global model = Darknet random init (-seed {s.seed}), {seconds:.1f} s", flush=True
    )
    validations = Validations(s, started)
    validations.submit(0)
    return Begun(s, init, started, validations)


def main(grid: Grid, config: Mapping, begun: Begun | None = None, finish_later: list | None = None) -> None:
    """The federation's rounds, the run config ``config``, round 0 begun or not. Then the last
    validations and results.json; with ``finish_later`` (the in-process simulation) these are
    left to the caller, who is given the function that does them: the runtime stops meanwhile."""
    begun = begun or begin(config)
    s = begun.s
    num_clients = int(config["num-clients"])
    strategy = SandboxedFedAvg(
        s,
        num_clients=num_clients,
        min_clients=int(config["min-clients"]) or num_clients,
        weighting=str(config["weighting"]),
        method=str(config["method"]),
        fraction_evaluate=float(config["fraction-evaluate"]),
        node_clients=node_clients(str(config.get("node-clients", ""))),
    )

    def evaluate(server_round: int, arrays: ArrayRecord) -> None:
        if server_round > 0:  # round 0's is under way
            begun.validations.submit(server_round)

    try:
        result = strategy.start(
            grid=grid,
            initial_arrays=strategy.set_global(begun.init),
            num_rounds=int(config["num-rounds"]),
            timeout=float(config["round-timeout"]),
            train_config=ConfigRecord({}),
            evaluate_fn=evaluate,
        )
        rounds = int(config["num-rounds"])
        if len(strategy.rounds) != rounds:
            raise steps.StepError(f"{len(strategy.rounds)} of {rounds} rounds aggregated")
    except BaseException:
        begun.validations.wait()
        raise
    rounds_done_at = time.time()  # wall clock: what follows is the last validation, the runtime's stop

    def finish() -> None:
        table = begun.validations.wait()
        clients_valid = {r: dict(m) for r, m in result.evaluate_metrics_clientapp.items()}
        summary = {
            "clients_valid": clients_valid,
            "status": "completed",
            "table": table,
            "rounds": strategy.rounds,
            "seconds": round(time.perf_counter() - begun.started, 1),
            "rounds_done_at": rounds_done_at,
        }
        s.write(f"{s.work}/results.json", json.dumps(summary, indent=1) + "\n")

    if finish_later is None:
        finish()
    else:
        finish_later.append(finish)


def server_app(
    config: Mapping | None = None, begun: Begun | None = None, finish_later: list | None = None
) -> ServerApp:
    """The ServerApp; its run config is ``config``, else the Context's; round 0 ``begun`` or not;
    the last validations and results.json left to the caller with ``finish_later`` (main)."""
    built = ServerApp()

    @built.main()
    def _main(grid: Grid, context: Context) -> None:
        main(grid, context.run_config if config is None else config, begun, finish_later)

    return built


app = server_app()
