"""``dl-server verify WORK``: the provenance chain of a federation from its manifests.

WORK is the work directory of a federation (``make federated`` on Flower, or the local
runner ``make federated-local``); WORK/provenance/ holds the ``--manifest`` record of every
sandboxed step: ``round0-init.json``, then per round r ``round<r>-client<k>.json`` (client k's
training), ``round<r>-aggregate.json`` (the server's ``aggregation darknet``) and
``round<r>-valid.json``. A client record the server received but that is not under
provenance/ (a client on another machine) is read from WORK/server/round<r>/client<k>.manifest.json.

The chain holds when, round after round:
- the global model of round 0 is the output of the init run, and each client of round r
  trained (its ``classifier train`` weights argument) from the global model of round r-1;
- the global model of round r is the output of an aggregation whose inputs are exactly the
  outputs of that round's clients, each once (a client the server refused is listed, not failed);
  a FedOpt or DP rule's -global is the global model of round r-1, and its -state the state file
  that round r-1's aggregation wrote;
- every step succeeded, all ran the same program, a signed record's signature holds (and is
  by --key when given), and the files the chain names under WORK (global models, the clients'
  kept models, the aggregation's inputs) still have the sha256 their records give them.

One line per check (``ok`` or ``FAIL``, as ``dl-server verify MANIFEST``), naming the record or
file that breaks the chain; the names of the failed checks are returned.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .manifest import FORMAT, sha256_file
from .verify import Report

STEP = re.compile(r"round(\d+)-(init|aggregate|valid|client(\d+))\.json")


@dataclass
class Step:
    """One run's record: its file name (as reported), the record, the .weights it wrote."""

    name: str
    record: dict

    @property
    def argv(self) -> list[str]:
        return [str(a) for a in self.record.get("guest_argv") or []]

    def input_hash(self, path: str) -> str | None:
        return self.record.get("inputs", {}).get("files", {}).get(path)

    def weights_written(self) -> dict[str, str]:
        files = self.record.get("outputs", {}).get("files", {})
        return {path: digest for path, digest in files.items() if path.endswith(".weights")}


def short(digest: str | None) -> str:
    return f"{digest[:12]}…" if digest else "none"


