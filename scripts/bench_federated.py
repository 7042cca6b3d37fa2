"""`make bench-federated`: wall time of the federation on Flower (`make federated`'s path: the
simulation engine in-process, clients in parallel) against the local runner of today
(dl-server-federated, one step after another) and the local runner of the BASELINE commit (the
commit before issue 9's work: its own checkout under build/, built with its own `make`, its own
dl-server-federated, host and dl-server.wasm), same settings and seeds, taking turns --repeat
times in one command (medians, ratios of the medians, the issue's target: Flower <= 1.0x the
baseline's local runner). With --flwr-run a further row: Flower through a SuperLink and `flwr run`.

All runners work in the bench's own project root (default build/bench-federated/root): MNIST is
split there for the clients by dl-server-mnist (reused when its manifest says it is that split),
never in the checkout's data/mnist, which other checkouts may share; and with a compile cache of
their own (build/bench-federated/cache), which other checkouts' components do not evict. The load
average before and after is printed (timings on a shared machine are noisy), and where each run's
time goes (start-up, each round, the end). Every round's global model of every run is compared by
sha256: today's runs must all be byte-identical, the baseline's runs too among themselves; whether
the baseline gives the same bytes as today is reported.

    .venv/bin/python scripts/bench_federated.py --num-clients 4 --rounds 3 --batches 100 \
        [--baseline COMMIT] [--repeat N] [--root R]
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "build" / "bench-federated"
# bc2500e^ (`git log --oneline bc2500e^ -1`): bc2500e added flwr, the first commit of issue 9's
# work; no commit of that work is an ancestor of this one
BASELINE = "7f7b9976241a65c899d106f29ae401309574aa0f"
# tracked files the runners read from the project root besides the prepared split
ROOT_FILES = ("cfg/mnist_lenet.cfg", "data/mnist/mnist.labels.list", "data/mnist/mnist.names.list")


class BenchError(Exception):
    """The bench cannot run: one line saying why."""


@dataclass
class Runner:
    name: str
    cmd: list[str]
    env: dict[str, str] | None = None  # None: this process's
    today: bool = True  # today's code: its models must equal the other runners' of today
    flower: bool = False  # a timeline.json and sent_at/aggregated_at in results.json
    seconds: list[float] = field(default_factory=list)
    parts: list[dict[str, float]] = field(default_factory=list)


def write_if_different(path: Path, data: bytes) -> None:
    """A new file (never an in-place rewrite: the old one may be a hard link) when it differs."""
    if path.is_file() and path.read_bytes() == data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def bench_root(root: Path, num_clients: int, data_dist: str) -> None:
    """The bench's project root: MNIST split for the clients (dl-server-mnist checks a split that
    is there and keeps it), the cfg and the label lists copied from the checkout."""
    root = root.resolve()
    if root == REPO or REPO.is_relative_to(root):
        raise BenchError(f"--root {root}: the bench needs a root of its own, not the checkout's")
    for rel in ROOT_FILES:
        write_if_different(root / rel, (REPO / rel).read_bytes())
    cmd = [str(BIN / "dl-server-mnist"), "--num-clients", str(num_clients), "--data-dist", data_dist]
    cmd += ["--root", str(root), "--cache-dir", str(REPO / "data" / "cache")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BenchError(f"preparing MNIST in {root}: {proc.stderr.strip()[-500:]}")
    print(proc.stderr.strip().splitlines()[-1], flush=True)


def resolve(commit: str) -> str:
    proc = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}"],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise BenchError(f"--baseline {commit}: not a commit of {REPO}")
    return proc.stdout.strip()


def baseline_checkout(sha: str, build: Path = BUILD) -> Path:
    """The baseline commit's files (git archive) under build/, its dl-server.wasm built by its own
    Makefile with this venv's tools (the venv's set-up is not redone); kept for the next bench."""
    where = build / f"baseline-{sha[:12]}"
    if (where / ".built").is_file() and (where / "dl-server.wasm").is_file():
        return where
    if where.exists():
        shutil.rmtree(where)
    where.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", sha], capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(where, filter="data")
    if not (where / "host" / "dlserver_tools" / "federated.py").is_file():
        raise BenchError(f"baseline {sha[:12]} has no local runner (host/dlserver_tools/federated.py)")
    venv = Path(sys.prefix)
    print(f"building baseline {sha[:12]} in {where} (its make, once) ...", flush=True)
    make = ["make", "-C", str(where), f"VENV={venv}", "-o", f"{venv}/.setup-done", "dl-server.wasm"]
    proc = subprocess.run(make, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BenchError(f"baseline {sha[:12]}: make dl-server.wasm failed: {proc.stderr.strip()[-800:]}")
    (where / ".built").write_text(sha + "\n")
    return where


def baseline_env(checkout: Path) -> dict[str, str]:
    """This environment with the baseline's host/ first on the path (its runner, and the
    `dl-server` host its runner starts, import the baseline's packages); checked."""
    env = {**os.environ, "PYTHONPATH": str(checkout / "host")}
    probe = (
        "import dlserver_host.cli as h, dlserver_tools.federated as f; print(h.__file__); print(f.__file__)"
    )
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True).stdout
    if [Path(p).resolve().is_relative_to(checkout.resolve()) for p in out.split()] != [True, True]:
        raise BenchError(f"the baseline's packages do not come from {checkout}/host: {out.split()}")
    return env


