"""The sandboxed steps of a federation, run by the Flower app and the local runner alike.

Every step is one ``dlserver_host.api.run`` with the project root as working directory (the
guest's paths are the root's relative paths), its arguments after ``--`` (no args.cfg, so
clients run concurrently) and a ``--manifest`` record under ``<work>/provenance/``. The
argument lists, cfgs and seeds are those of the local runner, so the same federation gives
the same bytes.

  <work>/global/round<r>.weights      global model after round r (round0 = Darknet's init)
  <work>/client<k>/                   mnist_lenet.cfg, mnist.dataset, out/ (its output source),
                                      round<r>.weights (the trained model it replied with)
  <work>/server/                      mnist_lenet.cfg, valid.dataset, init/, round<r>/ (replies),
                                      aggregate<r>/ (the aggregation's output source: its rule.state)
  <work>/provenance/                  round<r>-client<k>.json, round<r>-aggregate.json, ...
"""

from __future__ import annotations

import array
import math
import shutil
import struct
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from dlserver_host import api
from dlserver_host.atomic import write_atomically
from dlserver_host.darknet_output import last_top_line, train_lines

from ..darknet_cfg import set_option

BASE = "mnist_lenet"  # the guest saves <backup>/mnist_lenet.weights
MNIST = "data/mnist"


class StepError(Exception):
    """A sandboxed step failed or gave something unexpected: one line naming it."""


@dataclass(frozen=True)
class Settings:
    """What every node needs to run its steps (the run config, paths absolute)."""

    root: Path
    program: Path
    work: str = "federated"  # relative to root
    batches: int = 100
    policy: str = "constant"
    learning_rate: float = 0.01
    seed: int = 1
    valid_list: str = "data/mnist/mnist.valid.list"
    base_cfg: str = "cfg/mnist_lenet.cfg"
    timeout: float | None = None
    manifests: bool = True  # a --manifest record of every run under <work>/provenance/
    noise_seed: int | None = None  # DP rules: -seed noise_seed+1000r (reproducible, NOT private)

    @classmethod
    def from_config(cls, config) -> Settings:
        """From a Flower run config (keys with dashes, as declared in the app's pyproject)."""
        work = PurePosixPath(str(config["work"]))
        if work.is_absolute() or ".." in work.parts or str(work) in ("", "."):
            raise StepError(f"work={config['work']}: must be a directory below the root")
        return cls(
            root=Path(str(config["root"])),
            program=Path(str(config["program"])),
            work=str(config["work"]),
            batches=int(config["batches"]),
            policy=str(config["policy"]),
            learning_rate=float(config["learning-rate"]),
            seed=int(config["seed"]),
            valid_list=str(config["valid-list"]),
            base_cfg=str(config["base-cfg"]),
            timeout=float(config["timeout"]) or None,
            noise_seed=noise_seed(config.get("noise-seed", -1)),
        )

    @property
    def server_cfg(self) -> str:
        return f"{self.work}/server/{BASE}.cfg"

    def path(self, rel: str) -> Path:
        return self.root / rel

    def write(self, rel: str, text: str) -> None:
        write_atomically(self.path(rel), text)

    def lenet_cfg(self, max_batches: int, policy: str) -> str:
        """The base cfg with max_batches, policy and learning_rate replaced."""
        text = self.path(self.base_cfg).read_text()
        for key, value in (
            ("max_batches", max_batches),
            ("policy", policy),
            ("learning_rate", self.learning_rate),
        ):
            try:
                text = set_option(text, key, value)
            except KeyError:
                raise StepError(f"{self.base_cfg}: no {key}= line in [net]") from None
        return text

    def run(self, name: str, argv: list[str], inputs: list[str], outputs: list[str]) -> api.RunOutcome:
        """One sandboxed run; StepError with the guest's error line when it fails."""
        if self.manifests:
            self.path(f"{self.work}/provenance").mkdir(parents=True, exist_ok=True)
        result = api.run(
            self.program,
            inputs,
            outputs,
            argv,
            api.Limits(timeout=self.timeout),
            cwd=self.root,
            manifest=f"{self.work}/provenance/{name}.json" if self.manifests else None,
        )
        if not result.ok:
            raise StepError(f"{name}: {result.error_line()}")
        return result


def noise_seed(value) -> int | None:
    """The run config's ``noise-seed`` (-1: none, the DP rules' noise keyed by os.urandom)."""
    seed = int(value)
    return None if seed < 0 else seed


def noise_note(seed: int) -> str:
    return f"DP noise seeded (--noise-seed {seed}, -seed {seed}+1000r in round r): reproducible, NOT private"


def fresh_dir(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)


def examples(s: Settings, k: int) -> int:
    """Training images of client k (lines of its train list)."""
    lst = s.path(f"{MNIST}/mnist.train.client{k}.list")
    try:
        return sum(1 for line in lst.read_text().splitlines() if line)
    except OSError:
        raise StepError(f"{lst}: no train list for client {k} (make mnist_training)") from None


