"""`make bench`: speed of dl-server inside the component against baselines run in the
same command (the machine is shared and noisy: medians of several runs, and ratios).

Needs MNIST prepared (make mnist_training) and the seed's trained LeNet weights
(model/mnist_lenet.weights, copied from ../shared/seed/files/model/ when absent).
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_common import ROOT, native_run, wasmtime_run
from dlserver_host.darknet_output import predicted_line

SEED_WEIGHTS = ROOT.parent / "shared" / "seed" / "files" / "model" / "mnist_lenet.weights"


def median_seconds(cmd, runs, cwd, env=None):
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
        times.append(time.perf_counter() - t)
        if result.returncode not in (0, 1):
            sys.exit(f"bench: {' '.join(map(str, cmd))} failed:\n{result.stderr[-2000:]}")
    return statistics.median(times), result


def bench_valid(runs: int) -> list[tuple[str, float, str]]:
    """classifier valid on the 10000 MNIST test images: component vs native guest."""
    # The seed's trained weights (make demo overwrites model/mnist_lenet.weights with its own).
    weights = "model/mnist_lenet.weights"
    if SEED_WEIGHTS.exists():
        weights = "model/seed_mnist_lenet.weights"
        shutil.copy(SEED_WEIGHTS, ROOT / weights)
    elif not (ROOT / weights).exists():
        sys.exit("bench: model/mnist_lenet.weights missing and no seed copy in ../shared")
    if not (ROOT / "data" / "mnist" / "mnist.valid.list").exists():
        sys.exit("bench: MNIST not prepared: run make mnist_training")
    args = ["classifier", "valid", "cfg/mnist.dataset", "cfg/mnist_lenet.cfg", weights]
    wasmtime = wasmtime_run(ROOT / "dl-server.wasm")
    subprocess.run(wasmtime + ["frobnicate"], cwd=ROOT, capture_output=True)  # compile into the cache
    startup, _ = median_seconds(wasmtime + ["frobnicate"], runs, ROOT)
    wasm, result = median_seconds(wasmtime + args, runs, ROOT)
    last = result.stdout.strip().splitlines()[-1]
    native_cmd, env = native_run(args)
    native, _ = median_seconds(native_cmd, runs, ROOT, env)
    return [
        ("valid 10k: component, whole run (s)", wasm, last),
        ("valid 10k: component start-up only (s)", startup, "wasmtime start + guest init"),
        ("valid 10k: inside the component (s)", wasm - startup, "target <= 1.5"),
        ("valid 10k: guest natively, CPython 3.11 (s)", native, "baseline"),
        ("valid 10k: component / native", (wasm - startup) / native, "ratio"),
    ]


def bench_detect(runs: int) -> list[tuple[str, float, str]]:
    """detect on dog.jpg with the official YOLOv3-tiny (skipped without make yolo_detection)."""
    if not (ROOT / "model" / "yolov3-tiny.weights").exists() or not (ROOT / "data" / "dog.jpg").exists():
        print("bench: detect skipped (run make yolo_detection)", file=sys.stderr)
        return []
    args = [
        "detect",
        "cfg/yolov3-tiny.cfg",
        "model/yolov3-tiny.weights",
        "data/dog.jpg",
        "-out",
        "data/cache/bench",
    ]
    (ROOT / "data" / "cache").mkdir(exist_ok=True)
    wasmtime = wasmtime_run(ROOT / "dl-server.wasm")
    forwards, wholes = [], []
    for _ in range(runs):
        t = time.perf_counter()
        result = subprocess.run(wasmtime + args, cwd=ROOT, capture_output=True, text=True)
        wholes.append(time.perf_counter() - t)
        if result.returncode != 0:
            sys.exit(f"bench: detect failed:\n{result.stderr[-2000:]}")
        forwards.append(next(p.seconds for line in result.stdout.splitlines() if (p := predicted_line(line))))
    return [
        ("detect dog.jpg: forward in the component (s)", statistics.median(forwards), "target <= 0.40"),
        ("detect dog.jpg: component, whole run (s)", statistics.median(wholes), "target <= 1.5"),
    ]


def bench_aggregation(runs: int) -> list[tuple[str, float, str]]:
    """aggregation darknet of 10 LeNet weights files (the seed's, perturbed with numpy):
    component vs native."""
    import numpy as np

    source = ROOT / "model" / "mnist_lenet.weights"
    if not source.exists():
        source = SEED_WEIGHTS
    if not source.exists():
        print("bench: aggregation skipped (no LeNet weights)", file=sys.stderr)
        return []
    blob = source.read_bytes()
    header, params = blob[:20], np.frombuffer(blob[20:], dtype="<f4")
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="bench-agg-") as tmp:
        work = Path(tmp)
        (work / "cfg").mkdir()
        shutil.copy(ROOT / "cfg" / "mnist_lenet.cfg", work / "cfg")
        names = []
        for i in range(10):
            noisy = (params * (1 + 0.05 * rng.standard_normal(params.size))).astype("<f4")
            (work / f"w{i}.weights").write_bytes(header + noisy.tobytes())
            names.append(f"w{i}.weights")
        args = ["aggregation", "darknet", "cfg/mnist_lenet.cfg", "out.weights", *names]
        wasmtime = wasmtime_run(ROOT / "dl-server.wasm")
        subprocess.run(wasmtime + ["frobnicate"], cwd=work, capture_output=True)  # compile into the cache
        # The aggregation is ~10x shorter than the start-up, and the machine is noisy: time
        # start-up-only and aggregation runs in pairs and take the median of the differences.
        wholes, inside = [], []
        for _ in range(max(runs, 9)):
            startup, _ = median_seconds(wasmtime + ["frobnicate"], 1, work)
            wasm, result = median_seconds(wasmtime + args, 1, work)
            if result.returncode != 0:
                sys.exit(f"bench: aggregation failed:\n{result.stderr[-2000:]}")
            wholes.append(wasm)
            inside.append(wasm - startup)
        wasm = statistics.median(wholes)
        in_wasm = (work / "out.weights").read_bytes()
        native_cmd, env = native_run(args)
        native, _ = median_seconds(native_cmd, max(runs, 5), work, env)
        same = (work / "out.weights").read_bytes() == in_wasm
        times = []
        for _ in range(max(runs, 5)):
            t = time.perf_counter()
            stack = np.stack([np.fromfile(work / n, dtype="<f4", offset=20) for n in names])
            np.mean(stack, axis=0, dtype=np.float32)
            times.append(time.perf_counter() - t)
    return [
        ("aggregation darknet, 10 LeNet files: whole (s)", wasm, "component, wasmtime CLI"),
        (
            "aggregation darknet, 10 LeNet files: inside (s)",
            statistics.median(inside),
            "in the component; target <= 0.3 (median of paired differences)",
        ),
        (
            "aggregation darknet, 10 LeNet files: native (s)",
            native,
            "baseline: the guest natively, CPython process"
            + ("; same bytes" if same else "; OUTPUT DIFFERS"),
        ),
        (
            "aggregation darknet, 10 LeNet files: numpy (s)",
            statistics.median(times),
            "reference: numpy mean in-process",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    opts = parser.parse_args()
    rows = bench_valid(opts.runs) + bench_detect(max(opts.runs, 5)) + bench_aggregation(opts.runs)
    print(f"machine: {os.cpu_count()} cores, {os.uname().machine}, load average {os.getloadavg()[0]:.1f}")
    print(f"{'measure':48s} {'value':>10s}  note")
    for name, value, note in rows:
        print(f"{name:48s} {value:10.3f}  {note}")
    sys.stdout.flush()
    for script in ("bench_gemm.py", "bench_train.py"):
        print(flush=True)
        subprocess.run([sys.executable, str(ROOT / "scripts" / script)], cwd=ROOT, check=True)


if __name__ == "__main__":
    main()
