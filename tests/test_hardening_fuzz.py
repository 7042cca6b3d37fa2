"""Each atheris target (scripts/fuzz.py) for a few seconds: no crash, and it does run inputs."""

import re
import subprocess
import sys

import pytest

from conftest import ROOT

pytest.importorskip("atheris")
TARGETS = ["png", "jpeg", "cfg", "weights", "onnx", "onnx-input", "onnx-aggregation", "args"]


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_target_runs_without_a_crash(target, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "fuzz.py"),
            target,
            "--seconds",
            "3",
            "--corpus",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    done = re.search(r"^Done (\d+) runs", result.stderr, re.MULTILINE)
    assert result.returncode == 0, result.stderr[-3000:]
    assert done and int(done.group(1)) > 10, result.stderr[-3000:]