def initialise(s: Settings) -> tuple[Path, float]:
    """Round 0: Darknet's random init (-seed), saved by one batch at poly rate 0; the path."""
    w = s.work
    fresh_dir(s.path(f"{w}/server/init/out"))
    s.path(f"{w}/global").mkdir(parents=True, exist_ok=True)
    s.write(f"{w}/server/init/{BASE}.cfg", s.lenet_cfg(1, "poly"))
    first = s.path(s.valid_list).read_text().splitlines()[0]
    s.write(f"{w}/server/init/init.list", first + "\n")
    s.write(
        f"{w}/server/init/init.dataset",
        f"classes=10\ntrain = {w}/server/init/init.list\nbackup = {w}/server/init/out\n"
        f"labels = {MNIST}/mnist.labels.list\ntop=5\n",
    )
    s.write(s.server_cfg, s.lenet_cfg(s.batches, s.policy))
    s.write(
        f"{w}/server/valid.dataset",
        f"classes=10\nvalid = {s.valid_list}\nlabels = {MNIST}/mnist.labels.list\ntop=5\n",
    )
    argv = ["classifier", "train", f"{w}/server/init/init.dataset", f"{w}/server/init/{BASE}.cfg"]
    inputs = [*argv[2:], f"{w}/server/init/init.list", first, f"{MNIST}/mnist.labels.list"]
    result = s.run("round0-init", [*argv, "-seed", str(s.seed)], inputs, [f"{w}/server/init/out"])
    batches = train_lines(result.stdout)
    if len(batches) != 1 or batches[0].rate != 0.0:
        raise StepError("round 0: the initialisation run should train one batch at rate 0")
    final = s.path(f"{w}/global/round0.weights")
    shutil.move(s.path(f"{w}/server/init/out/{BASE}.weights"), final)
    return final, result.seconds


@dataclass(frozen=True)
class Trained:
    weights: Path  # the trained model, kept as <work>/client<k>/round<r>.weights
    manifest: dict | None  # the run's --manifest record (None without manifests)
    examples: int
    batches: int
    loss: float
    seconds: float


def train(s: Settings, k: int, r: int, global_weights: str, client_dir: str | None = None) -> Trained:
    """Client k's training in round r from ``global_weights`` (a root-relative file)."""
    c = client_dir or f"{s.work}/client{k}"
    fresh_dir(s.path(f"{c}/out"))
    s.write(f"{c}/{BASE}.cfg", s.lenet_cfg(s.batches, s.policy))
    s.write(
        f"{c}/mnist.dataset",
        f"classes=10\ntrain = {MNIST}/mnist.train.client{k}.list\nbackup = {c}/out\n"
        f"labels = {MNIST}/mnist.labels.list\ntop=5\n",
    )
    train_list = f"{MNIST}/mnist.train.client{k}.list"
    image_dirs = sorted(
        {line.rsplit("/", 1)[0] for line in s.path(train_list).read_text().splitlines() if line}
    )
    argv = ["classifier", "train", f"{c}/mnist.dataset", f"{c}/{BASE}.cfg", global_weights]
    argv += ["-clear", "-seed", str(s.seed + 1000 * r + k)]
    inputs = [*image_dirs, train_list, f"{MNIST}/mnist.labels.list", f"{c}/mnist.dataset", f"{c}/{BASE}.cfg"]
    result = s.run(f"round{r}-client{k}", argv, [*inputs, global_weights], [f"{c}/out"])
    batches = train_lines(result.stdout)
    kept = s.path(f"{c}/round{r}.weights")
    shutil.move(s.path(f"{c}/out/{BASE}.weights"), kept)
    return Trained(
        kept,
        result.manifest,
        examples(s, k),
        len(batches),
        batches[-1].avg if batches else float("nan"),
        result.seconds,
    )


def manifest_sha256(manifest: dict, side: str, name: str) -> str:
    """The sha256 a run's manifest gives its one ``side`` ("inputs" or "outputs") file called
    ``name``: the model a client wrote, or the global model it started from."""
    files = manifest.get(side, {}).get("files", {})
    hashes = [h for path, h in files.items() if path.endswith(f"/{name}")]
    if len(hashes) != 1:
        raise StepError(f"manifest names {len(hashes)} {side} {name}, expected 1")
    return hashes[0]


# Rules of `aggregation darknet -method` (docs/darknet-contract.md 8.4) that need the previous
# global model (-global), and those that also carry a state file from round to round.
GLOBAL_RULES = ("fedavgm", "fedadam", "fedyogi", "fedadagrad", "dpfixed", "dpadaptive")
STATE_RULES = ("fedavgm", "fedadam", "fedyogi", "fedadagrad", "dpadaptive")
DP_RULES = ("dpfixed", "dpadaptive")  # their noise: os.urandom, or -seed (NOT private)
STATE = "rule.state"


