"""`make bench`: speed of dl-server inside the component against baselines run in the
same command (the machine is shared and noisy: medians of several runs, and ratios).

    .venv/bin/python scripts/bench.py                    # this checkout's dl-server.wasm
    .venv/bin/python scripts/bench.py --baseline REV     # and the component of commit REV, side by side
    make bench BASELINE=REV                              # the same

With --baseline, every row that depends on the component is measured for both, their runs
taking turns (so load on the machine falls on both alike), and printed in two columns with
their ratio. REV's component is built from REV's own guest/ and scripts/build_kernels.py
(kept in build/bench/). Rows of the `dl-server` host against the wasmtime CLI (same
component, same files) come last.

Needs MNIST prepared (make mnist_training) and the seed's trained LeNet weights
(model/mnist_lenet.weights, copied from ../shared/seed/files/model/ when absent).
"""

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench_common import ROOT, VENV_BIN, baseline_component, native_run, wasmtime_exe, wasmtime_run
from dlserver_host.darknet_output import last_top_line, predicted_line
from dlserver_tools.darknet_cfg import set_option

SEED_WEIGHTS = ROOT.parent / "shared" / "seed" / "files" / "model" / "mnist_lenet.weights"
NOW = "now"

# (name, {component tag: value}, note); rows measured once carry only NOW.
Row = tuple[str, dict[str, float], str]


def timed(
    cmd: list[str], cwd: Path, env: dict[str, str] | None = None
) -> tuple[float, subprocess.CompletedProcess]:
    """Wall seconds and result of one run; exits on a crash (status 1 is a dl-server error line, allowed)."""
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode not in (0, 1):
        sys.exit(f"bench: {' '.join(map(str, cmd))} failed:\n{result.stderr[-2000:]}")
    return seconds, result


def taking_turns(
    cmds: dict[str, list[str]],
    runs: int,
    cwd: Path,
    env: dict[str, str] | None = None,
    cpu: dict[str, float] | None = None,
) -> tuple[dict[str, float], dict[str, subprocess.CompletedProcess]]:
    """Median wall seconds of each command, the commands run in turn `runs` times (order rotating);
    with `cpu`, the median CPU seconds (user + system) of each go there."""
    times: dict[str, list[float]] = {tag: [] for tag in cmds}
    cpu_times: dict[str, list[float]] = {tag: [] for tag in cmds}
    last: dict[str, subprocess.CompletedProcess] = {}
    tags = list(cmds)
    for i in range(runs):
        for tag in tags[i % len(tags) :] + tags[: i % len(tags)]:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            seconds, last[tag] = timed(cmds[tag], cwd, env)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            times[tag].append(seconds)
            cpu_times[tag].append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    if cpu is not None:
        cpu.update({tag: statistics.median(ts) for tag, ts in cpu_times.items()})
    return {tag: statistics.median(ts) for tag, ts in times.items()}, last


def alternating(
    wasms: dict[str, Path], runs: int, measure: Callable[[str, Path], tuple[float, ...]]
) -> list[dict[str, float]]:
    """measure(tag, wasm) `runs` times for each component, the components taking turns: for
    each of the values measure returns, its median for each component."""
    samples: dict[str, list[tuple[float, ...]]] = {tag: [] for tag in wasms}
    for _ in range(runs):
        for tag, wasm in wasms.items():
            samples[tag].append(measure(tag, wasm))
    values = len(next(iter(samples.values()))[0])
    return [{tag: statistics.median(s[i] for s in ss) for tag, ss in samples.items()} for i in range(values)]


def seed_weights() -> str:
    """The seed's trained weights under model/ (make demo overwrites model/mnist_lenet.weights)."""
    weights = "model/mnist_lenet.weights"
    if SEED_WEIGHTS.exists():
        weights = "model/seed_mnist_lenet.weights"
        shutil.copy(SEED_WEIGHTS, ROOT / weights)
    elif not (ROOT / weights).exists():
        sys.exit("bench: model/mnist_lenet.weights missing and no seed copy in ../shared")
    if not (ROOT / "data" / "mnist" / "mnist.valid.list").exists():
        sys.exit("bench: MNIST not prepared: run make mnist_training")
    return weights


