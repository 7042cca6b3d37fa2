"""Benchmark `_dlk.gemm` inside the WASI component (wasmtime) against native numpy.

    .venv/bin/python scripts/bench_gemm.py                  # all cases, median of 7 samples
    .venv/bin/python scripts/bench_gemm.py --quick          # 256^3 only
    .venv/bin/python scripts/bench_gemm.py --stat min       # best sample: steadier on a busy machine
    .venv/bin/python scripts/bench_gemm.py --blas-threads 1 # single-threaded OpenBLAS baseline
    .venv/bin/python scripts/bench_gemm.py --case NN,64,64,64 --case NT,16,27,173056

What it does:
  1. builds build/wasm/_dlk.abi3.so and build/native/_dlk.abi3.so (scripts/build_kernels.py);
  2. builds a tiny bench component (componentize-py, world `dl-server` from wit/) whose app
     module imports `_dlk`; the component is cached in build/bench/ keyed by the hash of the
     app source and the kernel library, so a rerun with unchanged kernels starts at once;
  3. runs it under `wasmtime -C cache=y` with a temporary directory preopened as /bench: the
     cases come in as /bench/cases.json, one JSON line per case comes back on stdout;
  4. times numpy (np.matmul, OpenBLAS, float32) on the same shapes in this process, and runs
     the native `_dlk` once per case to check that the component computed the same bits.

Every case runs C = op(A) op(B) with alpha 1, beta 0 on deterministic data (op = NN: A is
MxK, B is KxN; NT: B is NxK; TN: A is KxM); GF/s = 2*M*N*K / seconds per call, taking the
median (or --stat min) over --reps samples, each sample timing enough calls to last about
--min-time seconds. "ratio" is wasm / numpy.

`--lib DIR --native-lib DIR --func A,B,...` benchmarks another build of the extension (a
`_dlk.abi3.so` in DIR) and functions of it with gemm's signature; several functions take
turns sample by sample, so kernel variants can be compared on a busy machine.
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

from bench_common import BENCH, ROOT, build_kernels, component, wasmtime_exe

# (op, M, N, K, where the shape comes from). Darknet's calls: conv forward NN (M filters,
# N out_h*out_w, K c*size*size); conv weight gradient NT (M filters, N c*size*size,
# K out_h*out_w); conv input gradient TN (M c*size*size, N out_h*out_w, K filters);
# connected forward NT (M batch, N outputs, K inputs); connected weight gradient TN
# (M outputs, N inputs, K batch); connected input gradient NN (M batch, N inputs, K outputs).
CASES = [
    ("NN", 256, 256, 256, "square"),
    ("NT", 256, 256, 256, "square"),
    ("TN", 256, 256, 256, "square"),
    ("NN", 6, 784, 75, "brief's LeNet-like shape"),
    ("NN", 6, 784, 25, "lenet conv1 fwd (28x28x1 -> 6, 5x5)"),
    ("NN", 6, 196, 150, "lenet conv2 fwd (14x14x6 -> 6, 5x5)"),
    ("NT", 6, 25, 784, "lenet conv1 weight grad"),
    ("NT", 6, 150, 196, "lenet conv2 weight grad"),
    ("TN", 150, 196, 6, "lenet conv2 input grad"),
    ("NT", 100, 120, 294, "lenet fc1 fwd, batch 100"),
    ("TN", 120, 294, 100, "lenet fc1 weight grad"),
    ("NN", 100, 294, 120, "lenet fc1 input grad"),
    ("NN", 16, 173056, 27, "yolov3-tiny conv0 fwd (416x416x3 -> 16)"),
    ("NN", 256, 676, 1152, "yolov3-tiny 26x26x128 -> 256 fwd"),
    ("NT", 16, 27, 173056, "yolov3-tiny conv0 weight grad"),
    ("NT", 256, 1152, 676, "yolov3-tiny 26x26 weight grad"),
    ("TN", 1152, 676, 256, "yolov3-tiny 26x26 input grad"),
]

# Runs inside the component. Data: a fixed pattern of 2003 floats in [-0.5, 0.5), tiled.
APP = r'''
import array, hashlib, json, time
import _dlk
from wit_world import exports

PATTERN = [((i * 7919) % 2003) / 2003.0 - 0.5 for i in range(2003)]

def data(n, shift):
    base = array.array("f", PATTERN[shift:] + PATTERN[:shift])
    return (base * (n // 2003 + 1))[:n]

def layout(op, M, N, K):
    """(lda, ldb) of the row-major operands for op = NN, NT, TN, TT."""
    lda = M if op[0] == "T" else K
    ldb = K if op[1] == "T" else N
    return lda, ldb

class Run(exports.Run):
    def run(self) -> None:
        with open("/bench/cases.json") as f:
            cfg = json.load(f)
        funcs = [getattr(_dlk, name) for name in cfg["funcs"]]
        for op, M, N, K in cfg["cases"]:
            ta, tb = int(op[0] == "T"), int(op[1] == "T")
            lda, ldb = layout(op, M, N, K)
            A, B, C = data(M * K, 0), data(K * N, 1000), array.array("f", bytes(4 * M * N))
            calls, samples, digests = [], [], []
            for gemm in funcs:
                t0 = time.perf_counter()
                gemm(ta, tb, M, N, K, 1.0, A, lda, B, ldb, 0.0, C, N)
                once = time.perf_counter() - t0
                digests.append(hashlib.sha256(C).hexdigest())
                calls.append(max(1, int(cfg["min_time"] / max(once, 1e-7))))
                samples.append([])
            # Functions take turns sample by sample, so a busy machine slows them alike.
            for _ in range(cfg["reps"]):
                for f, gemm in enumerate(funcs):
                    t0 = time.perf_counter()
                    for _ in range(calls[f]):
                        gemm(ta, tb, M, N, K, 1.0, A, lda, B, ldb, 0.0, C, N)
                    samples[f].append((time.perf_counter() - t0) / calls[f])
            for f, name in enumerate(cfg["funcs"]):
                xs = sorted(samples[f])
                print(json.dumps({"func": name, "op": op, "M": M, "N": N, "K": K, "median": xs[len(xs) // 2],
                                  "min": xs[0], "sha256": digests[f]}), flush=True)
'''


def bench_component(lib: Path) -> Path:
    """The bench component for the `_dlk.abi3.so` in `lib`, built once per (app, library)."""
    so = lib / "_dlk.abi3.so"
    key = hashlib.sha256(APP.encode() + so.read_bytes()).hexdigest()[:16]
    with tempfile.TemporaryDirectory() as app_dir:
        (Path(app_dir) / "app.py").write_text(APP)
        return component("bench", key, [Path(app_dir), lib], keep=4)


def run_component(wasm: Path, cases, funcs: list, reps: int, min_time: float) -> list:
    with tempfile.TemporaryDirectory(dir=BENCH) as run_dir:
        (Path(run_dir) / "cases.json").write_text(
            json.dumps({"funcs": funcs, "reps": reps, "min_time": min_time, "cases": [c[:4] for c in cases]})
        )
        proc = subprocess.run(
            [str(wasmtime_exe()), "run", "-C", "cache=y", f"--dir={run_dir}::/bench", str(wasm)],
            capture_output=True,
            text=True,
        )
    if proc.returncode != 0:
        sys.exit(f"bench component failed ({proc.returncode}):\n{proc.stderr}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def host_data(np, n: int, shift: int):
    pattern = [((i * 7919) % 2003) / 2003.0 - 0.5 for i in range(2003)]
    base = np.array(pattern[shift:] + pattern[:shift], dtype=np.float32)
    return np.tile(base, n // 2003 + 1)[:n].copy()


def numpy_seconds(np, op, M, N, K, reps, min_time, stat):
    A, B = host_data(np, M * K, 0), host_data(np, K * N, 1000)
    a = A.reshape(K, M).T if op[0] == "T" else A.reshape(M, K)
    b = B.reshape(N, K).T if op[1] == "T" else B.reshape(K, N)
    out = np.empty((M, N), dtype=np.float32)

    def call():
        return np.matmul(a, b, out=out)

    t0 = time.perf_counter()
    call()
    once = time.perf_counter() - t0
    calls = max(1, int(min_time / max(once, 1e-7)))
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(calls):
            call()
        samples.append((time.perf_counter() - t0) / calls)
    samples.sort()
    return samples[0] if stat == "min" else samples[len(samples) // 2]


def native_sha(dlk, np, op, M, N, K, func):
    A, B = host_data(np, M * K, 0), host_data(np, K * N, 1000)
    C = np.zeros(M * N, dtype=np.float32)
    lda = M if op[0] == "T" else K
    ldb = K if op[1] == "T" else N
    getattr(dlk, func)(int(op[0] == "T"), int(op[1] == "T"), M, N, K, 1.0, A, lda, B, ldb, 0.0, C, N)
    return hashlib.sha256(C.tobytes()).hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="only the 256^3 cases")
    ap.add_argument("--ops", default="NN,NT,TN", help="comma-separated subset of NN,NT,TN,TT")
    ap.add_argument(
        "--case",
        action="append",
        default=[],
        metavar="OP,M,N,K",
        help="benchmark this shape instead of the built-in list (repeatable), e.g. NN,64,64,64",
    )
    ap.add_argument("--reps", type=int, default=7, help="samples per case")
    ap.add_argument("--min-time", type=float, default=0.02, help="seconds per sample, at least")
    ap.add_argument(
        "--stat",
        choices=["median", "min"],
        default="median",
        help="statistic over the samples (min is steadier on a busy machine)",
    )
    ap.add_argument("--blas-threads", type=int, help="OpenBLAS threads for the numpy baseline")
    ap.add_argument("--lib", type=Path, help="directory of another _dlk.abi3.so (wasm) to benchmark")
    ap.add_argument("--native-lib", type=Path, help="directory of the matching native _dlk.abi3.so")
    ap.add_argument(
        "--func",
        default="gemm",
        help="function(s) of _dlk with gemm's signature, comma-separated; they take turns",
    )
    ap.add_argument("--no-numpy", action="store_true", help="skip the numpy baseline")
    args = ap.parse_args()
    if args.blas_threads:
        os.environ["OPENBLAS_NUM_THREADS"] = str(args.blas_threads)
    import numpy as np

    ops = set(args.ops.split(","))
    cases = [c for c in CASES if c[0] in ops and (not args.quick or c[1:4] == (256, 256, 256))]
    if "TT" in ops:
        cases.append(("TT", 256, 256, 256, "square"))
    if args.case:
        cases = []
        for spec in args.case:
            op, *dims = spec.split(",")
            cases.append((op.upper(), *map(int, dims), "--case"))
    if args.lib is None:
        build_kernels()
    lib = args.lib or ROOT / "build" / "wasm"
    native_lib = args.native_lib or (None if args.lib else ROOT / "build" / "native")
    dlk: ModuleType | None = None
    if native_lib is not None:
        sys.path.insert(0, str(native_lib))
        import _dlk as dlk

    funcs = args.func.split(",")
    t0 = time.perf_counter()
    wasm = bench_component(lib)
    results = run_component(wasm, cases, funcs, args.reps, args.min_time)
    print(
        f"component {wasm.name} ({lib / '_dlk.abi3.so'}); {args.stat} of {args.reps} samples of >= "
        f"{args.min_time}s each; wasm build+run {time.perf_counter() - t0:.1f}s; numpy {np.__version__}, "
        f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'default')}, {os.cpu_count()} cpus; "
        f"GF/s = 2*M*N*K / seconds per call"
    )
    head = "".join(f" {f[:10]:>10}" for f in funcs)
    print(f"{'op':3} {'M':>5} {'N':>7} {'K':>7} {head} {'numpy':>7} {'ratio':>6}  {'bits=native':>11}  case")
    by_case: dict[tuple, dict[str, dict]] = {}  # (op, M, N, K) -> func -> result
    for res in results:
        by_case.setdefault((res["op"], res["M"], res["N"], res["K"]), {})[res["func"]] = res
    for op, M, N, K, what in cases:
        row = by_case.get((op, M, N, K), {})
        if len(row) != len(funcs):
            continue
        flops = 2.0 * M * N * K
        gfs = [flops / row[f][args.stat] / 1e9 for f in funcs]
        if args.no_numpy:
            np_gf = ratio = float("nan")
        else:
            np_gf = flops / numpy_seconds(np, op, M, N, K, args.reps, args.min_time, args.stat) / 1e9
            ratio = gfs[0] / np_gf
        if dlk is None:
            same = "-"
        else:
            same = "".join(
                "y" if native_sha(dlk, np, op, M, N, K, f) == row[f]["sha256"] else "N" for f in funcs
            )
            same = "yes" if set(same) == {"y"} else same
        cols = "".join(f" {g:10.2f}" for g in gfs)
        print(f"{op:3} {M:5d} {N:7d} {K:7d} {cols} {np_gf:7.2f} {ratio:6.2f}  {same:>11}  {what}")
    if len(results) != len(cases) * len(funcs):
        sys.exit(f"only {len(results)} of {len(cases) * len(funcs)} results reported")


if __name__ == "__main__":
    main()
