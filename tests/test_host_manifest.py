"""`dl-server --manifest FILE`: the provenance record of a run, with the real dl-server.wasm.

Runs the host in-process (cli.main) in a small workspace: zero LeNet weights, one
MNIST-like image, the repo's cfg files.  Set DL_SERVER_WASM to test another build.
"""

import hashlib
import json
import os
import shutil
import subprocess
from datetime import datetime
from pathlib import Path

import pytest

from conftest import HOST_WASM, NEEDS_HOST_WASM, ROOT, flat_lenet_weights, lenet_aggregation, run_host
from dlserver_host import manifest, runtime

pytestmark = NEEDS_HOST_WASM

AGGREGATE = lenet_aggregation("model/sum.weights", "model/a.weights", "model/b.weights")
KEYS = [
    "format",
    "started_utc",
    "duration_seconds",
    "command_line",
    "cwd",
    "host",
    "program",
    "guest_argv",
    "args_file",
    "inputs",
    "outputs",
    "outcome",
    "exit_status",
    "error",
    "hashing",
]


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def ws(tmp_path, monkeypatch) -> Path:
    ws = tmp_path / "ws"
    (ws / "cfg").mkdir(parents=True)
    shutil.copy(ROOT / "cfg" / "mnist_lenet.cfg", ws / "cfg" / "mnist_lenet.cfg")
    (ws / "cfg" / "sub").mkdir()
    (ws / "cfg" / "sub" / "note.txt").write_text("nested\n")
    (ws / "model").mkdir()
    (ws / "model" / "a.weights").write_bytes(flat_lenet_weights(1.0))
    (ws / "model" / "b.weights").write_bytes(flat_lenet_weights(3.0))
    (ws / "out").mkdir()
    monkeypatch.chdir(ws)
    return ws


def load(path) -> dict:
    return json.loads(Path(path).read_text())


def test_a_successful_run_is_recorded(program, ws, tmp_path):
    record_path = tmp_path / "records" / "run.json"  # parent created
    flags = ["-i", "args.cfg", "cfg", "model/a.weights", "model/b.weights", "-o", "model"]
    status = run_host(program, AGGREGATE, *flags, "--manifest", str(record_path))
    assert status == 0
    m = load(record_path)
    assert list(m) == KEYS
    assert m["format"] == "dl-server-manifest/1"
    assert datetime.fromisoformat(m["started_utc"]).tzinfo is not None
    assert m["started_utc"].endswith("Z")
    assert m["duration_seconds"] > 0
    assert m["command_line"] == ["dl-server", "--program", program, *flags, "--manifest", str(record_path)]
    assert m["cwd"] == str(ws)
    assert m["host"]["wasmtime"] == runtime.wasmtime_version()
    assert m["program"] == {"path": program, "sha256": sha(HOST_WASM)}
    assert m["guest_argv"] == [HOST_WASM.name, *AGGREGATE]
    assert m["args_file"] == "args.cfg"
    # every input file, hashed; a directory's digest is the sha256sum listing's
    files = m["inputs"]["files"]
    assert files == {
        rel: sha(ws / rel)
        for rel in [
            "args.cfg",
            "cfg/mnist_lenet.cfg",
            "cfg/sub/note.txt",
            "model/a.weights",
            "model/b.weights",
        ]
    }
    cfg_source = m["inputs"]["sources"][1]
    listing = "".join(f"{files[rel]}  {rel}\n" for rel in sorted(["cfg/mnist_lenet.cfg", "cfg/sub/note.txt"]))
    assert cfg_source == {
        "path": "cfg",
        "kind": "dir",
        "files": 2,
        "bytes": (ws / "cfg/mnist_lenet.cfg").stat().st_size + 7,
        "sha256": hashlib.sha256(listing.encode()).hexdigest(),
    }
    assert m["inputs"]["sources"][0] == {
        "path": "args.cfg",
        "kind": "file",
        "bytes": (ws / "args.cfg").stat().st_size,
        "sha256": files["args.cfg"],
    }
    # what was written back
    assert m["outputs"] == {
        "sources": ["model"],
        "files": {"model/sum.weights": sha(ws / "model/sum.weights")},
    }
    assert (ws / "model/sum.weights").read_bytes() == flat_lenet_weights(2.0)
    assert (m["outcome"], m["exit_status"], m["error"]) == ("succeeded", 0, None)
    assert m["hashing"]["files"] == 5 and m["hashing"]["complete"] is True
    assert m["hashing"]["seconds"] >= 0 and m["hashing"]["seconds_added"] >= 0
    assert [p.name for p in record_path.parent.iterdir()] == ["run.json"]  # no temporary left