def bench_valid(wasms: dict[str, Path], runs: int) -> list[Row]:
    """classifier valid on the 10000 MNIST test images: component(s) vs native guest."""
    args = ["classifier", "valid", "cfg/mnist.dataset", "cfg/mnist_lenet.cfg", seed_weights()]
    for wasm in wasms.values():
        timed(wasmtime_run(wasm) + ["frobnicate"], ROOT)  # compile into the cache
    startup, _ = taking_turns({t: wasmtime_run(w) + ["frobnicate"] for t, w in wasms.items()}, runs, ROOT)
    whole, results = taking_turns({t: wasmtime_run(w) + args for t, w in wasms.items()}, runs, ROOT)
    inside = {t: whole[t] - startup[t] for t in wasms}
    top = last_top_line(results[NOW].stdout)
    native_cmd, env = native_run(args)
    native, _ = taking_turns({NOW: native_cmd}, runs, ROOT, env)
    return [
        ("valid 10k: component, whole run (s)", whole, f"top 1: {top.top1:f}" if top else "no top line"),
        ("valid 10k: component start-up only (s)", startup, "wasmtime start + guest init"),
        ("valid 10k: inside the component (s)", inside, "target <= 1.5"),
        ("valid 10k: guest natively, CPython 3.11 (s)", native, "baseline"),
        ("valid 10k: component / native", {NOW: inside[NOW] / native[NOW]}, "ratio"),
    ]


def bench_detect(wasms: dict[str, Path], runs: int) -> list[Row]:
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

    def detect(tag: str, wasm: Path) -> tuple[float, float]:
        seconds, result = timed(wasmtime_run(wasm) + args, ROOT)
        predicted = [p for p in map(predicted_line, result.stdout.splitlines()) if p]
        if result.returncode != 0 or not predicted:
            sys.exit(f"bench: detect failed:\n{result.stderr[-2000:]}")
        return predicted[0].seconds, seconds

    forward, whole = alternating(wasms, runs, detect)
    return [
        ("detect dog.jpg: forward in the component (s)", forward, "target <= 0.40"),
        ("detect dog.jpg: component, whole run (s)", whole, "target <= 1.5"),
    ]


def bench_aggregation(wasms: dict[str, Path], runs: int) -> list[Row]:
    """aggregation darknet of 10 LeNet weights files (the seed's, perturbed): component vs native."""
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
        # The aggregation is ~10x shorter than the start-up, and the machine is noisy: time
        # start-up-only and aggregation runs in pairs and take the median of the differences.
        outputs: dict[str, bytes] = {}

        def aggregate(tag: str, wasm: Path) -> tuple[float, float]:
            startup, _ = timed(wasmtime_run(wasm) + ["frobnicate"], work)
            whole, result = timed(wasmtime_run(wasm) + args, work)
            if result.returncode != 0:
                sys.exit(f"bench: aggregation failed:\n{result.stderr[-2000:]}")
            outputs[tag] = (work / "out.weights").read_bytes()
            return whole, whole - startup

        wholes, inside = alternating(wasms, max(runs, 9), aggregate)
        native_cmd, env = native_run(args)
        native, _ = taking_turns({NOW: native_cmd}, max(runs, 5), work, env)
        same = all(out == (work / "out.weights").read_bytes() for out in outputs.values())
        times = []
        for _ in range(max(runs, 5)):
            start = time.perf_counter()
            stack = np.stack([np.fromfile(work / n, dtype="<f4", offset=20) for n in names])
            np.mean(stack, axis=0, dtype=np.float32)
            times.append(time.perf_counter() - start)
    return [
        (
            "aggregation darknet, 10 LeNet files: whole (s)",
            wholes,
            "component, wasmtime CLI",
        ),
        (
            "aggregation darknet, 10 LeNet files: inside (s)",
            inside,
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
            {NOW: statistics.median(times)},
            "reference: numpy mean in-process",
        ),
    ]


def link_tree(work: Path, list_file: Path, base_cfg: Path) -> None:
    """Hard links (copies across file systems) of the images named in list_file, under work/."""
    for line in list_file.read_text().split():
        source, target = ROOT / line, work / line
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, target)
        except OSError:
            shutil.copy(source, target)
    (work / "cfg").mkdir(exist_ok=True)
    shutil.copy(base_cfg, work / "cfg")


