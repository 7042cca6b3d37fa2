"""Model poisoning against each aggregation rule: LeNet trained federated on MNIST by 10
clients, one of them Byzantine, every training, aggregation and validation a dl-server
run inside the component (wasmtime CLI). Prints top-1 per round for each rule.

    .venv/bin/python scripts/poisoning_demo.py                  # 12 rounds of 60 batches, rate 0.02 -> 0
    .venv/bin/python scripts/poisoning_demo.py --rounds 4 --batches 20 --scale 10 --byzantine 1

Needs `make mnist_training num-clients=10` (10 shards) and dl-server.wasm. The attack: each
Byzantine client trains honestly on its shard and sends g - scale * (w - g) (its update
sign-flipped and scaled; g the global model it started from). A "clean" run (the mean, no
attacker) is the reference. Round 1's clients start from the same random model (Darknet's
init, -seed 1) under every rule, so their training runs are shared; later rounds differ.
Each client trains one local epoch a round (60 batches of 100 over its 6000 images: FedAvg's
E = 1); with many more local batches (250) the honest models drift apart and the
coordinate-wise rules (median, Bulyan) trail the clean mean by about 10 points. Within a
round the rate decays linearly from --rate to 0 (--policy poly): each client sends a settled
model, not one at a constant rate's noise, which Krum (it keeps one client's model) needs.
Work files go to poisoning/ (removed at the start).
"""

import argparse
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench_common import ROOT, wasmtime_run

RULES = ["mean", "median", "trimmed:0.1", "krum:1", "bulyan:1", "geomed"]
WORK = "poisoning"
BASE = "lenet"  # the cfg's base name: <backup>/lenet.weights
TOP = re.compile(r"top 1: ([0-9.]+), top \d+: ([0-9.]+)")


def dl_server(*args: str) -> str:
    """One run of the component in the repository root; its stdout (exits on failure)."""
    result = subprocess.run(
        wasmtime_run(ROOT / "dl-server.wasm") + list(args), cwd=ROOT, capture_output=True, text=True
    )
    if result.returncode != 0:
        sys.exit(f"poisoning_demo: dl-server {' '.join(args)} failed:\n{result.stderr[-2000:]}")
    return result.stdout


def cfg_text(max_batches: int, rate: float, policy: str = "constant") -> str:
    """LeNet's cfg at `rate`: constant, or (poly) decayed linearly to 0 over the run's batches
    (Darknet's poly policy, power 1: each client's round starts at `rate`, as -clear restarts it)."""
    text = (ROOT / "cfg" / "mnist_lenet.cfg").read_text()
    text = re.sub(r"(?m)^max_batches=.*$", f"max_batches={max_batches}", text)
    text = re.sub(r"(?m)^policy=.*$", f"policy={policy}", text)
    text = re.sub(r"(?m)^power=.*$", "power=1", text)
    return re.sub(r"(?m)^learning_rate=.*$", f"learning_rate={rate}", text)


def dataset(path: Path, train: str, backup: str) -> str:
    path.write_text(
        f"classes=10\ntrain = {train}\nvalid = data/mnist/mnist.valid.list\nbackup = {backup}\n"
        "labels = data/mnist/mnist.labels.list\nnames = data/mnist/mnist.names.list\ntop = 5\n"
    )
    return path.relative_to(ROOT).as_posix()


def train_client(run_dir: Path, rnd: int, k: int, glob: str, cfg: str) -> Path:
    out = run_dir / f"r{rnd}c{k}"
    out.mkdir(parents=True, exist_ok=True)
    data = dataset(
        out / "client.dataset", f"data/mnist/mnist.train.client{k}.list", out.relative_to(ROOT).as_posix()
    )
    dl_server("classifier", "train", data, cfg, glob, "-clear", "-seed", str(1000 * rnd + k))
    return out / f"{BASE}.weights"


def poison(honest: Path, glob: Path, scale: float, out: Path) -> None:
    """g - scale * (w - g), header from the honest file."""
    w, g = honest.read_bytes(), glob.read_bytes()
    wv, gv = np.frombuffer(w[20:], "<f4"), np.frombuffer(g[20:], "<f4")
    out.write_bytes(w[:20] + (gv - scale * (wv - gv)).astype("<f4").tobytes())


