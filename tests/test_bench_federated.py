"""scripts/bench_federated.py (make bench-federated): its baseline is the commit before issue 9's
work, its data never goes into the checkout's data/mnist (shared with other checkouts by hard
links), the baseline's runner imports the baseline's packages, the models are compared as the
bench says, and the breakdown of a run adds up. No timing is asserted."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _load():
    spec = importlib.util.spec_from_file_location("bench_federated", REPO / "scripts" / "bench_federated.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_federated"] = mod
    spec.loader.exec_module(mod)
    return mod


bench = _load()


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True).stdout.strip()


@pytest.mark.skipif(
    git("rev-parse", "--is-shallow-repository") != "false", reason="needs the repository's history"
)
def test_the_default_baseline_is_the_parent_of_the_commit_that_added_flwr():
    added = git("log", "--format=%H", "--reverse", "-S", "flwr[simulation]", "--", "pyproject.toml")
    first = added.split()[0]
    assert git("rev-parse", f"{first}^") == bench.BASELINE
    assert "flwr" not in git("show", f"{bench.BASELINE}:pyproject.toml")
    assert git("log", "--format=%h", "-i", "--grep=flwr\\|flower", bench.BASELINE) == ""
    assert bench.resolve(bench.BASELINE[:7]) == bench.BASELINE


def test_an_unknown_baseline_is_one_error_line():
    with pytest.raises(bench.BenchError, match="--baseline no-such-commit: not a commit"):
        bench.resolve("no-such-commit")


@pytest.mark.parametrize("root", [REPO, REPO.parent])
def test_the_bench_never_prepares_data_in_the_checkout(root):
    with pytest.raises(bench.BenchError, match="a root of its own"):
        bench.bench_root(root, 4, "iid")


def test_a_hard_linked_file_is_replaced_not_rewritten(tmp_path):
    shared = tmp_path / "shared.list"
    shared.write_text("other checkout\n")
    mine = tmp_path / "root" / "mnist.labels.list"
    mine.parent.mkdir()
    os.link(shared, mine)
    bench.write_if_different(mine, b"0\n1\n")
    assert mine.read_bytes() == b"0\n1\n"
    assert shared.read_text() == "other checkout\n"  # the other link is untouched
    inode = mine.stat().st_ino
    bench.write_if_different(mine, b"0\n1\n")  # the same bytes: left alone
    assert mine.stat().st_ino == inode


def fake_checkout(where: Path) -> Path:
    for package, module in (("dlserver_host", "cli"), ("dlserver_tools", "federated")):
        (where / "host" / package).mkdir(parents=True)
        (where / "host" / package / "__init__.py").write_text("")
        (where / "host" / package / f"{module}.py").write_text("")
    return where


def test_the_baseline_runner_imports_the_baseline_packages(tmp_path):
    env = bench.baseline_env(fake_checkout(tmp_path / "base"))
    assert env["PYTHONPATH"] == str(tmp_path / "base" / "host")
    probe = "import dlserver_tools.federated as f; print(f.__file__)"
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True).stdout
    assert Path(out.strip()).is_relative_to(tmp_path / "base")


def test_a_checkout_without_the_packages_is_refused(tmp_path):
    (tmp_path / "empty" / "host").mkdir(parents=True)
    with pytest.raises(bench.BenchError, match="do not come from"):
        bench.baseline_env(tmp_path / "empty")


MODELS = {f"round{r}.weights": f"{r}" * 64 for r in range(4)}


def test_models_compared_today_strictly_the_baseline_reported():
    today = {"Flower", "local, today"}
    same = {"Flower #1": MODELS, "local, today #1": MODELS, "local, baseline #1": MODELS}
    ok, lines = bench.compare(same, today, 3)
    assert ok and lines[-1] == "the baseline's global models are byte-identical to today's"
    other = {**MODELS, "round2.weights": "f" * 64, "round3.weights": "e" * 64}
    ok, lines = bench.compare({**same, "local, baseline #1": other, "local, baseline #2": other}, today, 3)
    assert ok  # the old runner may give other bytes: said, not a failure
    assert lines[-1] == "the baseline's global models differ from today's: round2.weights, round3.weights"
    ok, lines = bench.compare({**same, "local, today #2": other}, today, 3)
    assert not ok and lines[0] == "today's runners: global models DIFFER: local, today #2"
    ok, lines = bench.compare({**same, "local, baseline #2": other}, today, 3)
    assert not ok and lines[1] == "the baseline's runs: global models DIFFER: local, baseline #2"
    ok, _ = bench.compare({"Flower #1": {"round0.weights": "0" * 64}}, today, 3)
    assert not ok  # a model missing


def test_the_breakdown_of_a_local_run_adds_up_to_its_wall_time():
    results = {"seconds": 40.0, "table": [{"round": r, "seconds": s} for r, s in enumerate([4, 16, 28, 40])]}
    parts = bench.local_parts(results, 41.5)
    assert parts == {"start": 5.5, "round 1": 12, "round 2": 12, "round 3": 12, "end": 0.0}
    assert sum(parts.values()) == 41.5


def test_the_breakdown_of_a_flower_run_adds_up_to_its_wall_time():
    rounds = [{"round": r, "sent_at": 100.0 + 10 * r, "aggregated_at": 108.0 + 10 * r} for r in (1, 2, 3)]
    results = {"rounds": rounds, "rounds_done_at": 139.0}
    marks = {"ray_init": 101.0, "ray_ready": 109.0, "round0_done": 104.0, "simulation_done": 142.0}
    parts = bench.flower_parts(results, marks, launched=100.0, ended=143.0)
    assert parts == {
        "start": 10.0, "round 1": 8.0, "round 2": 8.0, "round 3": 8.0, "end": 5.0,
        "to ray.init": 1.0, "ray start": 8.0, "round 0 wait": 0.0, "simulation start": 1.0,
        "ray stop": 3.0, "exit": 1.0,
    }  # fmt: skip
    main = ["start", "round 1", "round 2", "round 3", "end"]
    gaps = 2 * 2.0  # between one round's aggregation and the next round's messages
    assert sum(parts[k] for k in main) + gaps == 143.0 - 100.0
    start = ["to ray.init", "ray start", "round 0 wait", "simulation start"]
    assert sum(parts[k] for k in start) == parts["start"]
    marks["round0_done"] = 109.5  # round 0 outlasted Ray's start
    parts = bench.flower_parts(results, marks, launched=100.0, ended=143.0)
    assert (parts["round 0 wait"], parts["simulation start"]) == (0.5, 0.5)


FAKE_RUNNER = """
import json, sys
from pathlib import Path
work = Path(sys.argv[sys.argv.index("--work") + 1])
tries = Path("tries")
tries.write_text(tries.read_text() + "x" if tries.exists() else "x")
if len(tries.read_text()) <= int(sys.argv[1]):
    sys.exit("dl-server: error: cannot stage the sources")