def aggregate(s: Settings, r: int, files: list[str], weights: list[int] | None, method: str) -> Path:
    """``aggregation darknet`` of the clients' files (in this order) into global/round<r>.weights,
    by ``method`` (mean, or a -method rule; a FedOpt or DP rule gets the previous global model,
    and the state file of the previous round's run: server/aggregate<r-1>/rule.state).
    The run writes into server/aggregate<r>/ (its output source; the global model is moved
    from there) so that no input lies in its output directory."""
    w = s.work
    out_dir = f"{w}/server/aggregate{r}"
    fresh_dir(s.path(out_dir))
    out = f"{out_dir}/round{r}.weights"
    argv = ["aggregation", "darknet", s.server_cfg, out, *files]
    inputs = [s.server_cfg, *files]
    if weights is not None:
        argv += ["-weights", ",".join(map(str, weights))]
    rule = method.split(":")[0]
    if method != "mean":
        argv += ["-method", method]
    if rule in GLOBAL_RULES:
        argv += ["-global", f"{w}/global/round{r - 1}.weights"]
        inputs.append(argv[-1])
    if rule in STATE_RULES:
        if r > 1:
            argv += ["-state", f"{w}/server/aggregate{r - 1}/{STATE}"]
            inputs.append(argv[-1])
        argv += ["-state-out", f"{out_dir}/{STATE}"]
    if rule in DP_RULES and s.noise_seed is not None:
        argv += ["-seed", str(s.noise_seed + 1000 * r)]
    s.run(f"round{r}-aggregate", argv, inputs, [out_dir])
    final = s.path(f"{w}/global/round{r}.weights")
    shutil.move(s.path(out), final)
    return final


def validate(
    s: Settings, name: str, weights: str, cfg: str, dataset: str, lst: str
) -> tuple[float, float, int]:
    """``classifier valid`` of ``weights`` on the images of ``lst``: (top-1, top-5, images)."""
    s.write(dataset, f"classes=10\nvalid = {lst}\nlabels = {MNIST}/mnist.labels.list\ntop=5\n")
    lines = [line for line in s.path(lst).read_text().splitlines() if line]
    dirs = sorted({line.rsplit("/", 1)[0] for line in lines})
    argv = ["classifier", "valid", dataset, cfg, weights]
    inputs = [dataset, cfg, weights, lst, f"{MNIST}/mnist.labels.list", *dirs]
    result = s.run(name, argv, inputs, [])
    top = last_top_line(result.stdout)
    if not top or top.index != len(lines) - 1:
        raise StepError(f"{name}: valid did not end with the `top 1:` line of image {len(lines) - 1}")
    return top.top1, top.topk, len(lines)


def validate_global(s: Settings, r: int) -> tuple[float, float, int]:
    """The server's validation of global/round<r>.weights on the test list."""
    w = s.work
    return validate(
        s,
        f"round{r}-valid",
        f"{w}/global/round{r}.weights",
        s.server_cfg,
        f"{w}/server/valid.dataset",
        s.valid_list,
    )


def non_finite_weights(path: Path) -> tuple[int, int]:
    """(parameters that are NaN or infinite, all parameters) of the weights file at ``path``.

    The header is 16 or 20 bytes by Darknet's rule (darknet_arrays.header_size; read here
    without numpy, which the local runner does not need), then little-endian float32s."""
    data = path.read_bytes()
    major, minor = struct.unpack_from("<ii", data)
    offset = 20 if major * 10 + minor >= 2 and major < 1000 and minor < 1000 else 16
    values = array.array("f", data[offset : offset + (len(data) - offset) // 4 * 4])
    if sys.byteorder == "big":
        values.byteswap()
    if math.isfinite(sum(values)):  # float32s summed in doubles cannot overflow: all finite
        return 0, len(values)
    return sum(1 for v in values if not math.isfinite(v)), len(values)


def global_row(s: Settings, r: int) -> dict:
    """Round r's row of the table: the validation of global/round<r>.weights (top1, top5 and
    images) and how many of its parameters are not finite (non_finite, of parameters). A model
    with any has diverged (a DP rule's noise too large for it, say); its validation still prints
    accuracies (Darknet's arg max over NaN), so the row must say so."""
    top1, top5, images = validate_global(s, r)
    non_finite, parameters = non_finite_weights(s.path(f"{s.work}/global/round{r}.weights"))
    return {
        "round": r,
        "top1": top1,
        "top5": top5,
        "images": images,
        "non_finite": non_finite,
        "parameters": parameters,
    }


def diverged(row: dict) -> str:
    """What a row says of its global model's weights: "" when they are all finite."""
    if not row.get("non_finite"):
        return ""
    return f"DIVERGED: {row['non_finite']} of {row['parameters']} weights are NaN or infinite"


def valid_line(row: dict) -> str:
    """The line printed when round ``row['round']``'s global model has been validated."""
    line = f"valid on {row['images']} test images: top-1 {row['top1']:.4f}, top-5 {row['top5']:.4f}"
    return f"{line}; {diverged(row)}" if diverged(row) else line


def table_lines(table: list[dict]) -> list[str]:
    """The per-round table both runners print at the end: a diverged round says so."""
    lines = [f"{'round':>5}  {'top-1':>7}  {'top-5':>7}  {'elapsed s':>9}"]
    for row in table:
        line = f"{row['round']:>5}  {row['top1']:7.4f}  {row['top5']:7.4f}  {row['seconds']:9.1f}"
        lines.append(f"{line}  {diverged(row)}" if diverged(row) else line)
    return lines
