"""`make federated-local`: federated averaging (FedAvg) of LeNet on MNIST without Flower, one
sandboxed step after another: the reference the Flower app (dlserver_tools.flower) is compared
with byte for byte. The steps are the same code as the Flower app's (dlserver_tools.flower.steps);
only the orchestration differs: here the clients train in turn and the server aggregates
their files directly, there Flower carries the arrays and runs the clients in parallel.

  round 0   the server makes the initial global model: Darknet's random initialisation
            (-seed S), saved by a `classifier train` run of ONE batch whose poly rate at
            batch 1 of 1 is 0 (checked), validated too (round 0 of the table: chance level).
  round r   each client k: `classifier train <its dataset> <its cfg>
            global/round<r-1>.weights -clear -seed S+1000r+k` on its own shard; then the
            server's `aggregation darknet` of the clients' files (-weights by training
            images when the shards differ) and `classifier valid` of the new global model.

Every run sees only the sources named for its step (steps.py lists them), gets its
arguments after `--` (no args.cfg) and leaves a `--manifest` record in <work>/provenance/
(`dl-server verify <work>` checks the chain of a whole federation). Files: see steps.py.
Needs MNIST prepared for the same number of clients (make mnist_training num-clients=N).
Paths are relative to the current directory: run it from the repository root, as `make
federated-local` does (`dl-server-federated` or `python -m dlserver_tools.federated`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from .flower import steps

METHOD_HELP = (
    "the server's rule: mean (default) or an `aggregation darknet -method` rule, e.g. median, "
    "trimmed:F, krum:F, multikrum:F:M, bulyan:F, geomed, fedavgm:LR:M, fedadam:ETA:B1:B2:TAU, "
    "fedyogi:..., fedadagrad:ETA:TAU, dpfixed:Z:C, dpadaptive:... (FedOpt and DP rules get the "
    "previous global model; their state file goes from round to round)"
)


class FederatedError(Exception):
    """A step failed: one line for the user."""


def settings(opts: argparse.Namespace) -> steps.Settings:
    """The steps' settings from the command line (shared with dl-server-flower's)."""
    return steps.Settings(
        root=opts.root.resolve(),
        program=opts.program.resolve(),
        work=opts.work,
        batches=opts.batches,
        policy=opts.policy,
        learning_rate=opts.learning_rate,
        seed=opts.seed,
        valid_list=opts.valid_list,
        base_cfg=str(Path(opts.base_cfg).resolve()),  # relative to the current directory
        timeout=opts.timeout,
        manifests=getattr(opts, "manifests", True),
        noise_seed=opts.noise_seed,
    )


def check_data(opts: argparse.Namespace) -> tuple[list[int], dict]:
    """Examples per client (train list lines) and the split; checks the prepared split matches."""
    root, n = opts.root, opts.num_clients
    manifest = root / steps.MNIST / f".prepared-{n}.json"
    hint = f"run `make mnist_training num-clients={n} data-dist={opts.data_dist}` first"
    try:
        prepared = json.loads(manifest.read_text())
    except (OSError, ValueError):
        raise FederatedError(f"MNIST is not prepared for {n} clients ({manifest} missing): {hint}") from None
    if prepared.get("data_dist") != opts.data_dist:
        raise FederatedError(
            f"{manifest}: data is split {prepared.get('data_dist')}, not {opts.data_dist}: {hint}"
        )
    if not (root / opts.valid_list).is_file():
        raise FederatedError(f"{opts.valid_list}: no such test list")
    split = {k: prepared[k] for k in ("data_dist", "alpha", "seed") if k in prepared}
    try:
        where = steps.Settings(root=root.resolve(), program=Path(opts.program))
        counts = [steps.examples(where, k) for k in range(1, n + 1)]
    except steps.StepError as e:
        raise FederatedError(str(e)) from None
    return counts, split


def print_table(table: list[dict]) -> None:
    print()
    print("\n".join(steps.table_lines(table)))


def federate(opts: argparse.Namespace) -> dict:
    """The rounds, one step after another; the results (also in <work>/results.json)."""
    o, s = opts, settings(opts)
    counts, split = check_data(o)
    weighted = o.weighting == "examples" or (o.weighting == "auto" and len(set(counts)) > 1)
    described = ", ".join(f"{k} {v}" for k, v in split.items())
    print(
        f"federated: {o.num_clients} clients ({described}; {', '.join(map(str, counts))} training images), "
        f"{o.rounds} rounds of {o.batches} batches of 100 per client, {o.policy} rate "
        f"{o.learning_rate:g}, {'weighted' if weighted else 'plain'} mean, "
        f"validation on {o.valid_list}",
        flush=True,
    )
    if s.noise_seed is not None:
        print(steps.noise_note(s.noise_seed), flush=True)
    started = time.perf_counter()
    table: list[dict[str, Any]] = []

    def validated(r: int, extra: dict) -> None:
        row = steps.global_row(s, r)
        print(f"  {steps.valid_line(row)}", flush=True)
        table.append({**row, **extra, "seconds": round(time.perf_counter() - started, 1)})

    steps.fresh_dir(s.path(s.work))  # nothing left from an earlier federation
    _, seconds = steps.initialise(s)
    print(
        f"round 0: initial global model = Darknet random init (-seed {o.seed}), {seconds:.1f} s", flush=True
    )
    validated(0, {})
    for r in range(1, o.rounds + 1):
        print(f"round {r}:", flush=True)
        clients = []
        for k in range(1, o.num_clients + 1):
            t = steps.train(s, k, r, f"{s.work}/global/round{r - 1}.weights")
            print(
                f"  client {k}: {t.batches} batches of its {t.examples} images, avg loss {t.loss:.3f}, "
                f"{t.seconds:.1f} s",
                flush=True,
            )
            clients.append(
                {"client": k, "images": t.examples, "batches": t.batches, "avg_loss": t.loss,
                 "seconds": round(t.seconds, 3)}
            )  # fmt: skip
        files = [f"{s.work}/client{k}/round{r}.weights" for k in range(1, o.num_clients + 1)]
        steps.aggregate(s, r, files, counts if weighted else None, o.method)
        how = "average" if o.method == "mean" else o.method
        print(f"  server: {'weighted ' if weighted else ''}{how} of {len(files)} models", flush=True)
        validated(r, {"clients": clients})
    total = time.perf_counter() - started
    print_table(table)
    print(f"\n{total:.1f} s; global models in {s.work}/global/, provenance in {s.work}/provenance/")
    result = {
        "settings": {
            "num_clients": o.num_clients,
            "rounds": o.rounds,
            "batches": o.batches,
            "policy": o.policy,
            "learning_rate": o.learning_rate,
            "seed": o.seed,
            "weighted": weighted,
            "method": o.method,
            "split": split,
            "examples": counts,
            "valid_list": o.valid_list,
        },
        "table": table,
        "seconds": round(total, 1),
    }
    s.write(f"{s.work}/results.json", json.dumps(result, indent=1) + "\n")
    return result


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="dl-server-federated",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--num-clients", type=int, default=4, metavar="N")
    p.add_argument("--rounds", type=int, default=3, metavar="R")
    p.add_argument(
        "--batches",
        type=int,
        default=100,
        metavar="B",
        help="batches of 100 images each client trains per round (default 100)",
    )
    p.add_argument(
        "--data-dist",
        choices=["iid", "non-iid"],
        default="iid",
        help="the split data/mnist must have been prepared with (checked)",
    )
    p.add_argument(
        "--policy",
        default="constant",
        help="learning-rate policy of the clients' cfg (default constant; see the doc)",
    )
    p.add_argument("--learning-rate", type=float, default=0.01)
    p.add_argument(
        "--weighting",
        choices=["auto", "examples", "equal"],
        default="auto",
        help="auto: weight by training images per client when they differ (default)",
    )
    p.add_argument("--method", default="mean", help=METHOD_HELP)
    p.add_argument("--noise-seed", type=int, default=None, metavar="N", help=NOISE_SEED_HELP)
    p.add_argument(
        "--seed", type=int, default=1, help="-seed of the init run; client k in round r uses seed+1000r+k"
    )
    p.add_argument(
        "--valid-list",
        default="data/mnist/mnist.valid.list",
        help="test list for the global model (default: the 10000 test images)",
    )
    p.add_argument(
        "--root",
        type=Path,
        default=Path("."),
        help="project root: holds data/mnist; every run's working directory (default: the current directory)",
    )
    p.add_argument("--work", default="federated", help="work directory, relative to the root")
    p.add_argument("--program", type=Path, default=Path("dl-server.wasm"))
    p.add_argument("--base-cfg", type=Path, default=Path("cfg") / "mnist_lenet.cfg")
    p.add_argument(
        "--no-manifests",
        dest="manifests",
        action="store_false",
        help="do not write a `dl-server --manifest` record per run",
    )
    p.add_argument("--timeout", type=float, default=None, help="per-run --timeout of the host")
    return checked_options(p, p.parse_args(argv))


def checked_options(p: argparse.ArgumentParser, opts: argparse.Namespace) -> argparse.Namespace:
    """Counts >= 1 and a work directory below the root (also for dl-server-flower)."""
    if opts.num_clients < 1 or opts.rounds < 1 or opts.batches < 1:
        p.error("--num-clients, --rounds and --batches must be >= 1")
    if Path(opts.work).is_absolute() or ".." in Path(opts.work).parts or opts.work in ("", "."):
        p.error("--work must be a directory below the root")
    opts.work = Path(opts.work).as_posix()
    if opts.noise_seed is not None:
        if opts.method.split(":")[0] not in steps.DP_RULES:
            rules = ", ".join(steps.DP_RULES)
            p.error(f"--noise-seed seeds the noise of the DP rules ({rules}), not of {opts.method}")
        if opts.noise_seed < 0:
            p.error("--noise-seed must be >= 0")
    return opts


NOISE_SEED_HELP = (
    "seed the DP rules' noise (aggregation -seed N+1000r in round r): the same noise in every run, "
    "so NOT private; for tests and comparisons (default: os.urandom)"
)


def main(argv=None) -> int:
    opts = parse_args(argv)
    if not opts.program.is_file():
        print(f"federated: {opts.program} not built (run make)", file=sys.stderr)
        return 1
    try:
        federate(opts)
    except (FederatedError, steps.StepError) as e:
        print(f"federated: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
