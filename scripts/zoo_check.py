"""`make zoo-check`: every network cfg of Debian's darknet package (pjreddie's Darknet, 45 cfgs in
/usr/share/darknet/cfg) in the component against the native `darknet` binary, same weights, same
PNG image (issue 15's acceptance):

- each cfg builds in dl-server.wasm;
- where it has an output layer, `classifier predict` (softmax) or `detect` (yolo, region,
  detection) prints what native `darknet classifier predict` / `detector test` prints. Detection
  lines are compared as sorted lists: boxes of equal probability leave do_nms_sort in the order
  of the C library's qsort, and we follow musl's (the original is wasm on musl), Debian glibc's.

Weights are Darknet's own random initialisation (tests/oracle/darknet_layers.c, musl's rand,
batch-norm rolling variance 1), then calibrated so outputs are not degenerate: the last weighted
layer before the output is scaled (its weights and biases, or its batch-norm scales and biases)
so the output layer's input has a standard deviation of TARGET_STD. That layer's activation is
linear, leaky or relu, so scaling it by a > 0 scales what it feeds by a.

    .venv/bin/python scripts/zoo_check.py [--only NAME,NAME] [--size N] [--thresh T]

Prints one line per cfg (ok / DIFFERENT / FAILED: reason) and exits 1 when any is not ok.
"""

import argparse
import contextlib
import math
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from bench_common import BENCH, ROOT, wasmtime_run

for _path in (ROOT / "guest", ROOT / "build" / "native"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
# the zoo's networks get random weights here, natively: the whole buffer limit, not the
# budget of a run without a weights file (in the component, the weights file raises it)
os.environ.setdefault("DL_SERVER_MAX_BUFFER_BYTES", str(3 << 30))

from dlserver.buffers import from_values  # noqa: E402
from dlserver.errors import DLServerError  # noqa: E402
from dlserver.network import parse_network_cfg  # noqa: E402
from dlserver.weights import load_weights, save_weights  # noqa: E402

DARKNET = Path("/usr/bin/darknet")
LIBDARKNET = Path("/usr/lib/darknet/libdarknet.so")
DEBIAN = Path("/usr/share/darknet")
HARNESS = ROOT / "tests" / "oracle" / "darknet_layers.c"
WORK = BENCH / "zoo-check"
TARGET_STD = 2.0
OBJECTNESS_SHIFT = 4.0
DETECTOR_KINDS = ("yolo", "region", "detection")
TOP_LINE = re.compile(r"^\s*[0-9.]+%: ")


@dataclass
class Outcome:
    name: str
    status: str  # ok, built (no output layer to compare), known (KNOWN_DIFFERENCES), DIFFERENT, FAILED
    detail: str = ""


def harness() -> Path:
    exe = WORK / "darknet_layers"
    if not exe.exists() or exe.stat().st_mtime < HARNESS.stat().st_mtime:
        WORK.mkdir(parents=True, exist_ok=True)
        lib = LIBDARKNET.parent
        subprocess.run(
            ["gcc", "-O2", "-o", str(exe), str(HARNESS), f"-I{lib / 'include'}", f"-L{lib}", "-ldarknet",
             f"-Wl,-rpath,{lib}", "-lm"],
            check=True,
        )  # fmt: skip
    return exe


def quiet_parse(cfg: Path):
    """The network of cfg at batch 1, parsed in cfg's directory (where its tree= file is)."""
    with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull), contextlib.chdir(cfg.parent):
        return parse_network_cfg(cfg.name, batch=1)


def output_kind(net) -> str | None:
    """'classifier' (softmax output), 'detector' (yolo/region/detection) or None."""
    kind = net.output_layer.kind
    if kind in DETECTOR_KINDS:
        return "detector"
    if kind == "softmax":
        return "classifier"
    return None


def letterboxed_input(net, png: Path):
    from dlserver.image.load import load_image_color
    from dlserver.image.ops import letterbox_image

    return letterbox_image(load_image_color(str(png)), net.w, net.h).data


def objectness_outputs(head, out) -> list[int]:
    """Indices of `head`'s biases that feed the objectness of the detector layer `out`."""
    if out.kind == "yolo":
        return [a * (out.classes + 5) + 4 for a in range(out.n)]
    if out.kind == "region":
        return [a * (out.coords + 1 + out.classes) + out.coords for a in range(out.n)]
    if out.kind == "detection":  # [classes x cells][confidences: n x cells][boxes]
        cells = out.side * out.side
        return list(range(cells * out.classes, cells * (out.classes + out.n)))
    return []


