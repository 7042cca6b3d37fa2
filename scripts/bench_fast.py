"""Exact against fast mode (`-fast`, docs/darknet-contract.md §10.5) in the component, in one run:
the two commands take turns, so load on the shared machine falls on both alike; medians, ratios.

    .venv/bin/python scripts/bench_fast.py              # make bench-fast; make bench runs it too
    .venv/bin/python scripts/bench_fast.py --runs 9 --batches 60

Rows (wasmtime CLI, `-C cache=y`, this checkout's dl-server.wasm):
  - detect dog.jpg with YOLOv3-tiny: the forward's seconds as the guest prints them
    ("Predicted in"), and the CPU seconds of the whole wasmtime process (less sensitive to load);
  - classifier train, LeNet on MNIST, batches of 100: median seconds per batch after 10 warm-up
    batches (the lines Darknet prints), pooled over the runs;
  - classifier valid on the 10000 MNIST test images: whole run minus a start-up-only run (an
    unknown command), medians of the paired differences, and both top-1 lines; the same for the
    CPU seconds (user + system).
Targets of the fast mode (issue 13): forward <= 0.12 s and >= 1.6x exact, <= 7 ms per batch,
valid <= 0.45 s inside the component.
"""

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_common import ROOT, wasmtime_run
from bench_train import write_configs
from dlserver_host.darknet_output import last_top_line, predicted_line, train_lines

MODES = {"exact": [], "fast": ["-fast"]}
WARMUP = 10


def timed(cmd: list[str]) -> tuple[float, float, subprocess.CompletedProcess]:
    """Wall and CPU seconds (user + system of the child) of one run; exits when it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    if result.returncode != 0 and cmd[-1] != "frobnicate":
        sys.exit(f"bench_fast: {' '.join(cmd)} failed:\n{result.stderr[-2000:]}")
    return wall, cpu, result


def turns(runs: int, measure) -> dict[str, list]:
    """measure(mode) `runs` times per mode, the modes taking turns (order alternating)."""
    samples: dict[str, list] = {mode: [] for mode in MODES}
    order = list(MODES)
    for i in range(runs):
        for mode in order if i % 2 == 0 else order[::-1]:
            samples[mode].append(measure(mode))
    return samples


def row(name: str, values: dict[str, float], note: str, fmt: str = "10.3f") -> None:
    ratio = values["exact"] / values["fast"] if values["fast"] else float("nan")
    print(f"{name:44s} {values['exact']:{fmt}} {values['fast']:{fmt}} {ratio:9.2f}x  {note}", flush=True)


def bench_detect(wasm: Path, runs: int) -> None:
    if not (ROOT / "model" / "yolov3-tiny.weights").exists() or not (ROOT / "data" / "dog.jpg").exists():
        print("bench_fast: detect skipped (run make yolo_detection)", file=sys.stderr)
        return
    (ROOT / "data" / "cache").mkdir(exist_ok=True)
    args = ["detect", "cfg/yolov3-tiny.cfg", "model/yolov3-tiny.weights", "data/dog.jpg"]

    def measure(mode: str) -> tuple[float, float]:
        _, cpu, result = timed(wasmtime_run(wasm) + args + ["-out", f"data/cache/bench-{mode}", *MODES[mode]])
        predicted = [p for p in map(predicted_line, result.stdout.splitlines()) if p]
        return predicted[0].seconds, cpu

    measure("fast")  # compile cache
    samples = turns(runs, measure)
    forward = {m: statistics.median(s[0] for s in ss) for m, ss in samples.items()}
    cpu = {m: statistics.median(s[1] for s in ss) for m, ss in samples.items()}
    row("detect dog.jpg: forward (s)", forward, "fast target <= 0.12 and >= 1.6x")
    row("detect dog.jpg: CPU of the whole run (s)", cpu, "user + system, start-up included")


def bench_train(wasm: Path, runs: int, batches: int) -> None:
    args = write_configs(batches)

    def measure(mode: str) -> list[float]:
        _, _, result = timed(wasmtime_run(wasm) + args + MODES[mode])
        return [batch.seconds for batch in train_lines(result.stdout)][WARMUP:]

    samples = turns(runs, measure)
    ms = {m: 1000 * statistics.median(t for s in ss for t in s) for m, ss in samples.items()}
    row(f"LeNet train, batch of 100 (ms), {batches} batches", ms, "fast target <= 7", "10.2f")


def bench_valid(wasm: Path, runs: int) -> None:
    args = [
        "classifier",
        "valid",
        "cfg/mnist.dataset",
        "cfg/mnist_lenet.cfg",
        "model/seed_mnist_lenet.weights",
    ]
    seed = ROOT.parent / "shared" / "seed" / "files" / "model" / "mnist_lenet.weights"
    if seed.exists():
        (ROOT / "model" / "seed_mnist_lenet.weights").write_bytes(seed.read_bytes())
    if not (ROOT / args[-1]).exists():
        print("bench_fast: valid skipped (no model/seed_mnist_lenet.weights)", file=sys.stderr)
        return
    tops: dict[str, str] = {}

    def measure(mode: str) -> tuple[float, float]:
        startup, startup_cpu, _ = timed(wasmtime_run(wasm) + ["frobnicate"])
        whole, cpu, result = timed(wasmtime_run(wasm) + args + MODES[mode])
        top = last_top_line(result.stdout)
        tops[mode] = f"{top.top1:.4f}" if top else "?"
        return whole - startup, cpu - startup_cpu

    samples = turns(runs, measure)
    inside = {m: statistics.median(s[0] for s in ss) for m, ss in samples.items()}
    row(
        "valid 10k: inside the component (s)",
        inside,
        f"fast target <= 0.45; top-1 {tops['exact']} / {tops['fast']}",
    )
    cpu = {m: statistics.median(s[1] for s in ss) for m, ss in samples.items()}
    row("valid 10k: CPU, whole run minus start-up (s)", cpu, "user + system (less sensitive to load)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--batches", type=int, default=40, help="training batches per run (10 warm-up)")
    opts = parser.parse_args()
    wasm = ROOT / "dl-server.wasm"
    load = os.getloadavg()[0]
    print(f"exact vs fast: medians of {opts.runs} runs each, taking turns; load average {load:.1f}")
    print(f"{'measure':44s} {'exact':>10s} {'fast':>10s} {'exact/fast':>10s}  note", flush=True)
    bench_detect(wasm, opts.runs)
    bench_train(wasm, opts.runs, opts.batches)
    bench_valid(wasm, opts.runs)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
