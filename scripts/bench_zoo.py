"""`make bench`, model-zoo rows (issue 15): big Darknet networks forward in the component next to
native Darknet (Debian's `darknet` package: pjreddie's Darknet, CPU, single-threaded), same
machine, same run, the two taking turns; medians of --runs runs.

    .venv/bin/python scripts/bench_zoo.py [--runs N] [--nets resnet50,darknet53,yolov3]

Both sides load the same random weights (Darknet's own random init, saved by
tests/oracle/darknet_layers.c) and the same PNG image. Classifier rows time the whole
`classifier predict` (parse, weights, image, forward, top-5); the yolov3 rows time the whole
`detector test` / `detect` and, separately, the forward pass each prints ("Predicted in").
Skipped, with a note, where Debian's darknet or gcc is missing.
"""

import argparse
import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from array import array
from pathlib import Path

from PIL import Image

from bench_common import BENCH, ROOT, wasmtime_run

DARKNET = Path("/usr/bin/darknet")
LIBDARKNET = Path("/usr/lib/darknet/libdarknet.so")
DEBIAN = Path("/usr/share/darknet")
HARNESS = ROOT / "tests" / "oracle" / "darknet_layers.c"
ZOO = BENCH / "zoo"
# name -> (cfg, input size, kind)
NETS = {
    "resnet50": ("resnet50", 256, "classifier"),
    "darknet53": ("darknet53", 256, "classifier"),
    "yolov3": ("yolov3", 416, "detector"),
}
PREDICTED = re.compile(r"Predicted in ([0-9.]+) seconds")


def harness() -> Path:
    exe = ZOO / "darknet_layers"
    if not exe.exists() or exe.stat().st_mtime < HARNESS.stat().st_mtime:
        ZOO.mkdir(parents=True, exist_ok=True)
        include, lib = LIBDARKNET.parent / "include", LIBDARKNET.parent
        subprocess.run(
            ["gcc", "-O2", "-o", str(exe), str(HARNESS), f"-I{include}", f"-L{lib}", "-ldarknet",
             f"-Wl,-rpath,{lib}", "-lm"],
            check=True,
        )  # fmt: skip
    return exe


def silence_yolo_heads(cfg: Path, weights: Path) -> None:
    """Zero the convolution before each [yolo] layer and set its biases to -10: random weights
    would put hundreds of thousands of boxes over the threshold, and the rows are to time the
    network, not NMS and drawing (objectness becomes logistic(-10), no box is found)."""
    for path in (ROOT / "guest", ROOT / "build" / "native"):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    from dlserver.buffers import allow_for_weights
    from dlserver.layers.convolutional import ConvolutionalLayer
    from dlserver.network import parse_network_cfg
    from dlserver.weights import load_weights, save_weights

    allow_for_weights(str(weights))  # as the commands do: the budget grows with the weights file
    with open(os.devnull, "w") as quiet, contextlib.redirect_stderr(quiet):
        net = parse_network_cfg(str(cfg), batch=1)
    net.set_batch(1)
    load_weights(net, str(weights))
    for before, layer in zip(net.layers, net.layers[1:]):
        if layer.kind == "yolo" and isinstance(before, ConvolutionalLayer):
            before.weights[:] = array("f", bytes(len(before.weights) * 4))
            before.biases[:] = array("f", [-10.0] * len(before.biases))
    save_weights(net, str(weights))