def digests(directory: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.glob("round*.weights"))
    }


def local_parts(results: dict, wall: float) -> dict[str, float]:
    """Where a local run's time went: 'start' = everything but the rounds (process start,
    imports, round 0: Darknet's init and its validation, exit), then each round (its clients
    one after another, the aggregation, the validation)."""
    table = results["table"]
    parts = {"start": wall - results["seconds"] + table[0]["seconds"]}
    for before, row in zip(table, table[1:], strict=False):
        parts[f"round {row['round']}"] = row["seconds"] - before["seconds"]
    parts["end"] = 0.0  # in 'start': the runner's own clock does not see the process's exit
    return parts


def flower_parts(results: dict, marks: dict, launched: float, ended: float) -> dict[str, float]:
    """Where a Flower run's time went: 'start' = launch to round 1's messages (imports, Ray's
    start with round 0 beside it, the simulation's start), each round from its messages to its
    aggregated model (its clients two at a time; the previous model validated meanwhile), 'end'
    = the last aggregation to exit (the actors' and Ray's stop, the last validation meanwhile).
    'ray start' and 'ray stop' (the rounds done to run_simulation's return) are parts of those, with what
    comes before Ray's start, round 0 when it outlasts Ray's start, the simulation's start
    (flwr's set-up, the actors) and the process's exit."""
    rounds = results["rounds"]
    parts = {"start": rounds[0]["sent_at"] - launched}
    for r in rounds:
        parts[f"round {r['round']}"] = r["aggregated_at"] - r["sent_at"]
    parts["end"] = ended - rounds[-1]["aggregated_at"]
    parts["to ray.init"] = marks["ray_init"] - launched  # Python, imports, `import ray`
    parts["ray start"] = marks["ray_ready"] - marks["ray_init"]
    parts["round 0 wait"] = max(0.0, marks["round0_done"] - marks["ray_ready"])
    parts["simulation start"] = rounds[0]["sent_at"] - max(marks["ray_ready"], marks["round0_done"])
    parts["ray stop"] = marks["simulation_done"] - results["rounds_done_at"]
    parts["exit"] = ended - marks["simulation_done"]
    return parts


