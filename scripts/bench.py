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

ROOT = Path(__file__).resolve().parent.parent
SEED_WEIGHTS = ROOT.parent / "shared" / "seed" / "files" / "model" / "mnist_lenet.weights"
VENV_BIN = Path(sys.executable).parent


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
    weights = ROOT / "model" / "mnist_lenet.weights"
    if not weights.exists():
        if not SEED_WEIGHTS.exists():
            sys.exit("bench: model/mnist_lenet.weights missing and no seed copy in ../shared")
        shutil.copy(SEED_WEIGHTS, weights)
    if not (ROOT / "data" / "mnist" / "mnist.valid.list").exists():
        sys.exit("bench: MNIST not prepared: run make mnist_training")
    args = ["classifier", "valid", "cfg/mnist.dataset", "cfg/mnist_lenet.cfg", "model/mnist_lenet.weights"]
    wasmtime = [str(VENV_BIN / "wasmtime"), "run", "-C", "cache=y", "--dir=./", str(ROOT / "dl-server.wasm")]
    subprocess.run(wasmtime + ["frobnicate"], cwd=ROOT, capture_output=True)  # compile into the cache
    startup, _ = median_seconds(wasmtime + ["frobnicate"], runs, ROOT)
    wasm, result = median_seconds(wasmtime + args, runs, ROOT)
    last = result.stdout.strip().splitlines()[-1]
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'guest'}:{ROOT / 'build' / 'native'}")
    native, _ = median_seconds([sys.executable, "-m", "dlserver.main", *args], runs, ROOT, env)
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
    args = ["detect", "cfg/yolov3-tiny.cfg", "model/yolov3-tiny.weights", "data/dog.jpg", "-out", "data/cache/bench"]
    (ROOT / "data" / "cache").mkdir(exist_ok=True)
    wasmtime = [str(VENV_BIN / "wasmtime"), "run", "-C", "cache=y", "--dir=./", str(ROOT / "dl-server.wasm")]
    forwards, wholes = [], []
    for _ in range(runs):
        t = time.perf_counter()
        result = subprocess.run(wasmtime + args, cwd=ROOT, capture_output=True, text=True)
        wholes.append(time.perf_counter() - t)
        if result.returncode != 0:
            sys.exit(f"bench: detect failed:\n{result.stderr[-2000:]}")
        forwards.append(float(result.stdout.split(" Predicted in ")[1].split()[0]))
    return [
        ("detect dog.jpg: forward in the component (s)", statistics.median(forwards), "target <= 0.40"),
        ("detect dog.jpg: component, whole run (s)", statistics.median(wholes), "target <= 1.5"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    opts = parser.parse_args()
    rows = bench_valid(opts.runs) + bench_detect(max(opts.runs, 5))
    print(f"machine: {os.cpu_count()} cores, {os.uname().machine}, load average {os.getloadavg()[0]:.1f}")
    print(f"{'measure':48s} {'value':>10s}  note")
    for name, value, note in rows:
        print(f"{name:48s} {value:10.3f}  {note}")
    sys.stdout.flush()
    gemm = ROOT / "scripts" / "bench_gemm.py"
    if gemm.exists():
        subprocess.run([sys.executable, str(gemm)], cwd=ROOT, check=True)


if __name__ == "__main__":
    main()
