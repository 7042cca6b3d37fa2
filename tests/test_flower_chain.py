"""`dl-server verify WORK`: the provenance chain of a federation (dlserver_host.chain).

A tiny federation (2 clients x 2 rounds x 2 batches on fake MNIST) run once by the local
runner; an intact copy verifies, and each tampering of a copy is reported naming its culprit:
a client's weights file, a client's manifest, a global model, a client that trained from
another model than the previous global one (really run, then aggregated as if honest), and an
aggregation that left a client out. The Flower layout (replies under server/round<r>/) is
checked in test_flower_simulation.py on the end-to-end run's own work directory.
"""

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dlserver_tools.flower import steps
from test_federated import prepared_root, run_federated

REPO = Path(__file__).resolve().parent.parent
WASM = REPO / "dl-server.wasm"

pytestmark = [
    pytest.mark.component,
    pytest.mark.skipif(not WASM.is_file(), reason="dl-server.wasm not built (run make)"),
]


def verify(work: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dlserver_host.cli", "verify", str(work), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def federation(tmp_path_factory) -> Path:
    """The root of a finished 2 x 2 x 2 federation in root/fed."""
    root = prepared_root(tmp_path_factory.mktemp("chain"), 2, n_train=40, n_test=20)
    result = run_federated(
        root, "--num-clients", "2", "--rounds", "2", "--batches", "2", "--work", "fed", "--program", str(WASM)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return root


@pytest.fixture
def copy(federation, tmp_path) -> Path:
    """A copy of the federation's root (data and work directory) to tamper with."""
    shutil.copytree(federation, tmp_path / "root")
    return tmp_path / "root"


def failed_lines(result: subprocess.CompletedProcess) -> list[str]:
    assert result.returncode == 1, result.stdout + result.stderr
    return [line for line in result.stdout.splitlines() if line.startswith("FAIL")]


def test_an_intact_federation_verifies(federation):
    result = verify(federation / "fed")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("ok    program: all 10 runs ran the program") for line in lines)  # init,
    # 4 train, 2 aggregate, 3 valid
    digest = hashlib.sha256((federation / "fed" / "global" / "round1.weights").read_bytes()).hexdigest()
    assert any(
        line.startswith(f"ok    round 1: global model {digest[:12]}… = aggregation of clients [1, 2]")
        for line in lines
    )
    assert lines[-1].startswith("ok    chain: ")


def test_a_tampered_client_weights_file_is_named(copy):
    kept = copy / "fed" / "client2" / "round1.weights"
    data = bytearray(kept.read_bytes())
    data[100] ^= 1
    kept.write_bytes(bytes(data))
    fails = failed_lines(verify(copy / "fed"))
    assert fails
    assert all("fed/client2/round1.weights" in line for line in fails), fails
    assert any("round1-aggregate.json says" in line for line in fails)


def test_a_tampered_global_model_is_named(copy):
    (copy / "fed" / "global" / "round2.weights").write_bytes(
        (copy / "fed" / "global" / "round1.weights").read_bytes()
    )
    [line] = failed_lines(verify(copy / "fed"))
    assert line.startswith("FAIL  fed/global/round2.weights: has sha256")
    assert "provenance/round2-aggregate.json says" in line


def test_a_tampered_client_manifest_is_named(copy):
    path = copy / "fed" / "provenance" / "round2-client1.json"
    record = json.loads(path.read_text())
    record["outputs"]["files"]["fed/client1/out/mnist_lenet.weights"] = "0" * 64
    path.write_text(json.dumps(record))
    fails = failed_lines(verify(copy / "fed"))
    assert any(
        line.startswith("FAIL  fed/client1/round2.weights:") and "round2-client1.json" in line
        for line in fails
    )
    assert any(
        "round2-aggregate.json: input fed/client1/round2.weights" in line
        and "client 1's record provenance/round2-client1.json says it wrote 000000000000" in line
        for line in fails
    ), fails


def test_a_run_of_another_program_is_named(copy):
    path = copy / "fed" / "provenance" / "round1-client2.json"
    record = json.loads(path.read_text())
    record["program"]["sha256"] = "2" * 64
    path.write_text(json.dumps(record))
    [line] = failed_lines(verify(copy / "fed"))
    assert line.startswith("FAIL  program: provenance/round1-client2.json ran another program than the init")


def test_a_client_that_trained_from_another_model_is_named(copy):
    """Client 1 of round 2 really trains from round 0's model, and the server aggregates its
    output as usual: every file matches its record, but the chain does not hold."""
    s = steps.Settings(
        root=copy, program=WASM, work="fed", batches=2, base_cfg=str(REPO / "cfg" / "mnist_lenet.cfg")
    )
    steps.train(s, 1, 2, "fed/global/round0.weights")
    steps.aggregate(s, 2, ["fed/client1/round2.weights", "fed/client2/round2.weights"], None, "mean")
    fails = failed_lines(verify(copy / "fed"))
    assert any(
        line.startswith(
            "FAIL  provenance/round2-client1.json: client 1 trained from fed/global/round0.weights"
        )
        and "not the global model of round 1" in line
        for line in fails
    ), fails
    assert any(line.startswith("FAIL  provenance/round2-valid.json: did not validate") for line in fails)


def test_an_aggregation_of_one_client_twice_is_named(copy):
    """The server averages client 1's model twice instead of clients 1 and 2."""
    s = steps.Settings(
        root=copy, program=WASM, work="fed", batches=2, base_cfg=str(REPO / "cfg" / "mnist_lenet.cfg")
    )
    steps.aggregate(s, 2, ["fed/client1/round2.weights", "fed/client1/round2.weights"], None, "mean")
    fails = failed_lines(verify(copy / "fed"))
    assert any(
        line.startswith("FAIL  provenance/round2-aggregate.json: input fed/client1/round2.weights")
        and "is no round-2 client's output" in line
        for line in fails
    ), fails


def test_a_changed_signed_record_is_named(copy, tmp_path):
    """Signed records: a record changed after signing fails its signature; --key pins the signer."""
    from dlserver_host.signing import keygen, load_private_key, sign_record

    key, pub, _ = keygen(str(tmp_path / "k"), "k", 1)
    private = load_private_key(str(key))
    for path in (copy / "fed" / "provenance").glob("*.json"):
        record = json.loads(path.read_text())
        sign_record(record, private)
        path.write_text(json.dumps(record))
    assert verify(copy / "fed", "--key", str(pub)).returncode == 0
    path = copy / "fed" / "provenance" / "round1-valid.json"
    record = json.loads(path.read_text())
    record["duration_seconds"] = 0.5
    path.write_text(json.dumps(record))
    fails = failed_lines(verify(copy / "fed"))
    assert fails == [
        "FAIL  provenance/round1-valid.json: the signature does not match: the record was changed"
    ]
    other, other_pub, _ = keygen(str(tmp_path / "o"), "o", 1)
    fails = failed_lines(verify(copy / "fed", "--key", str(other_pub)))
    assert any("signed by key" in line and "not by --key" in line for line in fails)


def test_a_directory_without_a_federation_is_refused(tmp_path):
    fails = failed_lines(verify(tmp_path))
    assert fails == [f"FAIL  round 0: no provenance/round0-init.json under {tmp_path}"]


@pytest.fixture(scope="module")
def fedadam(tmp_path_factory) -> Path:
    """A 2 x 2 x 2 federation whose server runs FedAdam (a rule with a state file)."""
    root = prepared_root(tmp_path_factory.mktemp("fedadam"), 2, n_train=40, n_test=20)
    args = ["--num-clients", "2", "--rounds", "2", "--batches", "2", "--work", "fed", "--program", str(WASM)]
    result = run_federated(root, *args, "--method", "fedadam:0.1:0.9:0.99:0.001")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "  server: fedadam:0.1:0.9:0.99:0.001 of 2 models" in result.stdout
    return root


def test_a_fedopt_rule_carries_its_state_from_round_to_round(fedadam):
    result = verify(fedadam / "fed")
    assert result.returncode == 0, result.stdout + result.stderr
    rounds = [
        json.loads((fedadam / "fed" / "provenance" / f"round{r}-aggregate.json").read_text()) for r in (1, 2)
    ]
    assert rounds[0]["guest_argv"][-4:] == [
        "-global",
        "fed/global/round0.weights",
        "-state-out",
        "fed/server/aggregate1/rule.state",
    ]
    assert rounds[1]["guest_argv"][-6:-2] == [
        "-global",
        "fed/global/round1.weights",
        "-state",
        "fed/server/aggregate1/rule.state",
    ]
    written = rounds[0]["outputs"]["files"]["fed/server/aggregate1/rule.state"]
    assert rounds[1]["inputs"]["files"]["fed/server/aggregate1/rule.state"] == written
    assert (fedadam / "fed" / "server" / "aggregate1" / "rule.state").read_bytes().startswith(b"DLSSTAT1")


def test_a_rule_state_from_elsewhere_is_named(fedadam, tmp_path):
    shutil.copytree(fedadam, tmp_path / "root")
    path = tmp_path / "root" / "fed" / "provenance" / "round2-aggregate.json"
    record = json.loads(path.read_text())
    record["inputs"]["files"]["fed/server/aggregate1/rule.state"] = "1" * 64
    path.write_text(json.dumps(record))
    fails = failed_lines(verify(tmp_path / "root" / "fed"))
    assert len(fails) == 1 and "is not the state round 1's aggregation wrote" in fails[0]
    assert fails[0].startswith(
        "FAIL  provenance/round2-aggregate.json: -state fed/server/aggregate1/rule.state (111111111111…)"
    )