def bench_host(wasm: Path, runs: int, batches: int) -> list[Row]:
    """The `dl-server` host against `wasmtime run --dir=./`: the same component on the same files."""
    host = [str(VENV_BIN / "dl-server"), "--no-progress", "--program", str(wasm)]
    weights = seed_weights()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-host-", dir=ROOT / "build") as tmp:
        work = Path(tmp) / "work"
        # Compile caches of their own for the CLI and the host ($XDG_CACHE_HOME/wasmtime and
        # /dl-server): in the shared ones, other checkouts' components push this one out (the
        # CLI's holds ~1 GiB), and a run that compiles again takes 10 s instead of 1.
        env = dict(os.environ, XDG_CACHE_HOME=str(Path(tmp) / "cache"))
        data = ROOT / "data" / "mnist"
        link_tree(work, data / "mnist.valid.list", ROOT / "cfg" / "mnist_lenet.cfg")
        link_tree(work, data / "mnist.train.list", ROOT / "cfg" / "mnist_lenet.cfg")
        for name in ("mnist.valid.list", "mnist.train.list", "mnist.labels.list", "mnist.names.list"):
            shutil.copy(data / name, work / "data" / "mnist" / name)
        (work / "model").mkdir()
        shutil.copy(ROOT / weights, work / "model" / "lenet.weights")
        dataset = set_option((ROOT / "cfg" / "mnist.dataset").read_text(), "backup", "backup")
        (work / "cfg" / "mnist.dataset").write_text(dataset)
        cfg = set_option((ROOT / "cfg" / "mnist_lenet.cfg").read_text(), "max_batches", batches)
        (work / "cfg" / "train.cfg").write_text(cfg)
        (work / "backup").mkdir()
        rows += bench_file_reads(work, runs, env)
        valid = ["classifier", "valid", "cfg/mnist.dataset", "cfg/mnist_lenet.cfg", "model/lenet.weights"]
        train = ["classifier", "train", "cfg/mnist.dataset", "cfg/train.cfg", "-seed", "1"]
        cases = [
            ("start-up", ["frobnicate"], ["-i", "args.cfg"]),  # the guest's usage error: exit 1
            ("valid 10k", valid, ["-i", "args.cfg", "cfg", "model", "data"]),
            (f"train {batches} batches", train, ["-i", "args.cfg", "cfg", "data", "-o", "backup"]),
        ]
        detect = detect_tree(work)
        if detect:
            cases.append(("detect dog.jpg", detect, ["-i", "args.cfg", "cfg", "model", "data", "-o", "out"]))
        for name, args, sources in cases:
            (work / "args.cfg").write_text("".join(f"{a}\n" for a in args))
            # the host's default engine (auto: the CLI behind Landlock, where available) and the
            # in-process one (wasmtime-py), docs/host-io.md
            cmds = {
                "cli": wasmtime_run(wasm),
                "host": host + sources,
                "inprocess": host + ["--engine", "inprocess"] + sources,
            }
            for cmd in cmds.values():
                timed(cmd, work, env)  # compile caches, page cache
            cpu: dict[str, float] = {}
            medians, results = taking_turns(cmds, runs, work, env, cpu)
            failed = [tag for tag, r in results.items() if r.returncode != (1 if name == "start-up" else 0)]
            outputs = {tag: without_timings(r.stdout) for tag, r in results.items()}
            if failed or (
                args is not train and not outputs["cli"] == outputs["host"] == outputs["inprocess"]
            ):
                sys.exit(
                    f"bench: {name}: failed, or the host and the CLI disagree:\n"
                    f"{results['host'].stderr[-2000:]}"
                )
            note = "each from its compile cache" if name == "start-up" else "target <= 1.15"
            rows += [
                (f"{name}: wasmtime CLI, whole run (s)", {NOW: medians["cli"]}, "wasmtime run --dir=./"),
                (f"{name}: dl-server host, whole run (s)", {NOW: medians["host"]}, "--input-source ..."),
                (f"{name}: host / CLI", {NOW: medians["host"] / medians["cli"]}, note),
                (
                    f"{name}: host / CLI, CPU time",
                    {NOW: cpu["host"] / cpu["cli"]},
                    f"user + system: {cpu['host']:.2f} s / {cpu['cli']:.2f} s (less sensitive to load)",
                ),
                (
                    f"{name}: host --engine inprocess / CLI",
                    {NOW: medians["inprocess"] / medians["cli"]},
                    f"CPU time {cpu['inprocess'] / cpu['cli']:.3f} (wasmtime-py, the fallback)",
                ),
            ]
    return rows


def without_timings(stdout: str) -> list[str]:
    """The lines of a run's stdout but detect's "Predicted in S seconds." (the rest must agree)."""
    return [line for line in stdout.splitlines() if not predicted_line(line)]


def detect_tree(work: Path) -> list[str]:
    """Add YOLOv3-tiny, dog.jpg and coco.names to the bench tree; detect's arguments (none
    without make yolo_detection)."""
    weights, image = ROOT / "model" / "yolov3-tiny.weights", ROOT / "data" / "dog.jpg"
    if not weights.exists() or not image.exists():
        print("bench: host detect rows skipped (run make yolo_detection)", file=sys.stderr)
        return []
    for name in ("model/yolov3-tiny.weights", "data/dog.jpg", "data/coco.names"):
        try:
            os.link(ROOT / name, work / name)
        except OSError:
            shutil.copy(ROOT / name, work / name)
    for name in ("yolov3-tiny.cfg", "coco.data"):
        shutil.copy(ROOT / "cfg" / name, work / "cfg" / name)
    (work / "out").mkdir()
    return ["detect", "cfg/yolov3-tiny.cfg", "model/yolov3-tiny.weights", "data/dog.jpg", "-out", "out/dog"]