def run_once(runner: Runner, common: list[str], work: str, root: Path, retry: bool = True) -> dict[str, str]:
    """One timed run; its global models' digests. A failed run is said and run once more (on a
    shared machine another job may, e.g., remove a run's staging directory); twice: an error."""
    launched = time.time()
    started = time.perf_counter()
    cmd = [*runner.cmd, *common, "--work", work]
    proc = subprocess.run(cmd, cwd=root, env=runner.env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    ended = time.time()
    if proc.returncode != 0:
        if retry:
            why = (proc.stderr.strip().splitlines() or ["no message"])[-1]
            print(f"  {runner.name}: failed ({why[:300]}), once more", file=sys.stderr, flush=True)
            return run_once(runner, common, work, root, retry=False)
        raise BenchError(f"{runner.name} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    runner.seconds.append(seconds)
    results = json.loads((root / work / "results.json").read_text())
    timeline = root / work / "timeline.json"
    if runner.flower and timeline.is_file():
        marks = json.loads(timeline.read_text())
        runner.parts.append(flower_parts(results, marks, launched, ended))
    elif not runner.flower:
        runner.parts.append(local_parts(results, seconds))
    return digests(root / work / "global")


def overlap(provenance: Path) -> list[str]:
    """How a run's sandboxed steps overlapped, from their manifests (start, duration): one line
    per round, seconds from the first step's start."""
    steps = []
    for record in sorted(provenance.glob("round*.json")):
        m = json.loads(record.read_text())
        started = datetime.datetime.fromisoformat(m["started_utc"]).timestamp()
        steps.append((record.stem, started, started + m["duration_seconds"]))
    if not steps:
        return []
    t0 = min(start for _, start, _ in steps)
    lines = []
    for r in sorted({int(name[5:].split("-")[0]) for name, _, _ in steps}):
        here = sorted((a - t0, b - t0, n.split("-", 1)[1]) for n, a, b in steps if n.startswith(f"round{r}-"))
        lines.append(f"round {r}: " + ", ".join(f"{n} {a:.1f}-{b:.1f}" for a, b, n in here))
    return lines


def median_parts(parts: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(p[key] for p in parts) for key in parts[0]} if parts else {}


def compare(models: dict[str, dict[str, str]], today: set[str], rounds: int) -> tuple[bool, list[str]]:
    """(ok, lines): today's runs must all give the same models, the baseline's runs too among
    themselves; whether the baseline's equal today's is said, not required."""
    lines: list[str] = []
    groups: dict[bool, dict[str, dict[str, str]]] = {True: {}, False: {}}
    for name, m in models.items():
        groups[name.split(" #")[0] in today][name] = m
    ok = True
    for is_today, group in groups.items():
        if not group:
            continue
        label = "today's runners" if is_today else "the baseline's runs"
        reference = next(iter(group.values()))
        same = all(m == reference for m in group.values()) and len(reference) == rounds + 1
        ok &= same
        lines.append(
            f"{label}: global models byte-identical in all {len(group)} runs"
            if same
            else f"{label}: global models DIFFER: " + ", ".join(n for n, m in group.items() if m != reference)
        )
    if groups[True] and groups[False]:
        a, b = next(iter(groups[True].values())), next(iter(groups[False].values()))
        lines.append(
            "the baseline's global models are byte-identical to today's"
            if a == b
            else "the baseline's global models differ from today's: "
            + ", ".join(k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))
        )
    return ok, lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-clients", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batches", type=int, default=100)
    p.add_argument("--data-dist", choices=["iid", "non-iid"], default="iid")
    p.add_argument("--root", type=Path, default=BUILD / "root", help="the bench's project root")
    p.add_argument("--program", type=Path, default=REPO / "dl-server.wasm")
    p.add_argument("--repeat", type=int, default=3, help="runs of each runner, taking turns (default 3)")
    p.add_argument(
        "--baseline",
        default=BASELINE,
        help=f"the commit whose local runner is the target's baseline (default {BASELINE[:7]} = "
        "bc2500e^, the commit before issue 9's work); 'none': no baseline row",
    )
    p.add_argument("--flwr-run", action="store_true", help="also Flower through a SuperLink and `flwr run`")
    opts = p.parse_args()
    try:
        return bench(opts)
    except BenchError as e:
        print(f"bench-federated: error: {e}", file=sys.stderr)
        return 1


