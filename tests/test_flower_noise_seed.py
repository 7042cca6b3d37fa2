"""The DP rules' noise made reproducible on request: a federation's `--noise-seed N` (run config
`noise-seed`) becomes the aggregation's `-seed N+1000r` in round r, through the steps shared by
the Flower strategy and the local runner, and is said to be NOT private. Without it the noise is
keyed by os.urandom: two runs differ."""

import hashlib
import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dlserver_tools import darknet_arrays as da
from dlserver_tools.flower import steps

REPO = Path(__file__).resolve().parent.parent
WASM = REPO / "dl-server.wasm"
CFG = da.read_cfg(REPO / "cfg" / "mnist_lenet.cfg")


def write_model(path: Path, k: int) -> None:
    rng = np.random.default_rng(k)
    arrays = {name: rng.standard_normal(n).astype(np.float32) for name, n in da.tensor_shapes(CFG)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(da.encode(CFG, struct.pack("<iiiQ", 0, 2, 0, 100 * k), arrays))


@pytest.fixture
def root(tmp_path):
    (tmp_path / "cfg").mkdir()
    shutil.copy(REPO / "cfg" / "mnist_lenet.cfg", tmp_path / "cfg")
    s = steps.Settings(root=tmp_path, program=WASM, work="fed")
    s.write(s.server_cfg, s.lenet_cfg(5, "constant"))
    write_model(tmp_path / "fed" / "global" / "round0.weights", 0)
    for k in (1, 2, 3):
        write_model(tmp_path / "fed" / "server" / "round1" / f"client{k}.weights", k)
    return tmp_path


def aggregated(root: Path, method: str, noise_seed: int | None) -> tuple[str, list[str]]:
    """sha256 of round 1's global model by ``method``, and the guest's argv."""
    s = steps.Settings(root=root, program=WASM, work="fed", noise_seed=noise_seed)
    files = [f"fed/server/round1/client{k}.weights" for k in (1, 2, 3)]
    out = steps.aggregate(s, 1, files, None, method)
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    out.unlink()
    record = json.loads((root / "fed" / "provenance" / "round1-aggregate.json").read_text())
    return digest, record["guest_argv"]


@pytest.mark.component
@pytest.mark.skipif(not WASM.is_file(), reason="dl-server.wasm not built (run make)")
@pytest.mark.parametrize("method", ["dpfixed:1.0:5.0", "dpadaptive:1.0:5.0:0.5:0.2:1.0"])
def test_a_noise_seed_gives_the_same_noise_and_none_gives_fresh_noise(root, method):
    first, argv = aggregated(root, method, 7)
    assert argv[-2:] == ["-seed", "1007"]  # N + 1000r, round 1
    again, _ = aggregated(root, method, 7)
    other, _ = aggregated(root, method, 8)
    fresh1, argv = aggregated(root, method, None)
    fresh2, _ = aggregated(root, method, None)
    assert "-seed" not in argv
    assert first == again
    assert len({first, other, fresh1, fresh2}) == 4


def test_the_run_config_key_and_its_default():
    base = dict.fromkeys(("batches", "seed", "timeout"), "1")
    config = {**base, "root": "/r", "program": "/p", "work": "w", "policy": "constant"}
    config |= {"learning-rate": "0.01", "valid-list": "v", "base-cfg": "c"}
    assert steps.Settings.from_config(config).noise_seed is None  # an app config without the key
    assert steps.Settings.from_config({**config, "noise-seed": -1}).noise_seed is None
    assert steps.Settings.from_config({**config, "noise-seed": 0}).noise_seed == 0
    assert "NOT private" in steps.noise_note(0)


@pytest.mark.parametrize("tool", ["dlserver_tools.federated", "dlserver_tools.flower.run"])
@pytest.mark.parametrize(
    ("flags", "error"),
    [
        (
            ["--noise-seed", "3"],
            "--noise-seed seeds the noise of the DP rules (dpfixed, dpadaptive), not of mean",
        ),
        (["--method", "median", "--noise-seed", "3"], "not of median"),
        (["--method", "dpfixed:1:1", "--noise-seed", "-2"], "--noise-seed must be >= 0"),
    ],
)
def test_a_noise_seed_without_a_dp_rule_is_refused(tool, flags, error):
    proc = subprocess.run([sys.executable, "-m", tool, *flags], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].endswith(error)
