"""`make bench` rows of the aggregation rules (dlserver.rules): `aggregation darknet -method M`
of ten weights files inside the component, for every rule, on YOLOv3-tiny (8.8M floats per
model; targets: mean <= 0.5 s, any rule <= 2 s) and on the seed's LeNet (<= 0.1 s).

    .venv/bin/python scripts/bench_rules.py            # both models, median of 3 runs
    .venv/bin/python scripts/bench_rules.py --runs 5 --only lenet

Each timing is the aggregation alone: a run of the same component that only starts up (an
unknown command) is timed next to each aggregation run, and the median of the differences
is reported (start-up is seconds, LeNet's aggregation milliseconds). The ten inputs are the
model with 5% multiplicative noise per client (seeded), one of them sign-flipped.
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_common import ROOT, wasmtime_run

SEED_LENET = ROOT.parent / "shared" / "seed" / "files" / "model" / "mnist_lenet.weights"
MODELS = {
    "yolov3-tiny": ("cfg/yolov3-tiny.cfg", [ROOT / "model" / "yolov3-tiny.weights"], 0.5, 2.0),
    "lenet": (
        "cfg/mnist_lenet.cfg",
        [ROOT / "model" / "mnist_lenet.weights", ROOT / "model" / "seed_mnist_lenet.weights", SEED_LENET],
        0.1,
        0.1,
    ),
}
# (method, extra flags): every rule once; the optimisers and dp rules with the first model as
# the previous global model, the noise seeded (a bench, not a private run)
RULES = [
    ("mean", []),
    ("median", []),
    ("trimmed:0.2", []),
    ("krum:2", []),
    ("multikrum:2:6", []),
    ("bulyan:1", []),
    ("geomed", []),
    ("fedavgm:1:0.9", ["-global", "w0.weights", "-state-out", "state"]),
    ("fedadam:0.1:0.9:0.99:0.001", ["-global", "w0.weights", "-state-out", "state"]),
    ("dpfixed:1:1", ["-global", "w0.weights", "-seed", "1"]),
    ("dpadaptive:0.5:1:0.5:0.2", ["-global", "w0.weights", "-state-out", "state", "-seed", "1"]),
]


def timed(cmd: list[str], cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    return time.perf_counter() - start, result


def bench_model(name: str, runs: int) -> None:
    cfg, candidates, mean_target, target = MODELS[name]
    source = next((p for p in candidates if p.exists()), None)
    if source is None:
        print(f"bench_rules: {name} skipped (no weights: {candidates[0]})", file=sys.stderr)
        return
    blob = source.read_bytes()
    header, params = blob[:20], np.frombuffer(blob[20:], dtype="<f4")
    rng = np.random.default_rng(0)
    wasm = ROOT / "dl-server.wasm"
    with tempfile.TemporaryDirectory(prefix="bench-rules-") as tmp:
        work = Path(tmp)
        (work / "cfg").mkdir()
        (work / "cfg" / Path(cfg).name).write_bytes((ROOT / cfg).read_bytes())
        names = []
        for i in range(10):
            noisy = params * (1 + 0.05 * rng.standard_normal(params.size, dtype=np.float32))
            if i == 9:
                noisy = -noisy
            (work / f"w{i}.weights").write_bytes(header + noisy.astype("<f4").tobytes())
            names.append(f"w{i}.weights")
        timed(wasmtime_run(wasm) + ["frobnicate"], work)  # compiles into the cache once
        print(f"{name}: ten models of {params.size} floats, aggregation darknet in the component")
        print(f"{'method':32s} {'seconds':>8s} {'target':>7s}")
        for method, flags in RULES:
            args = ["aggregation", "darknet", cfg, "out.weights", *names, "-method", method, *flags]
            differences = []
            for _ in range(runs):
                startup, _ = timed(wasmtime_run(wasm) + ["frobnicate"], work)
                whole, result = timed(wasmtime_run(wasm) + args, work)
                if result.returncode != 0:
                    sys.exit(f"bench_rules: {method} failed:\n{result.stderr[-2000:]}")
                differences.append(whole - startup)
            seconds = statistics.median(differences)
            limit = mean_target if method == "mean" else target
            verdict = "ok" if seconds <= limit else "OVER"
            print(f"{method:32s} {seconds:8.3f} {limit:7.2f}  {verdict}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", choices=list(MODELS))
    opts = parser.parse_args()
    for name in [opts.only] if opts.only else list(MODELS):
        bench_model(name, opts.runs)
        print()


if __name__ == "__main__":
    main()