def bench(opts: argparse.Namespace) -> int:
    root = opts.root.resolve()
    bench_root(root, opts.num_clients, opts.data_dist)
    sha = None if opts.baseline == "none" else resolve(opts.baseline)
    checkout = baseline_checkout(sha) if sha else None
    baseline_program = checkout / "dl-server.wasm" if checkout else opts.program

    def args(runner: Runner, rounds: int, batches: int) -> list[str]:
        program = opts.program.resolve() if runner.today else baseline_program
        return [
            "--num-clients", str(opts.num_clients), "--rounds", str(rounds), "--batches", str(batches),
            "--data-dist", opts.data_dist, "--root", str(root), "--program", str(program),
        ]  # fmt: skip

    runners = [
        Runner("Flower (make federated)", [str(BIN / "dl-server-flower")], flower=True),
        Runner("local, today", [str(BIN / "dl-server-federated")]),
    ]
    if opts.flwr_run:
        runners.append(
            Runner("Flower (flwr run)", [str(BIN / "dl-server-flower"), "--flwr-run"], flower=True)
        )
    if sha and checkout:
        runners.append(
            Runner(
                f"local, baseline {sha[:7]}",
                [sys.executable, "-m", "dlserver_tools.federated"],
                env=baseline_env(checkout),
                today=False,
            )
        )
    # a compile cache of the bench's own: the host keeps the 4 newest compiled components in its
    # cache, which every checkout on the machine shares, so another job's builds could make one
    # runner's runs compile its component again (~10 s) and not the other's
    for r in runners:
        r.env = {**(r.env or os.environ), "XDG_CACHE_HOME": str(BUILD / "cache")}
    # untimed: one small run of each local runner, so every program is compiled and cached
    for r in runners:
        if not r.flower:
            run_once(r, args(r, 1, 1), "bench-federated-warm", root)
            r.seconds.clear()
            r.parts.clear()
    load_before = os.getloadavg()
    models: dict[str, dict[str, str]] = {}
    for i in range(opts.repeat):
        turn = runners[i % len(runners) :] + runners[: i % len(runners)]  # each goes first in turn
        for r in turn:
            work = f"bench-federated-{runners.index(r)}"
            models[f"{r.name} #{i + 1}"] = run_once(r, args(r, opts.rounds, opts.batches), work, root)
            print(f"  {r.name} #{i + 1}: {r.seconds[-1]:.1f} s", flush=True)
    load_after = os.getloadavg()
    print(
        f"federation: {opts.num_clients} clients x {opts.rounds} rounds x {opts.batches} batches "
        f"({opts.data_dist}), {opts.repeat} runs each, taking turns; root {root}"
    )
    print(f"load average (1, 5, 15 min): before {load_before}, after {load_after}; {os.cpu_count()} CPUs")
    print(f"{'runner':<26} {'median s':>9}  runs (s)")
    for r in runners:
        print(f"{r.name:<26} {statistics.median(r.seconds):9.1f}  {', '.join(f'{v:.1f}' for v in r.seconds)}")
    print("where the time goes (medians, s):")
    for r in runners:
        parts = median_parts(r.parts)
        print(f"  {r.name:<24} " + ", ".join(f"{k} {v:.1f}" for k, v in parts.items()))
    for r in runners[:2]:
        print(f"how the steps of {r.name}'s last run overlapped (s from its first step, in the sandbox):")
        provenance = root / f"bench-federated-{runners.index(r)}" / "provenance"
        print("\n".join(f"  {line}" for line in overlap(provenance)))
    flower = statistics.median(runners[0].seconds)
    for r in runners[1:]:
        if not r.flower:
            print(f"ratio Flower / {r.name}: {flower / statistics.median(r.seconds):.2f}")
    if sha:
        ratio = flower / statistics.median(runners[-1].seconds)
        verdict = "met" if ratio <= 1.0 else "NOT met"
        print(f"target (Flower <= 1.0x the local runner of {sha[:7]}, the commit before issue 9): {verdict}")
    ok, lines = compare(models, {r.name for r in runners if r.today}, opts.rounds)
    reference = next(iter(models.values()))
    for model, digest in reference.items():
        print(f"  {model}: {digest[:16]}")
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
