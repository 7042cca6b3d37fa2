"""A global model gone non-finite (a DP rule's noise too large: `dpfixed:0.5:10` takes LeNet to
NaN by round 2) is said so in the per-round lines and the table of both runners
(dlserver_tools.flower.steps: global_row, valid_line, table_lines), its bytes untouched.

Checked on synthetic LeNet weights files (numpy's isfinite as the oracle), and once through the
component: a NaN model validated as a federation's round would be.
"""

import hashlib
import math
import struct
from pathlib import Path

import numpy as np
import pytest

from conftest import LENET_PARAMETERS, flat_lenet_weights
from dlserver_tools.flower import steps
from test_federated import REPO, WASM, needs_component, prepared_root


def lenet_with(values: dict[int, float], header: bytes = struct.pack("<iiiQ", 0, 2, 0, 0)) -> bytes:
    """LeNet's weights, 0.5 everywhere but at the given parameter indexes."""
    params = np.full(LENET_PARAMETERS, 0.5, dtype="<f4")
    for i, v in values.items():
        params[i] = v
    return header + params.tobytes()


@pytest.mark.parametrize(
    "header",
    [struct.pack("<iiiQ", 0, 2, 0, 7), struct.pack("<iiii", 0, 1, 0, 7)],  # 8- and 4-byte `seen`
    ids=["v0.2", "v0.1"],
)
def test_non_finite_weights_are_counted_as_numpy_counts_them(tmp_path, header):
    path = tmp_path / "w.weights"
    bad = {0: math.nan, 17: math.inf, 4000: -math.inf, LENET_PARAMETERS - 1: math.nan}
    for values in ({}, bad, dict.fromkeys(range(LENET_PARAMETERS), math.nan)):
        path.write_bytes(lenet_with(values, header))
        oracle = np.frombuffer(path.read_bytes()[len(header) :], dtype="<f4")
        assert steps.non_finite_weights(path) == (int(np.count_nonzero(~np.isfinite(oracle))), oracle.size)
    assert steps.non_finite_weights(path) == (LENET_PARAMETERS, LENET_PARAMETERS)
    path.write_bytes(lenet_with({5: 3.4e38, 6: -3.4e38, 7: 1e-45}, header))  # large, tiny: finite
    assert steps.non_finite_weights(path) == (0, LENET_PARAMETERS)


def row(r: int, non_finite: int, seconds: float = 1.0) -> dict:
    return {
        "round": r, "top1": 0.098, "top5": 0.5, "images": 10000, "non_finite": non_finite,
        "parameters": LENET_PARAMETERS, "seconds": seconds,
    }  # fmt: skip


def test_the_lines_say_which_round_diverged_and_leave_the_others_as_they_were():
    assert steps.valid_line(row(1, 0)) == "valid on 10000 test images: top-1 0.0980, top-5 0.5000"
    assert steps.valid_line(row(2, 3)) == (
        f"valid on 10000 test images: top-1 0.0980, top-5 0.5000; DIVERGED: 3 of {LENET_PARAMETERS}"
        " weights are NaN or infinite"
    )
    lines = steps.table_lines([row(0, 0, 0.5), row(1, 0, 10.25), row(2, LENET_PARAMETERS, 20.0)])
    assert lines[:3] == [
        "round    top-1    top-5  elapsed s",
        "    0   0.0980   0.5000        0.5",
        "    1   0.0980   0.5000       10.2",  # the table of before, character for character
    ]
    assert lines[3] == (
        f"    2   0.0980   0.5000       20.0  DIVERGED: {LENET_PARAMETERS} of {LENET_PARAMETERS}"
        " weights are NaN or infinite"
    )
    old = {k: v for k, v in row(3, 0).items() if k in ("round", "top1", "top5", "seconds")}
    assert steps.table_lines([old])[1] == "    3   0.0980   0.5000        1.0"  # a results.json of before


def hashes(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.iterdir()}


@pytest.mark.component
@needs_component
def test_a_nan_global_model_is_validated_and_said_to_have_diverged(tmp_path):
    """Round 0 as a federation makes it (Darknet's init), then a round 1 model of NaNs: both are
    validated by the guest, only round 1 is said to have diverged, and no model file changes."""
    root = prepared_root(tmp_path, 1)
    s = steps.Settings(
        root=root, program=WASM, work="w", batches=1, base_cfg=str(REPO / "cfg/mnist_lenet.cfg")
    )
    steps.initialise(s)
    nan_model = s.path("w/global/round1.weights")
    nan_model.write_bytes(flat_lenet_weights(math.nan))
    models = hashes(s.path("w/global"))
    rows = [steps.global_row(s, r) for r in (0, 1)]
    assert [r["non_finite"] for r in rows] == [0, LENET_PARAMETERS]
    assert all(r["images"] == 20 and 0 <= r["top1"] <= r["top5"] <= 1 for r in rows)  # printed all the same
    assert "DIVERGED" not in steps.valid_line(rows[0])
    assert steps.valid_line(rows[1]).endswith(
        f"DIVERGED: {LENET_PARAMETERS} of {LENET_PARAMETERS} weights are NaN or infinite"
    )
    assert models == {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in s.path("w/global").iterdir()
    }