class Chain:
    """The checks of one work directory (see the module's doc)."""

    def __init__(self, work: Path, report: Report, key_fingerprint: str | None):
        self.work = work
        self.report = report
        self.key = key_fingerprint
        self.root = work  # set from the init record: the directory the runs' paths are relative to
        self.state_out: str | None = None  # sha256 of the rule state the last aggregation wrote
        self.programs: dict[str, str] = {}  # record -> sha256 of the program it ran

    def load(self, path: Path, name: str) -> Step | None:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            self.report.fail(name, f"cannot read a JSON record: {getattr(e, 'strerror', None) or e}")
            return None
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            self.report.fail(name, f"not a {FORMAT} record")
            return None
        return Step(name, record)

    def file_hash(self, rel: str) -> str | None:
        try:
            return sha256_file(self.root / rel)[0]
        except OSError:
            return None

    def check_file(self, rel: str, digest: str | None, named_by: str) -> bool:
        """The file ``rel`` (under the root) has the sha256 that ``named_by`` gives it."""
        actual = self.file_hash(rel)
        if actual == digest:
            return True
        what = "is missing" if actual is None else f"has sha256 {short(actual)}"
        self.report.fail(rel, f"{what}, {named_by} says {short(digest)}")
        return False

    def check_run(self, step: Step) -> bool:
        """The run succeeded and its signature, if any, holds."""
        record = step.record
        self.programs[step.name] = str((record.get("program") or {}).get("sha256"))
        if record.get("outcome") != "succeeded" or record.get("exit_status") != 0:
            self.report.fail(step.name, f"the run did not succeed ({record.get('outcome')})")
            return False
        if "signature" in record or self.key is not None:
            from .signing import fingerprint, signature_valid, signer_key

            try:
                signer = signer_key(record)
            except ValueError as e:
                self.report.fail(step.name, str(e))
                return False
            if not signature_valid(record, signer):
                self.report.fail(step.name, "the signature does not match: the record was changed")
                return False
            if self.key is not None and fingerprint(signer) != self.key:
                self.report.fail(step.name, f"signed by key {fingerprint(signer)[:16]}…, not by --key")
                return False
        return True

    def final_weights(self, step: Step) -> tuple[str, str] | None:
        """(path, sha256) of the model a ``classifier train`` run saved at its end: Darknet
        names it after the cfg (backup files carry a batch number: <cfg>_<n>.weights)."""
        argv = step.argv
        if argv[1:3] != ["classifier", "train"] or len(argv) < 5:
            self.report.fail(step.name, f"not a classifier train run: {' '.join(argv[1:4])}")
            return None
        name = f"/{PurePosixPath(argv[4]).stem}.weights"
        written = [(p, h) for p, h in step.weights_written().items() if p.endswith(name)]
        if len(written) != 1:
            self.report.fail(step.name, f"wrote {len(written)} files *{name}, expected 1")
            return None
        return written[0]

    # ------------------------------------------------------------------ the chain

    def verify(self) -> None:
        provenance = self.work / "provenance"
        steps: dict[tuple[int, str], Step] = {}
        for path in sorted(provenance.glob("round*.json")) if provenance.is_dir() else []:
            match = STEP.fullmatch(path.name)
            if match and (step := self.load(path, f"provenance/{path.name}")) is not None:
                steps[int(match.group(1)), match.group(2)] = step
        init = steps.get((0, "init"))
        if init is None:
            self.report.fail("round 0", f"no provenance/round0-init.json under {self.work}")
            return
        written = self.final_weights(init) if self.check_run(init) else None
        if written is None:
            return
        model = PurePosixPath(written[0])  # <work>/server/init/out/<name>.weights
        here = self.work.resolve().parts
        work_rel = model.parents[3] if len(model.parts) >= 5 else PurePosixPath()
        if model.parts[-4:-1] != ("server", "init", "out") or here[-len(work_rel.parts) :] != work_rel.parts:
            self.report.fail(init.name, f"its model {model} is not <this work directory>/server/init/out/")
            return
        self.root = self.work.resolve().parents[len(work_rel.parts) - 1]
        global_hash = written[1]
        if self.check_file(f"{work_rel}/global/round0.weights", global_hash, init.name):
            self.report.ok("round 0", f"global model {short(global_hash)} is the init run's output")
        self.check_valid(steps.get((0, "valid")), 0, work_rel, global_hash)
        r = 1
        while (r, "aggregate") in steps:
            clients = self.clients(steps, r, work_rel)
            next_hash = self.round(r, work_rel, global_hash, clients, steps[r, "aggregate"])
            if next_hash is None:
                return
            global_hash = next_hash
            self.check_valid(steps.get((r, "valid")), r, work_rel, global_hash)
            r += 1
        later = sorted({k for (n, k) in steps if n >= r and k != "valid"})
        if r == 1 or later:
            self.report.fail(
                f"round {r}", "no aggregation" + (f" (records: {', '.join(later)})" if later else "")
            )

    def check_valid(self, valid: Step | None, r: int, work_rel: PurePosixPath, global_hash: str) -> None:
        """The validation of round r, if there is one, validated round r's global model."""
        if valid is None or not self.check_run(valid):
            return
        if valid.input_hash(f"{work_rel}/global/round{r}.weights") != global_hash:
            self.report.fail(valid.name, f"did not validate the global model of round {r}")

    def check_programs(self) -> None:
        """Every run of the chain ran the init run's program."""
        first = next(iter(self.programs.values()))
        other = [name for name, digest in self.programs.items() if digest != first]
        if other:
            self.report.fail(
                "program", f"{', '.join(other)} ran another program than the init ({short(first)})"
            )
        else:
            self.report.ok("program", f"all {len(self.programs)} runs ran the program {short(first)}")

    def clients(self, steps: dict[tuple[int, str], Step], r: int, work_rel: PurePosixPath) -> dict[int, Step]:
        """Client k -> its record of round r (provenance/, else the copy the server received)."""
        found: dict[int, Step] = {}
        for (n, kind), step in steps.items():
            if n == r and kind.startswith("client"):
                found[int(kind.removeprefix("client"))] = step
        received = self.root / work_rel / "server" / f"round{r}"
        for path in sorted(received.glob("client*.manifest.json")):
            k = int(path.name.removeprefix("client").split(".")[0])
            copy = self.load(path, f"server/round{r}/{path.name}")
            if copy is None:
                continue
            if k not in found:
                found[k] = copy
            elif copy.record != found[k].record:
                self.report.fail(copy.name, f"differs from client {k}'s own record {found[k].name}")
        return found

    def check_state(self, r: int, agg: Step) -> bool:
        """A rule's state (-state) is the one the previous round's aggregation wrote (-state-out)."""
        argv = agg.argv
        given = argv[argv.index("-state") + 1] if "-state" in argv[:-1] else None
        previous = self.state_out
        self.state_out = None
        if "-state-out" in argv[:-1]:
            self.state_out = (
                agg.record.get("outputs", {}).get("files", {}).get(argv[argv.index("-state-out") + 1])
            )
        if given is None:
            if previous is None:
                return True
            self.report.fail(
                agg.name, f"round {r - 1}'s aggregation wrote a state, round {r} started from none"
            )
            return False
        if previous is None or agg.input_hash(given) != previous:
            self.report.fail(
                agg.name,
                f"-state {given} ({short(agg.input_hash(given))}) is not the state round {r - 1}'s "
                f"aggregation wrote ({short(previous)})",
            )
            return False
        return True

    def round(
        self, r: int, work_rel: PurePosixPath, previous: str, clients: dict[int, Step], agg: Step
    ) -> str | None:
        """Round r's checks; the sha256 of its global model (None when there is none to go on from)."""
        outputs: dict[int, str] = {}  # client -> sha256 of the model it trained
        bad = False
        for k, step in sorted(clients.items()):
            if not self.check_run(step):
                bad = True
                continue
            written = self.final_weights(step)
            argv = step.argv
            if written is None or len(argv) < 6:
                bad = True
                continue
            start = step.input_hash(argv[5])
            if start != previous:
                self.report.fail(
                    step.name,
                    f"client {k} trained from {argv[5]} ({short(start)}), not the global model of "
                    f"round {r - 1} ({short(previous)})",
                )
                bad = True
            if (self.root / argv[5]).is_file() and argv[5] != f"{work_rel}/global/round{r - 1}.weights":
                bad |= not self.check_file(argv[5], start, step.name)
            outputs[k] = written[1]
            kept = f"{work_rel}/client{k}/round{r}.weights"
            if (self.root / kept).is_file():
                bad |= not self.check_file(kept, written[1], step.name)
        if not self.check_run(agg):
            return None
        argv = agg.argv
        if argv[1:3] != ["aggregation", "darknet"] or len(argv) < 6:
            self.report.fail(agg.name, f"not an aggregation darknet run: {' '.join(argv[1:3])}")
            return None
        out = argv[4]
        files = []
        for arg in argv[5:]:
            if arg.startswith("-"):
                break
            files.append(arg)
        used: dict[int, str] = {}
        for f in files:
            digest = agg.input_hash(f)
            bad |= not self.check_file(f, digest, agg.name)
            owners = [k for k, h in outputs.items() if h == digest and k not in used]
            if not owners:
                match = re.search(r"client(\d+)", PurePosixPath(f).name) or re.search(r"client(\d+)", f)
                owner = int(match.group(1)) if match else None
                said = (
                    f"; client {owner}'s record {clients[owner].name} says it wrote "
                    f"{short(outputs.get(owner))}"
                    if owner is not None and owner in clients
                    else ""
                )
                self.report.fail(
                    agg.name, f"input {f} ({short(digest)}) is no round-{r} client's output{said}"
                )
                bad = True
                continue
            used[owners[0]] = f
        if "-global" in argv[:-1]:  # a FedOpt or DP rule: the update is taken from the previous global model
            given = argv[argv.index("-global") + 1]
            if agg.input_hash(given) != previous:
                self.report.fail(agg.name, f"-global {given} is not the global model of round {r - 1}")
                bad = True
        bad |= not self.check_state(r, agg)
        left_out = sorted(set(outputs) - set(used))
        global_hash = agg.weights_written().get(out)
        if global_hash is None:
            self.report.fail(agg.name, f"did not write {out}")
            return None
        bad |= not self.check_file(f"{work_rel}/global/round{r}.weights", global_hash, agg.name)
        if bad:
            return global_hash  # broken here (said above); the later rounds are still checked
        note = f"; left out (refused by the server): clients {left_out}" if left_out else ""
        self.report.ok(
            f"round {r}",
            f"global model {short(global_hash)} = aggregation of clients {sorted(used)}, each trained "
            f"from round {r - 1}'s {short(previous)}{note}",
        )
        return global_hash


def verify_chain(work: str, key: str | None, out) -> list[str]:
    """Check the chain of the federation in ``work``; the names of the failed checks."""
    report = Report(out)
    fingerprint = None
    if key is not None:
        from .signing import KeyFileError, load_public_key
        from .signing import fingerprint as key_fingerprint

        try:
            fingerprint = key_fingerprint(load_public_key(key))
        except KeyFileError as e:
            report.fail("key", str(e))
            return report.failed
    chain = Chain(Path(work), report, fingerprint)
    chain.verify()
    if chain.programs:
        chain.check_programs()
    if not report.failed:
        report.ok("chain", f"{work}: every global model follows from the previous one through its clients")
    return report.failed