def top1(weights: str, valid: str, cfg: str) -> float:
    lines = list(TOP.finditer(dl_server("classifier", "valid", valid, cfg, weights)))
    return float(lines[-1].group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--batches", type=int, default=60, help="batches of 100 per client and round")
    parser.add_argument("--rate", type=float, default=0.02)
    parser.add_argument("--decay", type=float, default=1.0, help="round r trains at rate * decay^(r-1)")
    parser.add_argument(
        "--policy", choices=["constant", "poly"], default="poly", help="within a client's round"
    )
    parser.add_argument("--byzantine", type=int, default=1, help="Byzantine clients (the last ones)")
    parser.add_argument("--scale", type=float, default=10.0, help="they send g - scale * (w - g)")
    parser.add_argument("--rules", default=",".join(RULES))
    opts = parser.parse_args()
    clients = 10
    if not all((ROOT / f"data/mnist/mnist.train.client{k}.list").exists() for k in range(1, clients + 1)):
        sys.exit("poisoning_demo: run `make mnist_training num-clients=10` first")
    work = ROOT / WORK
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    cfgs = {}  # round -> its cfg (the learning rate of that round), named BASE.cfg
    for rnd in range(1, opts.rounds + 1):
        cfg = work / f"round{rnd}" / f"{BASE}.cfg"
        cfg.parent.mkdir()
        cfg.write_text(cfg_text(opts.batches, opts.rate * opts.decay ** (rnd - 1), opts.policy))
        cfgs[rnd] = cfg.relative_to(ROOT).as_posix()
    valid = dataset(work / "valid.dataset", "data/mnist/mnist.valid.list", WORK)
    # the initial global model: Darknet's random init (one batch at rate 0)
    init = work / "init"
    init.mkdir()
    (init / "one.list").write_text(
        (ROOT / "data/mnist/mnist.train.client1.list").read_text().splitlines()[0] + "\n"
    )
    (init / f"{BASE}.cfg").write_text(cfg_text(1, 0.0))
    init_data = dataset(init / "init.dataset", f"{WORK}/init/one.list", f"{WORK}/init")
    dl_server("classifier", "train", init_data, f"{WORK}/init/{BASE}.cfg", "-seed", "1")
    start = init / f"{BASE}.weights"
    configs = [("clean (mean, no attacker)", "mean", 0)] + [
        (r, r, opts.byzantine) for r in opts.rules.split(",")
    ]
    shared: dict[int, Path] = {}  # round 1's client models, the same under every rule
    table = {}
    began = time.perf_counter()
    for label, rule, byzantine in configs:
        run_dir = work / re.sub(r"[^a-z0-9]+", "_", label)
        glob = start
        tops = []
        for rnd in range(1, opts.rounds + 1):
            models = []
            for k in range(1, clients + 1):
                if rnd == 1 and k in shared:
                    trained = shared[k]
                else:
                    trained = train_client(run_dir, rnd, k, glob.relative_to(ROOT).as_posix(), cfgs[rnd])
                    if rnd == 1:
                        shared[k] = trained
                if k > clients - byzantine:
                    bad = run_dir / f"r{rnd}c{k}" / "byzantine.weights"
                    bad.parent.mkdir(parents=True, exist_ok=True)
                    poison(trained, glob, opts.scale, bad)
                    trained = bad
                models.append(trained.relative_to(ROOT).as_posix())
            new = run_dir / f"global{rnd}.weights"
            dl_server(
                "aggregation",
                "darknet",
                cfgs[rnd],
                new.relative_to(ROOT).as_posix(),
                *models,
                "-method",
                rule,
            )
            glob = new
            tops.append(top1(glob.relative_to(ROOT).as_posix(), valid, cfgs[rnd]))
            print(
                f"{label:28s} round {rnd}: top-1 {tops[-1]:.4f}  ({time.perf_counter() - began:.0f} s)",
                flush=True,
            )
        table[label] = tops
    print()
    print(
        f"{opts.byzantine} of {clients} clients send g - {opts.scale:g} (w - g);"
        f" {opts.batches} batches of 100 per round at rate {opts.rate:g} * {opts.decay:g}^(round - 1),"
        f" {opts.policy} within the round"
    )
    print("| rule | " + " | ".join(f"round {r}" for r in range(1, opts.rounds + 1)) + " |")
    print("|---|" + "---|" * opts.rounds)
    for label, tops in table.items():
        print(f"| `{label}` | " + " | ".join(f"{t:.4f}" for t in tops) + " |")


if __name__ == "__main__":
    main()
