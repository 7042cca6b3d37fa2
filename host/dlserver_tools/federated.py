"""`make federated`: federated averaging (FedAvg) of LeNet on MNIST, every step in the sandbox.

Each step is one run of dl-server.wasm through the `dl-server` host, which sees only
the sources named for that step (read-only inputs, one writable output directory
copied back only on success):

  round 0   the server makes the initial global model: Darknet's random initialisation
            (-seed S), saved by a `classifier train` run of ONE batch whose poly rate at
            batch 1 of 1 is 0, so nothing is learned (checked: the batch line must say
            rate 0). Its train list is one test image, so no client data is needed.
            The random model is validated too (round 0 of the table: chance level).
  round r   for each client k, in turn: `classifier train <client dataset> <client cfg>
            global/round<r-1>.weights -clear -seed S+1000r+k`. Inputs: args.cfg, the
            client's image directory and train list (its shard only), the labels list,
            its dataset file and cfg, the global model. Output: federated/client<k>/out.
            The cfg is cfg/mnist_lenet.cfg with max_batches = --batches (per round) and,
            by default, policy=constant: -clear restarts the schedule every round, and
            poly would bring the rate down to 0 at the end of each round.
            Then the server averages the clients' weights (`aggregation darknet`,
            weighted by the number of training images per client with -weights when the
            shards differ in size), and validates the new global model on the test list
            (`classifier valid`; the last `top 1:` line gives top-1 and top-5).

The guest reads at most 1024 arguments from args.cfg, so one `aggregation darknet` run
averages up to 1018 clients (1016 with `-weights a,b,c`); past that the server averages in
a tree: groups of clients into partial models, weighted by their example counts, then
those (the same weighted mean up to float32 rounding of the partial models).

Every run is sandboxed under the repository root (the guest's paths are the host's
relative paths, as under Veracruz's FEE), so each run gets the root's args.cfg, written
here before the run; the args.cfg that was there is put back at the end. Files:

  federated/server/init/      the one-batch initialisation run (cfg, dataset, 1-image list, out/)
  federated/server/           valid.dataset, mnist_lenet.cfg (for aggregation and valid), agg/ (partials)
  federated/client<k>/        mnist.dataset, mnist_lenet.cfg, out/ (the run's output source),
                              round<r>.weights and round<r>.loss.csv (kept from out/)
  federated/global/           round<r>.weights: the global model after round r (round0 = init)
  federated/provenance/       `dl-server --manifest` records of every run (--no-manifests: none)
  federated/results.json      the table below, the settings, and the time of every run

Prints one line per run and, at the end, the table round -> top-1 / top-5.
Needs MNIST prepared for the same number of clients (make mnist_training num-clients=N).
Paths (--root, --program, --base-cfg) are relative to the current directory: run it from
the repository root, as `make federated` does (`dl-server-federated` or
`python -m dlserver_tools.federated`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from dlserver_host.atomic import write_atomically
from dlserver_host.darknet_output import last_top_line, train_lines

from .darknet_cfg import set_option

BASE = "mnist_lenet"  # cfg base name: the guest writes <backup>/mnist_lenet.weights
MAX_ARGS = 1024  # args.cfg lines the guest accepts


class FederatedError(Exception):
    """A step failed: one line for the user (the run's stderr tail is printed before)."""


def host_command() -> list[str]:
    exe = Path(sys.executable).parent / "dl-server"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "dlserver_host.cli"]