def calibrate(cfg: Path, weights: Path, png: Path) -> None:
    """Scale the last weighted layer before the output layer so the output layer's input has
    standard deviation TARGET_STD on this image (see the module docstring); for detectors,
    scale each head that feeds a detector layer, and lower its objectness biases by
    OBJECTNESS_SHIFT so that a few boxes, not thousands, pass the threshold."""
    net = quiet_parse(cfg)
    load_weights(net, str(weights))
    net.set_batch(1)
    x = letterboxed_input(net, png) if net.w and net.h else from_values([0.5] * net.inputs)
    with contextlib.redirect_stderr(open(os.devnull, "w")):
        net.predict(x)
    out_index = net.layers.index(net.output_layer)
    if net.output_layer.kind in DETECTOR_KINDS:
        pairs = [(i - 1, i) for i, layer in enumerate(net.layers) if layer.kind in DETECTOR_KINDS]
    else:
        pairs = [(out_index - 1, out_index)]
    for feed_index, out_i in pairs:
        weighted = [
            i
            for i in range(feed_index + 1)
            if hasattr(net.layers[i], "biases") and getattr(net.layers[i], "activation", None) in (0, 1, 3, 7)
        ]
        if not weighted:
            continue
        feed = net.layers[feed_index]
        finite = [v for v in feed.output[: feed.outputs] if math.isfinite(v)]
        if not finite:
            continue
        mean = sum(finite) / len(finite)
        std = math.sqrt(sum((v - mean) ** 2 for v in finite) / len(finite))
        if std == 0:
            continue
        a = TARGET_STD / std
        layer = net.layers[weighted[-1]]
        bn = getattr(layer, "batch_normalize", 0)
        for arr in [layer.scales, layer.biases] if bn else [layer.weights, layer.biases]:
            arr[:] = from_values([v * a for v in arr])
        if weighted[-1] == feed_index:
            for j in objectness_outputs(layer, net.layers[out_i]):
                layer.biases[j] -= OBJECTNESS_SHIFT
    save_weights(net, str(weights))


def names_file(work: Path, classes: int) -> str:
    if classes == 1000:
        shutil.copy(DEBIAN / "data" / "imagenet.shortnames.list", work / "names.list")
    elif classes == 80:
        shutil.copy(DEBIAN / "data" / "coco.names", work / "names.list")
    elif classes == 20:
        shutil.copy(DEBIAN / "data" / "voc.names", work / "names.list")
    else:
        (work / "names.list").write_text("".join(f"class{i}\n" for i in range(classes)))
    return "names.list"


# Where we differ from Debian's Darknet on purpose (the contract says why), with the reason.
KNOWN_DIFFERENCES = {
    "yolo9000": "Darknet's CPU region layer runs the WordTree softmax from the wrong offset with"
    " temperature 0 and prints no box (NaN); we use its GPU path's layout (contract §4.20)",
}
# -thresh per output layer kind: a region head's class probabilities are a softmax over all
# classes (small), a yolo head's are independent logistics
THRESH = {"yolo": 0.5, "region": 0.1, "detection": 0.5}
DETECTION_LINE = re.compile(r"^(.+): (-?\d+)%$")


def same_detections(ours: list[str], theirs: list[str]) -> bool:
    """Equal as multisets of (class, percent), a percent allowed to differ by 1 (a value at a
    .5 boundary rounds either way when -Ofast reassociated its last bits)."""
    if len(ours) != len(theirs):
        return False

    def parsed(lines: list[str]) -> list[tuple[str, int]]:
        return sorted((m.group(1), int(m.group(2))) for m in map(DETECTION_LINE.match, lines) if m)

    pairs = zip(parsed(ours), parsed(theirs), strict=True)
    return all(a[0] == b[0] and abs(a[1] - b[1]) <= 1 for a, b in pairs)


def top_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if TOP_LINE.match(line) or re.match(r"^[^:]+: \d+%$", line)]