def test_directory_digest_matches_sha256sum(program, ws, tmp_path):
    if not shutil.which("sha256sum"):
        pytest.skip("no sha256sum")
    args = lenet_aggregation("out/sum.weights", "model/a.weights", "model/b.weights")
    assert (
        run_host(
            program,
            args,
            "-i",
            "args.cfg",
            "cfg",
            "model",
            "-o",
            "out",
            "--manifest",
            str(tmp_path / "m.json"),
        )
        == 0
    )
    m = load(tmp_path / "m.json")
    listing = subprocess.run(
        "find model -type f | LC_ALL=C sort | xargs sha256sum | sha256sum",
        shell=True,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[0]
    assert [s["sha256"] for s in m["inputs"]["sources"] if s["path"] == "model"] == [listing]


def test_a_failing_guest_is_recorded_and_writes_nothing_back(program, ws, tmp_path, capfd):
    before = (ws / "model").iterdir()
    before = sorted(p.name for p in before)
    args = lenet_aggregation("model/sum.weights", "model/a.weights", "model/missing.weights")
    flags = ["-i", "args.cfg", "cfg", "model", "-o", "model"]
    status = run_host(program, args, *flags, "--manifest", str(tmp_path / "m.json"))
    assert status == 1
    assert "missing.weights" in capfd.readouterr().err
    assert sorted(p.name for p in (ws / "model").iterdir()) == before
    m = load(tmp_path / "m.json")
    assert (m["outcome"], m["exit_status"]) == ("failed", 1)
    assert m["outputs"] == {"sources": ["model"], "files": {}}
    assert "model/a.weights" in m["inputs"]["files"]


def test_a_host_error_is_recorded(program, ws, tmp_path, capfd):
    status = run_host(program, AGGREGATE, "-i", "args.cfg", "nowhere", "--manifest", str(tmp_path / "m.json"))
    assert status == 1
    m = load(tmp_path / "m.json")
    assert (m["outcome"], m["exit_status"]) == ("host error", 1)
    assert "nowhere" in m["error"]
    assert m["command_line"][-2:] == ["--manifest", str(tmp_path / "m.json")]


def test_without_args_cfg_the_guest_argv_is_its_name(program, ws, tmp_path):
    status = run_host(program, None, "-i", "cfg", "--manifest", str(tmp_path / "m.json"))
    assert status == 1  # no args.cfg visible: the guest says so
    m = load(tmp_path / "m.json")
    assert m["args_file"] is None and m["guest_argv"] == [HOST_WASM.name]


def test_args_cfg_seen_through_the_whole_tree(program, ws, tmp_path):
    status = run_host(program, AGGREGATE, "-i", "./", "-o", "out", "--manifest", str(tmp_path / "m.json"))
    m = load(tmp_path / "m.json")
    assert status == 1  # the output goes to model/, not an output source
    assert m["args_file"] == "args.cfg" and m["guest_argv"][1:] == AGGREGATE
    assert "model/a.weights" in m["inputs"]["files"] and "args.cfg" in m["inputs"]["files"]


def test_manifest_path_that_is_a_directory_is_refused_before_running(program, ws, capfd):
    status = run_host(
        program, AGGREGATE, "-i", "args.cfg", "cfg", "model", "-o", "model", "--manifest", "out"
    )
    assert status == 1
    assert "--manifest" in capfd.readouterr().err
    assert not (ws / "model/sum.weights").exists()


def test_manifest_inside_an_output_source_only_where_asked(program, ws):
    status = run_host(
        program, AGGREGATE, "-i", "args.cfg", "cfg", "model", "-o", "model", "--manifest", "model/run.json"
    )
    assert status == 0
    m = load(ws / "model/run.json")
    assert list(m["outputs"]["files"]) == ["model/sum.weights"]  # the record is not an output
    assert sorted(p.name for p in (ws / "model").iterdir()) == [
        "a.weights",
        "b.weights",
        "run.json",
        "sum.weights",
    ]


def test_manifest_never_overwrites_a_file_the_guest_wrote(program, ws, capfd):
    args = lenet_aggregation("model/run.json", "model/a.weights", "model/b.weights")
    status = run_host(
        program, args, "-i", "args.cfg", "cfg", "model", "-o", "model", "--manifest", "model/run.json"
    )
    assert status == 1
    assert "the guest wrote that file too" in capfd.readouterr().err
    assert (ws / "model/run.json").read_bytes() == flat_lenet_weights(2.0)


def test_hashing_is_streaming_and_counts_bytes(tmp_path):
    big = tmp_path / "big.bin"
    data = os.urandom(3 * manifest.READ_BLOCK + 17)
    big.write_bytes(data)
    assert manifest.sha256_file(big) == (hashlib.sha256(data).hexdigest(), len(data))