class Federation:
    def __init__(self, opts: argparse.Namespace):
        self.opts = opts
        self.root = opts.root.resolve()
        self.work = opts.work  # relative to root, posix
        self.program = str(opts.program.resolve())
        self.runs: list[dict] = []
        self.mnist = "data/mnist"

    # ------------------------------------------------------------------ helpers

    def path(self, rel: str) -> Path:
        return self.root / rel

    def write(self, rel: str, text: str) -> None:
        write_atomically(self.path(rel), text)

    def fresh_dir(self, rel: str) -> None:
        p = self.path(rel)
        if p.exists():
            shutil.rmtree(p)
        p.mkdir(parents=True)

    def run(self, name: str, args: list[str], inputs: list[str], outputs: list[str]) -> str:
        """One sandboxed run of dl-server.wasm; returns its stdout, raises FederatedError on failure."""
        if len(args) > MAX_ARGS:
            raise FederatedError(f"{name}: {len(args)} arguments, the guest reads at most {MAX_ARGS}")
        self.write("args.cfg", "".join(a + "\n" for a in args))
        cmd = [
            *host_command(),
            "--program",
            self.program,
            "--no-progress",
            "--input-source",
            "args.cfg",
            *inputs,
        ]
        if outputs:
            cmd += ["--output-source", *outputs]
        if self.opts.manifests:
            cmd += ["--manifest", f"{self.work}/provenance/{name}.json"]
        if self.opts.timeout:
            cmd += ["--timeout", str(self.opts.timeout)]
        started = time.perf_counter()
        proc = subprocess.run(cmd, cwd=self.root, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        self.runs.append(
            {
                "run": name,
                "args": args,
                "inputs": ["args.cfg", *inputs],
                "outputs": outputs,
                "seconds": round(seconds, 3),
                "status": proc.returncode,
            }
        )
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
            print(tail, file=sys.stderr)
            raise FederatedError(
                f"{name} failed (exit {proc.returncode}): dl-server " + " ".join(cmd[len(host_command()) :])
            )
        self.last_seconds = seconds
        return proc.stdout

    def lenet_cfg(self, max_batches: int, policy: str, rate: float) -> str:
        """cfg/mnist_lenet.cfg with max_batches, policy and learning_rate replaced."""
        text = self.opts.base_cfg.read_text()
        for key, value in (("max_batches", max_batches), ("policy", policy), ("learning_rate", rate)):
            try:
                text = set_option(text, key, value)
            except KeyError:
                raise FederatedError(f"{self.opts.base_cfg}: no {key}= line in [net]") from None
        return text

    # ------------------------------------------------------------------ set-up

    def check_data(self) -> list[int]:
        """Examples per client (train list lines); checks the prepared split matches."""
        n = self.opts.num_clients
        manifest = self.path(f"{self.mnist}/.prepared-{n}.json")
        hint = f"run `make mnist_training num-clients={n} data-dist={self.opts.data_dist}` first"
        try:
            prepared = json.loads(manifest.read_text())
        except (OSError, ValueError):
            raise FederatedError(
                f"MNIST is not prepared for {n} clients ({manifest} missing): {hint}"
            ) from None
        if prepared.get("data_dist") != self.opts.data_dist:
            raise FederatedError(
                f"{manifest}: data is split {prepared.get('data_dist')}, not {self.opts.data_dist}: {hint}"
            )
        self.split = {k: prepared[k] for k in ("data_dist", "alpha", "seed") if k in prepared}
        self.client_dirs = [c["dir"] for c in sorted(prepared["clients"], key=lambda c: c["client"])]
        counts = []
        for k in range(1, n + 1):
            lst = self.path(f"{self.mnist}/mnist.train.client{k}.list")
            counts.append(sum(1 for line in lst.read_text().splitlines() if line))
        if not self.path(self.opts.valid_list).is_file():
            raise FederatedError(f"{self.opts.valid_list}: no such test list")
        return counts

    def set_up(self) -> None:
        w, o = self.work, self.opts
        self.fresh_dir(w)  # nothing left from an earlier federation
        for sub in ("server", "global", *(f"client{k}" for k in range(1, o.num_clients + 1))):
            self.fresh_dir(f"{w}/{sub}")
        # Round 0: one batch of poly at batch 1 of 1 = rate 0: the random init, unchanged.
        self.write(f"{w}/server/init/{BASE}.cfg", self.lenet_cfg(1, "poly", o.learning_rate))
        first_test_image = self.path(o.valid_list).read_text().splitlines()[0]
        self.init_image = first_test_image
        self.write(f"{w}/server/init/init.list", first_test_image + "\n")
        self.write(
            f"{w}/server/init/init.dataset",
            f"classes=10\ntrain = {w}/server/init/init.list\nbackup = {w}/server/init/out\n"
            f"labels = {self.mnist}/mnist.labels.list\ntop=5\n",
        )
        self.fresh_dir(f"{w}/server/init/out")
        self.fresh_dir(f"{w}/server/agg")
        self.write(f"{w}/server/{BASE}.cfg", self.lenet_cfg(o.batches, o.policy, o.learning_rate))
        self.write(
            f"{w}/server/valid.dataset",
            f"classes=10\nvalid = {o.valid_list}\nlabels = {self.mnist}/mnist.labels.list\ntop=5\n",
        )
        for k in range(1, o.num_clients + 1):
            c = f"{w}/client{k}"
            self.write(f"{c}/{BASE}.cfg", self.lenet_cfg(o.batches, o.policy, o.learning_rate))
            self.write(
                f"{c}/mnist.dataset",
                f"classes=10\ntrain = {self.mnist}/mnist.train.client{k}.list\nbackup = {c}/out\n"
                f"labels = {self.mnist}/mnist.labels.list\ntop=5\n",
            )
            self.fresh_dir(f"{c}/out")

    # ------------------------------------------------------------------ steps

    def initialise(self) -> None:
        w = self.work
        out = self.run(
            "round0-init",
            [
                "classifier",
                "train",
                f"{w}/server/init/init.dataset",
                f"{w}/server/init/{BASE}.cfg",
                "-seed",
                str(self.opts.seed),
            ],
            [
                f"{w}/server/init/init.dataset",
                f"{w}/server/init/{BASE}.cfg",
                f"{w}/server/init/init.list",
                self.init_image,
                f"{self.mnist}/mnist.labels.list",
            ],
            [f"{w}/server/init/out"],
        )
        batches = train_lines(out)
        if len(batches) != 1 or batches[0].rate != 0.0:
            raise FederatedError("round 0: the initialisation run should train one batch at rate 0")
        shutil.move(self.path(f"{w}/server/init/out/{BASE}.weights"), self.path(f"{w}/global/round0.weights"))
        print(
            f"round 0: initial global model = Darknet random init (-seed {self.opts.seed}), "
            f"{self.last_seconds:.1f} s",
            flush=True,
        )

    def train_client(self, r: int, k: int, count: int) -> dict:
        w, c = self.work, f"{self.work}/client{k}"
        for stale in self.path(f"{c}/out").iterdir():
            stale.unlink()
        seed = self.opts.seed + 1000 * r + k
        out = self.run(
            f"round{r}-client{k}",
            [
                "classifier",
                "train",
                f"{c}/mnist.dataset",
                f"{c}/{BASE}.cfg",
                f"{w}/global/round{r - 1}.weights",
                "-clear",
                "-seed",
                str(seed),
            ],
            [
                self.client_dirs[k - 1],
                f"{self.mnist}/mnist.train.client{k}.list",
                f"{self.mnist}/mnist.labels.list",
                f"{c}/mnist.dataset",
                f"{c}/{BASE}.cfg",
                f"{w}/global/round{r - 1}.weights",
            ],
            [f"{c}/out"],
        )
        batches = train_lines(out)
        shutil.move(self.path(f"{c}/out/{BASE}.weights"), self.path(f"{c}/round{r}.weights"))
        loss_log = self.path(f"{c}/out/{BASE}.loss.csv")
        if loss_log.exists():
            shutil.move(loss_log, self.path(f"{c}/round{r}.loss.csv"))
        avg = batches[-1].avg if batches else float("nan")
        print(
            f"  client {k}: {len(batches)} batches of its {count} images, avg loss {avg:.3f}, "
            f"{self.last_seconds:.1f} s",
            flush=True,
        )
        return {
            "client": k,
            "images": count,
            "batches": len(batches),
            "avg_loss": avg,
            "seconds": round(self.last_seconds, 3),
        }

    def aggregate(self, r: int, items: list[tuple[str, int]]) -> tuple[float, int]:
        """Weighted mean of (weights file, examples) into global/round<r>.weights; (seconds, runs)."""
        self._agg_seconds, self._agg_runs = 0.0, 0
        final = f"{self.work}/global/round{r}.weights"
        self._combine(r, items, final, level=0, index=0)
        return self._agg_seconds, self._agg_runs

    def _combine(
        self, r: int, items: list[tuple[str, int]], out: str, level: int, index: int
    ) -> tuple[str, int]:
        equal = len({n for _, n in items}) == 1 or self.opts.weighting == "equal"
        limit = MAX_ARGS - 4 - (0 if equal else 2)
        if len(items) > limit:
            n_groups = -(-len(items) // limit)  # ceil: groups of at most `limit`
            size = -(-len(items) // n_groups)  # as even as possible
            groups = [items[i : i + size] for i in range(0, len(items), size)]
            partials = []
            for g, group in enumerate(groups):
                if len(group) == 1:
                    partials.append(group[0])
                    continue
                part = f"{self.work}/server/agg/round{r}-level{level + 1}-part{g + 1}.weights"
                partials.append(self._combine(r, group, part, level + 1, g + 1))
            return self._combine(r, partials, out, level, index)
        files = [f for f, _ in items]
        args = ["aggregation", "darknet", f"{self.work}/server/{BASE}.cfg", out, *files]
        if not equal:
            args += ["-weights", ",".join(str(n) for _, n in items)]
        name = (
            f"round{r}-aggregate"
            if out.endswith(f"global/round{r}.weights")
            else f"round{r}-aggregate-level{level}-part{index}"
        )
        self.run(name, args, [f"{self.work}/server/{BASE}.cfg", *files], [str(Path(out).parent.as_posix())])
        self._agg_seconds += self.last_seconds
        self._agg_runs += 1
        return out, sum(n for _, n in items)

    def validate(self, r: int) -> tuple[float, float, int]:
        w = self.work
        out = self.run(
            f"round{r}-valid",
            [
                "classifier",
                "valid",
                f"{w}/server/valid.dataset",
                f"{w}/server/{BASE}.cfg",
                f"{w}/global/round{r}.weights",
            ],
            [
                f"{w}/server/valid.dataset",
                f"{w}/server/{BASE}.cfg",
                f"{w}/global/round{r}.weights",
                self.opts.valid_list,
                f"{self.mnist}/mnist.labels.list",
                *self.test_image_dirs(),
            ],
            [],
        )
        top = last_top_line(out)
        expected = sum(1 for line in self.path(self.opts.valid_list).read_text().splitlines() if line)
        if not top or top.index != expected - 1:
            lines = out.rstrip("\n").splitlines()
            raise FederatedError(
                f"round {r}: valid did not end with the `top 1:` line of image "
                f"{expected - 1} (got {lines[-1] if lines else 'nothing'!r})"
            )
        return top.top1, top.topk, expected

    def test_image_dirs(self) -> list[str]:
        """The directories holding the test list's images (the test images lie in the client dirs)."""
        dirs = []
        for line in self.path(self.opts.valid_list).read_text().splitlines():
            d = line.rsplit("/", 1)[0]
            if line and d not in dirs:
                dirs.append(d)
        return dirs

    # ------------------------------------------------------------------ main loop

    def main(self) -> dict:
        o = self.opts
        counts = self.check_data()
        weighted = o.weighting == "examples" or (o.weighting == "auto" and len(set(counts)) > 1)
        split = ", ".join(f"{k} {v}" for k, v in self.split.items())
        print(
            f"federated: {o.num_clients} clients ({split}; {', '.join(map(str, counts))} training images), "
            f"{o.rounds} rounds of {o.batches} batches of 100 per client, {o.policy} rate "
            f"{o.learning_rate:g}, {'weighted' if weighted else 'plain'} mean, "
            f"validation on {o.valid_list}",
            flush=True,
        )
        started = time.perf_counter()
        saved_args = self.path("args.cfg").read_bytes() if self.path("args.cfg").is_file() else None
        table: list[dict[str, Any]] = []  # one row per round
        try:
            self.set_up()
            self.initialise()
            top1, top5, n_valid = self.validate(0)
            print(
                f"  valid on {n_valid} test images: top-1 {top1:.4f}, top-5 {top5:.4f}, "
                f"{self.last_seconds:.1f} s",
                flush=True,
            )
            table.append(
                {"round": 0, "top1": top1, "top5": top5, "seconds": round(time.perf_counter() - started, 1)}
            )
            for r in range(1, o.rounds + 1):
                print(f"round {r}:", flush=True)
                round_started = time.perf_counter()
                clients = [self.train_client(r, k, counts[k - 1]) for k in range(1, o.num_clients + 1)]
                items = [
                    (f"{self.work}/client{k}/round{r}.weights", counts[k - 1] if weighted else 1)
                    for k in range(1, o.num_clients + 1)
                ]
                seconds, runs = self.aggregate(r, items)
                print(
                    f"  server: {'weighted ' if weighted else ''}average of {len(items)} models in "
                    f"{runs} sandboxed run{'s' if runs > 1 else ''}, {seconds:.1f} s",
                    flush=True,
                )
                top1, top5, n_valid = self.validate(r)
                print(
                    f"  valid on {n_valid} test images: top-1 {top1:.4f}, top-5 {top5:.4f}, "
                    f"{self.last_seconds:.1f} s (round {time.perf_counter() - round_started:.1f} s)",
                    flush=True,
                )
                table.append(
                    {
                        "round": r,
                        "top1": top1,
                        "top5": top5,
                        "clients": clients,
                        "seconds": round(time.perf_counter() - started, 1),
                    }
                )
        finally:
            if saved_args is None:
                self.path("args.cfg").unlink(missing_ok=True)
            else:
                write_atomically(self.path("args.cfg"), saved_args)
        total = time.perf_counter() - started
        print()
        print(f"{'round':>5}  {'top-1':>7}  {'top-5':>7}  {'elapsed s':>9}")
        for row in table:
            print(f"{row['round']:>5}  {row['top1']:7.4f}  {row['top5']:7.4f}  {row['seconds']:9.1f}")
        print(
            f"\n{len(self.runs)} sandboxed runs in {total:.1f} s; global models in {self.work}/global/, "
            f"provenance in {self.work}/provenance/"
            if o.manifests
            else f"\n{len(self.runs)} sandboxed runs in {total:.1f} s; global models in {self.work}/global/"
        )
        result = {
            "settings": {
                "num_clients": o.num_clients,
                "rounds": o.rounds,
                "batches": o.batches,
                "policy": o.policy,
                "learning_rate": o.learning_rate,
                "seed": o.seed,
                "weighted": weighted,
                "split": self.split,
                "examples": counts,
                "valid_list": o.valid_list,
            },
            "table": table,
            "seconds": round(total, 1),
            "runs": self.runs,
        }
        self.write(f"{self.work}/results.json", json.dumps(result, indent=1) + "\n")
        return result


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="dl-server-federated",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--num-clients", type=int, default=4, metavar="N")
    p.add_argument("--rounds", type=int, default=3, metavar="R")
    p.add_argument(
        "--batches",
        type=int,
        default=100,
        metavar="B",
        help="batches of 100 images each client trains per round (default 100)",
    )
    p.add_argument(
        "--data-dist",
        choices=["iid", "non-iid"],
        default="iid",
        help="the split data/mnist must have been prepared with (checked)",
    )
    p.add_argument(
        "--policy",
        default="constant",
        help="learning-rate policy of the clients' cfg (default constant; see the doc)",
    )
    p.add_argument("--learning-rate", type=float, default=0.01)
    p.add_argument(
        "--weighting",
        choices=["auto", "examples", "equal"],
        default="auto",
        help="auto: weight by training images per client when they differ (default)",
    )
    p.add_argument(
        "--seed", type=int, default=1, help="-seed of the init run; client k in round r uses seed+1000r+k"
    )
    p.add_argument(
        "--valid-list",
        default="data/mnist/mnist.valid.list",
        help="test list for the global model (default: the 10000 test images)",
    )
    p.add_argument(
        "--root",
        type=Path,
        default=Path("."),
        help="project root: holds data/mnist, args.cfg; every run's working directory "
        "(default: the current directory)",
    )
    p.add_argument("--work", default="federated", help="work directory, relative to the root")
    p.add_argument("--program", type=Path, default=Path("dl-server.wasm"))
    p.add_argument("--base-cfg", type=Path, default=Path("cfg") / "mnist_lenet.cfg")
    p.add_argument(
        "--no-manifests",
        dest="manifests",
        action="store_false",
        help="do not write a `dl-server --manifest` record per run",
    )
    p.add_argument("--timeout", type=float, default=None, help="per-run --timeout of the host")
    return checked_options(p, p.parse_args(argv))


def checked_options(p: argparse.ArgumentParser, opts: argparse.Namespace) -> argparse.Namespace:
    """Counts >= 1 and a work directory below the root (also for dl-server-flower)."""
    if opts.num_clients < 1 or opts.rounds < 1 or opts.batches < 1:
        p.error("--num-clients, --rounds and --batches must be >= 1")
    if Path(opts.work).is_absolute() or ".." in Path(opts.work).parts or opts.work in ("", "."):
        p.error("--work must be a directory below the root")
    opts.work = Path(opts.work).as_posix()
    return opts


def main(argv=None) -> int:
    opts = parse_args(argv)
    if not opts.program.is_file():
        print(f"federated: {opts.program} not built (run make)", file=sys.stderr)
        return 1
    try:
        Federation(opts).main()
    except FederatedError as e:
        print(f"federated: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