def workspace(name: str) -> tuple[Path, str]:
    """ZOO/<name>/: the cfg at its bench size, Darknet's random weights, names, data cfgs, dog.png."""
    cfg_name, size, _ = NETS[name]
    work = ZOO / name
    cfg = f"{cfg_name}_{size}.cfg"
    work.mkdir(parents=True, exist_ok=True)
    text = (DEBIAN / "cfg" / f"{cfg_name}.cfg").read_text()
    text = re.sub(r"(?m)^(height|width)=\d+", rf"\g<1>={size}", text)
    (work / cfg).write_text(text)
    weights = work / f"{cfg_name}.weights"
    if not weights.exists():
        subprocess.run([str(harness()), str(work / cfg), str(weights), "-"], check=True, capture_output=True)
        silence_yolo_heads(work / cfg, weights)
    if not (work / "dog.png").exists():
        Image.open(DEBIAN / "data" / "dog.jpg").convert("RGB").save(work / "dog.png")
    shutil.copy(DEBIAN / "data" / "imagenet.shortnames.list", work / "names.list")
    shutil.copy(DEBIAN / "data" / "coco.names", work / "coco.names")
    (work / "in.data").write_text("classes=1000\nnames=names.list\ntop=5\n")
    (work / "cfg").mkdir(exist_ok=True)
    (work / "cfg" / "coco.data").write_text("classes=80\nnames=coco.names\n")
    (work / "native.data").write_text(f"classes=80\nnames={work / 'coco.names'}\n")
    return work, cfg


def commands(name: str, work: Path, cfg: str) -> dict[str, list[str]]:
    weights = f"{NETS[name][0]}.weights"
    if NETS[name][2] == "classifier":
        args = ["in.data", cfg, weights, "dog.png"]
        return {
            "component": wasmtime_run(ROOT / "dl-server.wasm") + ["classifier", "predict", *args],
            "darknet": [str(DARKNET), "classifier", "predict", *args],
        }
    args = [cfg, weights, "dog.png", "-out", "pred"]
    return {
        "component": wasmtime_run(ROOT / "dl-server.wasm") + ["detect", *args],
        "darknet": [str(DARKNET), "detector", "test", "native.data", *args],
    }


def bench_net(name: str, runs: int) -> list[tuple[str, float, float]]:
    work, cfg = workspace(name)
    cmds = commands(name, work, cfg)
    env = dict(os.environ, DL_SERVER_CLOCK="1")
    walls: dict[str, list[float]] = {tag: [] for tag in cmds}
    forward: dict[str, list[float]] = {tag: [] for tag in cmds}
    for cmd in cmds.values():  # compile cache, page cache
        subprocess.run(cmd, cwd=work, env=env, capture_output=True, check=True)
    for i in range(runs):
        for tag in list(cmds)[i % 2 :] + list(cmds)[: i % 2]:
            start = time.perf_counter()
            result = subprocess.run(cmds[tag], cwd=work, env=env, capture_output=True, text=True)
            walls[tag].append(time.perf_counter() - start)
            if result.returncode != 0:
                sys.exit(f"bench_zoo: {name} ({tag}) failed:\n{result.stderr[-2000:]}")
            match = PREDICTED.search(result.stdout + result.stderr)
            if match:
                forward[tag].append(float(match.group(1)))
    label = f"{name} {NETS[name][1]}"
    median = statistics.median
    rows = [(f"{label}: whole run (s)", median(walls["component"]), median(walls["darknet"]))]
    if all(forward.values()):
        rows.append((f"{label}: forward pass (s)", median(forward["component"]), median(forward["darknet"])))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--nets", default=",".join(NETS), help="comma-separated, of: " + ", ".join(NETS))
    opts = parser.parse_args()
    if not (DARKNET.exists() and LIBDARKNET.exists() and shutil.which("gcc")):
        print("model zoo: skipped (needs Debian's darknet package and gcc: apt-get install darknet)")
        return
    rows = []
    for name in opts.nets.split(","):
        rows += bench_net(name, opts.runs)
    print(f"model zoo: component vs native Darknet (Debian), medians of {opts.runs} runs taking turns")
    print(f"{'measure':40s} {'component':>10s} {'darknet':>10s} {'comp/dn':>8s}")
    for measure, comp, native in rows:
        print(f"{measure:40s} {comp:10.3f} {native:10.3f} {comp / native:8.2f}")


if __name__ == "__main__":
    main()