def bench_file_reads(work: Path, runs: int, env: dict[str, str]) -> list[Row]:
    """open, pread, close of each of the 10000 MNIST test PNGs by a trivial C guest
    (scripts/wasi_file_reads.c), the wasmtime CLI against wasmtime-py: the cost of WASI file
    access in wasmtime-py itself, without dl-server's host or guest (docs/host-io.md). The cost
    per file is the difference to a run on an empty list (start-up), over the 10000 files."""
    tool = ROOT / "scripts" / "wasi_file_reads.py"
    guest = subprocess.run([sys.executable, str(tool), "build"], check=True, capture_output=True, text=True)
    files = "data/mnist/mnist.valid.list"
    count = len((work / files).read_text().split())
    (work / "empty.list").write_text("")
    cli = [str(wasmtime_exe()), "run", "-C", "cache=y", "--dir=./", guest.stdout.strip()]
    py = [sys.executable, str(tool), "run"]
    cmds = {
        "cli": cli + [files],
        "py": py + [files],
        "cli0": cli + ["empty.list"],
        "py0": py + ["empty.list"],
    }
    for cmd in cmds.values():
        timed(cmd, work, env)
    medians, results = taking_turns(cmds, runs, work, env)
    if any(r.returncode for r in results.values()) or results["cli"].stdout != results["py"].stdout:
        sys.exit(f"bench: file reads: failed, or wasmtime-py and the CLI disagree:\n{results['py'].stderr}")
    per_file = {tag: (medians[tag] - medians[tag + "0"]) / count * 1e6 for tag in ("cli", "py")}
    name = "file reads (C guest)"
    return [
        (
            f"{name}, 10k: wasmtime CLI (s)",
            {NOW: medians["cli"]},
            "open+pread+close each; " + results["cli"].stdout.strip(),
        ),
        (
            f"{name}, 10k: wasmtime-py (s)",
            {NOW: medians["py"]},
            "same guest in wasmtime-py, no dl-server code",
        ),
        (f"{name}: CLI per file (us)", {NOW: per_file["cli"]}, "minus a run on an empty list"),
        (
            f"{name}: wasmtime-py per file (us)",
            {NOW: per_file["py"]},
            "tokio blocking pool: 2 hand-offs a file",
        ),
        (
            f"{name}: py / CLI per file",
            {NOW: per_file["py"] / per_file["cli"]},
            "the cost of wasmtime-py's WASI",
        ),
    ]


def print_rows(rows: list[Row], tags: list[str]) -> None:
    if len(tags) == 1:
        print(f"{'measure':48s} {'value':>10s}  note")
        for name, values, note in rows:
            print(f"{name:48s} {values[NOW]:10.3f}  {note}")
        return
    base = tags[1]
    print(f"{'measure':48s} {'now':>10s} {base:>10s} {'now/base':>9s}  note")
    for name, values, note in rows:
        if base in values:
            print(
                f"{name:48s} {values[NOW]:10.3f} {values[base]:10.3f} "
                f"{values[NOW] / values[base]:9.2f}  {note}"
            )
        else:
            print(f"{name:48s} {values[NOW]:10.3f} {'':10s} {'':9s}  {note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--baseline", metavar="REV", help="also measure the component of this commit")
    parser.add_argument("--host-batches", type=int, default=300, help="training batches of the host rows")
    opts = parser.parse_args()
    wasms = {NOW: ROOT / "dl-server.wasm"}
    if opts.baseline:
        wasms[opts.baseline] = baseline_component(opts.baseline)
    rows = (
        bench_valid(wasms, opts.runs)
        + bench_detect(wasms, max(opts.runs, 5))
        + bench_aggregation(wasms, opts.runs)
    )
    print(f"machine: {os.cpu_count()} cores, {os.uname().machine}, load average {os.getloadavg()[0]:.1f}")
    print_rows(rows, list(wasms))
    print(flush=True)
    host_rows = bench_host(wasms[NOW], max(opts.runs, 5), opts.host_batches)
    print(
        f"host: medians of {max(opts.runs, 5)} runs each, taking turns, load average {os.getloadavg()[0]:.1f}"
    )
    print_rows(host_rows, [NOW])
    sys.stdout.flush()
    baseline = ["--baseline", opts.baseline] if opts.baseline else []
    scripts: tuple[tuple[str, list[str]], ...] = (
        ("bench_gemm.py", []),
        ("bench_train.py", baseline),
        ("bench_zoo.py", []),
        ("bench_rules.py", []),
        ("bench_fast.py", []),
    )
    for script, extra in scripts:
        print(flush=True)
        subprocess.run([sys.executable, str(ROOT / "scripts" / script), *extra], cwd=ROOT, check=True)


if __name__ == "__main__":
    main()