(work / "global").mkdir(parents=True, exist_ok=True)
(work / "global" / "round0.weights").write_bytes(b"model")
(work / "results.json").write_text(json.dumps({"seconds": 1.0, "table": [{"round": 0, "seconds": 0.5}]}))
"""


def test_a_failed_run_is_run_once_more_then_an_error(tmp_path, capsys):
    script = tmp_path / "runner.py"
    script.write_text(FAKE_RUNNER)
    runner = bench.Runner("fake", [sys.executable, str(script), "1"], today=True)
    models = bench.run_once(runner, [], "w", tmp_path)
    assert models == {"round0.weights": bench.hashlib.sha256(b"model").hexdigest()}
    assert len(runner.seconds) == 1 and (tmp_path / "tries").read_text() == "xx"
    assert "fake: failed (dl-server: error: cannot stage the sources), once more" in capsys.readouterr().err
    (tmp_path / "tries").unlink()
    runner = bench.Runner("fake", [sys.executable, str(script), "2"], today=True)
    with pytest.raises(bench.BenchError, match="fake failed"):
        bench.run_once(runner, [], "w", tmp_path)
    assert runner.seconds == []


def test_the_overlap_of_a_run_s_steps_from_its_manifests(tmp_path):
    steps = {"round0-init": (0.0, 0.1), "round0-valid": (0.2, 1.3), "round1-client1": (6.0, 1.5)}
    steps |= {"round1-client2": (6.1, 1.4), "round1-aggregate": (7.75, 0.05)}
    for name, (start, seconds) in steps.items():
        when = f"2026-12-03T16:00:{10 + start:06.3f}Z"
        (tmp_path / f"{name}.json").write_text(json.dumps({"started_utc": when, "duration_seconds": seconds}))
    assert bench.overlap(tmp_path) == [
        "round 0: init 0.0-0.1, valid 0.2-1.5",
        "round 1: client1 6.0-7.5, client2 6.1-7.5, aggregate 7.8-7.8",
    ]
    assert bench.overlap(tmp_path / "none") == []
