"""The ServerApp: round 0 (Darknet's init), then FedAvg rounds through SandboxedFedAvg;
each global model validated in the sandbox (evaluate_fn); the table in <work>/results.json.
``app`` reads the run config from its Context (``flwr run``); ``server_app(config)`` is the
same app with the run config given (the in-process simulation)."""

from __future__ import annotations

import concurrent.futures
import json
import time
from collections.abc import Mapping

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


def main(grid: Grid, config: Mapping) -> None:
    """The federation's rounds, the run config ``config``."""
    s = steps.Settings.from_config(config)
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
    started = time.perf_counter()
    steps.fresh_dir(s.path(s.work))  # nothing left from an earlier federation
    init, seconds = steps.initialise(s)
    print(
        f"round 0: initial global model = Darknet random init (-seed {s.seed}), {seconds:.1f} s", flush=True
    )
    initial = strategy.set_global(init)
    table: list[dict] = []

    def validate(server_round: int) -> None:
        top1, top5, n = steps.validate_global(s, server_round)
        elapsed = time.perf_counter() - started
        print(
            f"  round {server_round}: valid on {n} test images: top-1 {top1:.4f}, top-5 {top5:.4f}",
            flush=True,
        )
        table.append({"round": server_round, "top1": top1, "top5": top5, "seconds": round(elapsed, 1)})

    # Each global model is validated while the clients train the next round (one validation at a
    # time, in round order): the validations' results are the table, awaited at the end.
    with concurrent.futures.ThreadPoolExecutor(1) as validations:
        pending: list[concurrent.futures.Future] = []

        def evaluate(server_round: int, arrays: ArrayRecord) -> None:
            pending.append(validations.submit(validate, server_round))

        result = strategy.start(
            grid=grid,
            initial_arrays=initial,
            num_rounds=int(config["num-rounds"]),
            timeout=float(config["round-timeout"]),
            train_config=ConfigRecord({}),
            evaluate_fn=evaluate,
        )
        for future in pending:
            future.result()  # a validation that failed fails the run here
    rounds = int(config["num-rounds"])
    if len(strategy.rounds) != rounds:
        raise steps.StepError(f"{len(strategy.rounds)} of {rounds} rounds aggregated")
    clients_valid = {r: dict(m) for r, m in result.evaluate_metrics_clientapp.items()}
    summary = {
        "clients_valid": clients_valid,
        "status": "completed",
        "table": table,
        "rounds": strategy.rounds,
        "seconds": round(time.perf_counter() - started, 1),
    }
    s.write(f"{s.work}/results.json", json.dumps(summary, indent=1) + "\n")


def server_app(config: Mapping | None = None) -> ServerApp:
    """The ServerApp; its run config is ``config``, else the Context's."""
    built = ServerApp()

    @built.main()
    def _main(grid: Grid, context: Context) -> None:
        main(grid, context.run_config if config is None else config)

    return built


app = server_app()