def check(name: str, size: int | None = None, thresh: float | None = None, root: Path = WORK) -> Outcome:
    """Run cfg `name` (Debian's) in the component and in native darknet under root/name/."""
    src = DEBIAN / "cfg" / f"{name}.cfg"
    work = root / name
    work.mkdir(parents=True, exist_ok=True)
    text = src.read_text()
    if size:
        text = re.sub(r"(?m)^(height|width)=\d+", rf"\g<1>={size}", text)

    def local_copy(match: re.Match) -> str:  # tree= and map= files, where the sandbox sees them
        shutil.copy(match.group(2), work / Path(match.group(2)).name)
        return f"{match.group(1)}={Path(match.group(2)).name}"

    text = re.sub(r"(?m)^(tree|map)\s*=\s*(/\S+)", local_copy, text)
    cfg = work / f"{name}.cfg"
    cfg.write_text(text)
    try:
        net = quiet_parse(cfg)
    except DLServerError as e:
        return Outcome(name, "FAILED", f"does not build: {e}")
    kind = output_kind(net) if net.w and net.h else None  # rnn, gru: text, not images
    out_kind = net.output_layer.kind
    classes = net.output_layer.outputs if kind == "classifier" else getattr(net.output_layer, "classes", 0)
    del net  # calibrate builds its own (big nets do not fit twice under the buffer limit)
    weights = work / f"{name}.weights"
    png = work / "dog.png"
    if not png.exists():
        Image.open(DEBIAN / "data" / "dog.jpg").convert("RGB").save(png)
    if not weights.exists():
        run = subprocess.run(
            [str(harness()), cfg.name, weights.name, "-"], cwd=work, capture_output=True, text=True
        )
        if run.returncode != 0:
            return Outcome(name, "FAILED", f"darknet could not make weights: {run.stderr[-300:]}")
        if kind:
            calibrate(cfg, weights, png)
    names = names_file(work, classes)
    if kind == "classifier":
        (work / "in.data").write_text(f"classes={classes}\nnames={names}\ntop=5\n")
        (work / "native.data").write_text(f"classes={classes}\nnames={work / names}\ntop=5\n")
        ours = ["classifier", "predict", "in.data", cfg.name, weights.name, png.name]
        theirs = [str(DARKNET), "classifier", "predict", "native.data", cfg.name, weights.name, png.name]
    elif kind == "detector":
        (work / "cfg").mkdir(exist_ok=True)
        (work / "cfg" / "coco.data").write_text(f"classes={classes}\nnames={names}\n")
        (work / "native.data").write_text(f"classes={classes}\nnames={work / names}\n")
        threshold = thresh if thresh is not None else THRESH[out_kind]
        tail = [cfg.name, weights.name, png.name, "-thresh", str(threshold), "-out", "pred"]
        ours = ["detect", *tail]
        theirs = [str(DARKNET), "detector", "test", "native.data", *tail]
    else:  # builds; nothing to compare: run the component on an aggregation of the weights
        run = subprocess.run(
            wasmtime_run(ROOT / "dl-server.wasm") + ["aggregation", "darknet", cfg.name, "avg.weights",
                                                     weights.name, weights.name],
            cwd=work, capture_output=True, text=True,
        )  # fmt: skip
        if run.returncode != 0:
            return Outcome(name, "FAILED", f"component: {run.stderr.strip().splitlines()[-1:]}")
        return Outcome(name, "built", "no output layer: built in the component, weights averaged")
    # random weights put more boxes over the threshold than a photo's detections: lift the cap
    component = wasmtime_run(ROOT / "dl-server.wasm")
    component[-1:-1] = ["--env", "DL_SERVER_MAX_BOXES=10000000"]
    mine = subprocess.run(component + ours, cwd=work, capture_output=True, text=True)
    if mine.returncode != 0:
        return Outcome(name, "FAILED", f"component: {mine.stderr.strip().splitlines()[-1:]}")
    native = subprocess.run(theirs, cwd=work, capture_output=True, text=True)
    if native.returncode != 0:
        return Outcome(name, "FAILED", f"native darknet: {native.stderr.strip().splitlines()[-1:]}")
    a, b = top_lines(mine.stdout), top_lines(native.stdout)
    if kind == "detector":  # print order: musl's qsort (the original's) vs glibc's, see the docstring
        a, b = sorted(a), sorted(b)
    if a == b or (kind == "detector" and same_detections(a, b)):
        return Outcome(name, "ok", f"{kind}: {len(a)} lines, first {a[0].strip() if a else '-'}")
    diff = next(i for i in range(max(len(a), len(b))) if i >= len(a) or i >= len(b) or a[i] != b[i])
    if name in KNOWN_DIFFERENCES:
        return Outcome(name, "known", KNOWN_DIFFERENCES[name])
    where = f"line {diff}: ours {a[diff : diff + 2]} darknet {b[diff : diff + 2]}"
    return Outcome(name, "DIFFERENT", f"{where} ({len(a)}/{len(b)} lines)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated cfg names (default: all 45)")
    parser.add_argument("--size", type=int, help="override height and width")
    parser.add_argument("--thresh", type=float, help="detection threshold (default: by output layer kind)")
    opts = parser.parse_args()
    if not (DARKNET.exists() and LIBDARKNET.exists() and shutil.which("gcc")):
        sys.exit("zoo-check needs Debian's darknet package and gcc (apt-get install darknet)")
    names = opts.only.split(",") if opts.only else sorted(p.stem for p in (DEBIAN / "cfg").glob("*.cfg"))
    outcomes = []
    for name in names:
        outcome = check(name, opts.size, opts.thresh)
        print(f"{outcome.name:20s} {outcome.status:10s} {outcome.detail}", flush=True)
        outcomes.append(outcome)
    bad = [o for o in outcomes if o.status in ("DIFFERENT", "FAILED")]
    print(f"{len(outcomes) - len(bad)} of {len(outcomes)} cfgs ok, built, or different as documented")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
