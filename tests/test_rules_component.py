"""The rules inside dl-server.wasm give the native guest's bytes (wasm32 kernels, WASI's
random source): one run of each family under the wasmtime CLI."""

import numpy as np
import pytest

from conftest import run_wasmtime
from test_rules_common import clients, darknet_inputs

pytestmark = pytest.mark.component


@pytest.mark.parametrize(
    "flags",
    [
        ["-method", "bulyan:1"],
        ["-method", "multikrum:1:4", "-weights", "1,2,3,4,5,6,7"],
        ["-method", "geomed"],
        ["-method", "trimmed:0.2"],
        ["-method", "fedyogi:0.1:0.9:0.99:0.001", "-global", "g.weights", "-state-out", "s1"],
        ["-method", "dpadaptive:0.1:1:0.5:0.2:1", "-global", "g.weights", "-state-out", "s1", "-seed", "4"],
    ],
)
def test_component_equals_native(component, tmp_path, monkeypatch, flags):
    from dlserver.main import main

    monkeypatch.chdir(tmp_path)
    models = clients(np.random.default_rng(3), 7, outliers=1)
    paths = darknet_inputs(tmp_path, models, glob=np.mean(models, axis=0))
    args = ["aggregation", "darknet", "rule.cfg", "wasm.weights", *paths, *flags]
    result = run_wasmtime(tmp_path, *args)
    assert result.returncode == 0, result.stderr
    wasm_state = (tmp_path / "s1").read_bytes() if (tmp_path / "s1").exists() else None
    native_args = ["dl-server", *args]
    native_args[4] = "native.weights"
    assert main(native_args) == 0
    assert (tmp_path / "wasm.weights").read_bytes() == (tmp_path / "native.weights").read_bytes()
    if wasm_state is not None:
        assert (tmp_path / "s1").read_bytes() == wasm_state


def test_component_noise_is_secret_by_default(component, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    models = clients(np.random.default_rng(4), 3)
    paths = darknet_inputs(tmp_path, models, glob=models[0])
    outs = []
    for name in ("a.weights", "b.weights"):
        args = ["aggregation", "darknet", "rule.cfg", name, *paths]
        result = run_wasmtime(tmp_path, *args, "-method", "dpfixed:1:1", "-global", "g.weights")
        assert result.returncode == 0, result.stderr
        assert "NOT private" not in result.stdout and "noise multiplier 1, clip 1" in result.stdout
        outs.append((tmp_path / name).read_bytes())
    assert outs[0] != outs[1]
