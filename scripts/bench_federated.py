"""`make bench-federated`: wall time of the federation on Flower (simulation engine in-process,
clients in parallel) against the local runner (dl-server-federated, one step after another),
same settings and seeds, alternated --repeat times in the same command (medians, and the
ratio of the medians); with --flwr-run a third row: Flower through a SuperLink and `flwr run`.
The load average before and after is printed (timings on a shared machine are noisy). Every
round's global model of every run is compared by sha256: they must all be byte-identical.

    .venv/bin/python scripts/bench_federated.py --num-clients 4 --rounds 3 --batches 100 [--root R]

Needs MNIST prepared for --num-clients under the root (make mnist_training num-clients=N).
"""

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parent.parent


def timed(cmd: list[str], root: Path) -> float:
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"bench-federated: {' '.join(cmd[:2])} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return seconds


def digests(directory: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.glob("round*.weights"))
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-clients", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batches", type=int, default=100)
    p.add_argument("--root", type=Path, default=Path("."))
    p.add_argument("--program", type=Path, default=REPO / "dl-server.wasm")
    p.add_argument("--repeat", type=int, default=3, help="runs of each runner, alternated (default 3)")
    p.add_argument("--flwr-run", action="store_true", help="also Flower through a SuperLink and `flwr run`")
    opts = p.parse_args()
    root = opts.root.resolve()
    common = [
        "--num-clients",
        str(opts.num_clients),
        "--rounds",
        str(opts.rounds),
        "--batches",
        str(opts.batches),
    ]
    common += ["--program", str(opts.program.resolve()), "--root", str(root)]
    runners = {
        "local (dl-server-federated)": [str(BIN / "dl-server-federated")],
        "Flower simulation (in-process)": [str(BIN / "dl-server-flower")],
    }
    if opts.flwr_run:
        runners["Flower simulation (flwr run)"] = [str(BIN / "dl-server-flower"), "--flwr-run"]
    load_before = os.getloadavg()
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    models: dict[str, dict[str, str]] = {}
    for i in range(opts.repeat):
        for j, (name, cmd) in enumerate(runners.items()):
            work = f"bench-federated-{j}"
            seconds[name].append(timed([*cmd, *common, "--work", work], root))
            models[f"{name} #{i + 1}"] = digests(root / work / "global")
    load_after = os.getloadavg()
    print(f"federation: {opts.num_clients} clients x {opts.rounds} rounds x {opts.batches} batches")
    print(f"load average (1, 5, 15 min): before {load_before}, after {load_after}; {os.cpu_count()} CPUs")
    print(f"{'runner':<32} {'median s':>9}  runs (s)")
    for name, values in seconds.items():
        print(f"{name:<32} {statistics.median(values):9.1f}  {', '.join(f'{v:.1f}' for v in values)}")
    base = statistics.median(seconds["local (dl-server-federated)"])
    for name in list(runners)[1:]:
        print(f"ratio {name} / local: {statistics.median(seconds[name]) / base:.2f}")
    reference = next(iter(models.values()))
    same = all(m == reference for m in models.values()) and len(reference) == opts.rounds + 1
    for model, digest in reference.items():
        print(f"  {model}: {digest[:16]}")
    print(
        f"global models byte-identical in all {len(models)} runs"
        if same
        else "global models DIFFER: " + ", ".join(n for n, m in models.items() if m != reference)
    )
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
