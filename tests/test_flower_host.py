"""The host's guest arguments after '--' (no args.cfg) and its Python API (dlserver_host.api).

The oracle is the args.cfg way of running the same command: same output bytes."""

import concurrent.futures
import contextlib
import hashlib
import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from dlserver_host import api
from dlserver_host.cli import build_parser

REPO = Path(__file__).resolve().parent.parent
WASM = REPO / "dl-server.wasm"
N_LENET = 47776  # floats of cfg/mnist_lenet.cfg

needs_component = pytest.mark.skipif(not WASM.is_file(), reason="dl-server.wasm not built (run make)")


def lenet_weights(path: Path, seed: int) -> None:
    values = np.random.default_rng(seed).standard_normal(N_LENET).astype("<f4")
    path.write_bytes(struct.pack("<iiiQ", 0, 2, 0, seed) + values.tobytes())


def test_arguments_after_double_dash_are_the_guests():
    args = build_parser().parse_args(["-r", "x.wasm", "-i", "a", "b", "--", "classifier", "train", "-i", "c"])
    assert args.inputs == ["a", "b"]
    assert args.guest_args == ["classifier", "train", "-i", "c"]
    assert build_parser().parse_args(["-r", "x.wasm", "-i", "args.cfg"]).guest_args == []


@pytest.fixture
def root(tmp_path):
    shutil.copy(REPO / "cfg" / "mnist_lenet.cfg", tmp_path / "lenet.cfg")
    for k in (1, 2, 3):
        lenet_weights(tmp_path / f"w{k}.weights", k)
    (tmp_path / "out").mkdir()
    return tmp_path


@pytest.mark.component
@needs_component
def test_api_run_equals_the_args_cfg_run(root):
    argv = ["aggregation", "darknet", "lenet.cfg", "out/mean.weights", "w1.weights", "w2.weights"]
    inputs = ["lenet.cfg", "w1.weights", "w2.weights"]
    (root / "args.cfg").write_text("".join(a + "\n" for a in argv))
    old = subprocess.run(
        [*api.host_command(), "-r", str(WASM), "--no-progress", "-i", "args.cfg", *inputs, "-o", "out"],
        cwd=root,
        capture_output=True,
    )
    assert old.returncode == 0, old.stderr
    expected = (root / "out" / "mean.weights").read_bytes()
    (root / "out" / "mean.weights").unlink()
    (root / "args.cfg").unlink()
    result = api.run(WASM, inputs, ["out"], argv, cwd=root, manifest="run.json")
    assert result.ok, result.stderr
    assert (root / "out" / "mean.weights").read_bytes() == expected
    assert result.manifest is not None
    assert result.manifest["guest_argv"] == ["dl-server.wasm", *argv]
    assert result.manifest["args_file"] is None
    assert result.manifest["outputs"]["files"] == {"out/mean.weights": hashlib.sha256(expected).hexdigest()}


@pytest.mark.component
@needs_component
def test_concurrent_runs_share_one_working_directory(root):
    def mean(pair):
        a, b = pair
        return api.run(
            WASM,
            ["lenet.cfg", f"w{a}.weights", f"w{b}.weights"],
            ["out"],
            ["aggregation", "darknet", "lenet.cfg", f"out/m{a}{b}.weights", f"w{a}.weights", f"w{b}.weights"],
            cwd=root,
        )

    pairs = [(1, 2), (2, 3), (1, 3)]
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        results = list(pool.map(mean, pairs))
    assert all(r.ok for r in results), [r.stderr for r in results]
    header = 20
    for a, b in pairs:
        x, y, m = (
            np.frombuffer((root / name).read_bytes()[header:], "<f4")
            for name in (f"w{a}.weights", f"w{b}.weights", f"out/m{a}{b}.weights")
        )
        np.testing.assert_allclose(m, (x + y) / 2, rtol=1e-6, atol=1e-7)


@pytest.mark.component
@needs_component
def test_api_reports_the_guests_error_and_limits(root):
    result = api.run(
        WASM, ["lenet.cfg"], [], ["aggregation", "darknet", "lenet.cfg", "o.weights", "w9.weights"], cwd=root
    )
    assert not result.ok
    assert "w9.weights" in result.error_line()
    small = api.run(
        WASM, ["lenet.cfg"], [], ["classifier", "train"], api.Limits(max_memory=1 << 20), cwd=root
    )
    assert not small.ok
    assert small.error_line() == "dl-server: error: guest ran out of memory (--max-memory 1M)"


def test_make_federated_runs_flower_after_preparing_the_data():
    def dry_run(*args: str) -> str:
        r = subprocess.run(["make", "-n", "-C", str(REPO), *args], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        return r.stdout

    out = dry_run("federated", "num-clients=3", "rounds=2", "data-dist=non-iid", "batches=5", "method=median")
    prep = out.index("mnist_training num-clients=3 data-dist=non-iid")
    run = out.index(
        "dl-server-flower --num-clients 3 --rounds 2 --data-dist non-iid --batches 5 --method median"
    )
    assert prep < run
    assert "dl-server-flower --num-clients 4 --rounds 3 --data-dist iid --deployment" in dry_run(
        "federated", "deployment=1"
    )


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no CPU affinity here")
def test_concurrent_runs_lease_cpus_of_their_own():
    cpus = sorted(os.sched_getaffinity(0))
    with contextlib.ExitStack() as stack:
        leased = [stack.enter_context(api.cpu_lease()) for _ in cpus]
        held = [c for c in leased if c is not None]
        assert len(held) == len(set(held))  # never one CPU twice
        assert set(leased) <= {*cpus, None}
        if None not in leased:  # no other run on this machine held one: all CPUs leased, then none left
            assert sorted(leased) == cpus
            with api.cpu_lease() as extra:
                assert extra is None
    with api.cpu_lease() as again:  # released at the end of each run
        assert again in {*cpus, None}
