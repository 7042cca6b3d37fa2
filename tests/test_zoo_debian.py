"""Issue 15's acceptance on Debian's darknet package (docs/darknet-contract.md §4): all 45 of its
network cfgs build, and a sample of them, one per output-layer kind and input form, prints in
dl-server.wasm what the native `darknet` binary prints on the same random weights and PNG
image (scripts/zoo_check.py; `make zoo-check` runs all 45)."""

import contextlib
import io
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from darknet_oracle import DARKNET_CFGS, needs_darknet
from dlserver import buffers
from dlserver.buffers import live_bytes
from dlserver.network import parse_network_cfg

sys.path.insert(0, str(ROOT / "scripts"))
import zoo_check

ALL_CFGS = sorted(p.stem for p in DARKNET_CFGS.glob("*.cfg")) if DARKNET_CFGS.exists() else []


@needs_darknet
def test_every_debian_cfg_builds(monkeypatch):
    """Each cfg builds (batch 1, as inference does), within the buffer limit (the whole of it:
    without a weights file a run gets less, buffers.allow_for_weights)."""
    assert len(ALL_CFGS) == 45
    monkeypatch.setattr(buffers, "_budget", buffers.LIMIT_BYTES)
    monkeypatch.chdir(DARKNET_CFGS)  # darknet9000 and yolo9000 name their tree files
    kinds = {}
    for name in ALL_CFGS:
        with contextlib.redirect_stderr(io.StringIO()) as table:
            net = parse_network_cfg(f"{name}.cfg", batch=1)
        assert "layer     filters    size" in table.getvalue(), name
        kinds[name] = net.output_layer.kind
        del net
    assert live_bytes() < 2**30  # the networks are gone, their buffers with them
    assert kinds["yolov3"] == "yolo" and kinds["yolov2"] == "region" and kinds["yolov1"] == "detection"
    assert kinds["rnn"] == kinds["gru"] == kinds["resnext50"] == kinds["darknet9000"] == "softmax"


@needs_darknet
@pytest.mark.slow
@pytest.mark.component
# classifiers (BN + shortcut, 1-channel input, plain), YOLOv2 region, YOLOv1 detection, YOLOv3
@pytest.mark.parametrize("name", ["resnet18", "go", "tiny", "yolov2-tiny-voc", "yolov1-tiny", "yolov3-tiny"])
def test_component_prints_what_native_darknet_prints(component, tmp_path: Path, name):
    outcome = zoo_check.check(name, root=tmp_path)
    assert outcome.status == "ok", f"{name}: {outcome.status} {outcome.detail}"
