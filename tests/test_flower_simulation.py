"""End to end on Flower's simulation engine (Ray) and its deployment runtime (SuperLink and
SuperNodes on loopback, TLS and SuperNode authentication on): `dl-server-flower` against the
local runner (`dl-server-federated`, the oracle) on the same fake MNIST, seeds and settings:
every round's global model must be byte-identical. A ServerApp that fails is reported as a
failure (`flwr run --stream` itself exits 0); a SuperNode whose key is not registered is refused."""

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dlserver_tools.flower import deployment, run
from test_federated import prepared_root, run_federated
from test_flower_chain import verify

REPO = Path(__file__).resolve().parent.parent
WASM = REPO / "dl-server.wasm"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.component,
    pytest.mark.skipif(not WASM.is_file(), reason="dl-server.wasm not built (run make)"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_flower(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dlserver_tools.flower.run", "--root", str(root), "--program", str(WASM)]
        + ["--port", str(free_port()), *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=root,
    )


def hashes(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.glob("*.weights"))}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = prepared_root(tmp_path_factory.mktemp("flower"), 3, n_train=300, n_test=40)
    shutil.copytree(REPO / "cfg", root / "cfg")
    return root


SETTINGS = [
    "--num-clients",
    "3",
    "--rounds",
    "2",
    "--batches",
    "20",
    "--valid-list",
    "data/mnist/mnist.valid.list",
]


@pytest.fixture(scope="module")
def oracle(root):
    """The local runner's global models (and results) for SETTINGS."""
    local = run_federated(root, *SETTINGS, "--work", "local", "--program", str(WASM))
    assert local.returncode == 0, local.stderr
    return hashes(root / "local" / "global")


def test_simulation_equals_the_local_runner(root, oracle):
    flower = run_flower(root, *SETTINGS, "--work", "fl", "--fraction-evaluate", "1")
    assert flower.returncode == 0, flower.stdout[-3000:] + flower.stderr[-3000:]
    ours = hashes(root / "fl" / "global")
    assert list(ours) == ["round0.weights", "round1.weights", "round2.weights"]
    assert ours == oracle
    table = json.loads((root / "fl" / "results.json").read_text())["table"]
    assert [row["round"] for row in table] == [0, 1, 2]
    assert [row["top1"] for row in table] == [
        row["top1"] for row in json.loads((root / "local" / "results.json").read_text())["table"]
    ]
    assert "round    top-1" in flower.stdout
    # the clients also validated every global model on their own test shards (weighted mean)
    clients_valid = json.loads((root / "fl" / "results.json").read_text())["clients_valid"]
    assert sorted(clients_valid) == ["1", "2"]
    assert all(0 <= m["top1"] <= m["top5"] <= 1 for m in clients_valid.values())
    assert all(
        (root / "fl" / "provenance" / f"round{r}-client{k}-valid.json").is_file()
        for r in (1, 2)
        for k in (1, 2, 3)
    )
    # every sandboxed step left its manifest; each client trained from the global model it was sent
    for k in (1, 2, 3):
        record = json.loads((root / "fl" / "provenance" / f"round2-client{k}.json").read_text())
        assert record["outcome"] == "succeeded"
        assert record["inputs"]["files"][f"fl/client{k}/global1.weights"] == ours["round1.weights"]
    # no SuperLink or simulation left running
    left = subprocess.run(["pgrep", "-f", f"flower-superlink.*{root}"], capture_output=True, text=True)
    assert left.stdout == ""
    # the provenance chain holds; a reply file the server aggregated, once changed, is named
    assert verify(root / "fl").returncode == 0
    # as on a server whose clients are elsewhere: their records only as the server received them
    shutil.copytree(root / "fl", root / "server-only" / "fl")
    for record in (root / "server-only" / "fl" / "provenance").glob("round*-client*.json"):
        record.unlink()
    server_only = verify(root / "server-only" / "fl")
    assert server_only.returncode == 0, server_only.stdout
    assert "ok    round 2: global model" in server_only.stdout
    reply = root / "fl" / "server" / "round2" / "client3.weights"
    reply.write_bytes(reply.read_bytes()[:-4] + b"\0\0\0\0")
    chain = verify(root / "fl")
    assert chain.returncode == 1
    assert "FAIL  fl/server/round2/client3.weights: has sha256" in chain.stdout


@pytest.fixture(scope="module")
def broken_root(tmp_path_factory):
    """Three clients, the third one's train list names an image that is not there."""
    root = prepared_root(tmp_path_factory.mktemp("broken"), 3, n_train=60, n_test=20)
    shutil.copytree(REPO / "cfg", root / "cfg")
    lst = root / "data" / "mnist" / "mnist.train.client3.list"
    lst.write_text(lst.read_text().replace(".png", "-missing.png", 1))
    return root


def test_a_failing_client_is_an_error_reply_and_the_round_goes_on(broken_root):
    args = ["--num-clients", "3", "--rounds", "1", "--batches", "2", "--min-clients", "2", "--work", "ok"]
    result = run_flower(broken_root, *args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rounds = json.loads((broken_root / "ok" / "results.json").read_text())["rounds"]
    assert rounds[0]["clients"] == [1, 2]
    [refused] = rounds[0]["refused"]
    assert refused.startswith("node ") and ": error reply: " in refused
    assert "-missing.png" in refused


@pytest.mark.parametrize("mode", [[], ["--flwr-run"]], ids=["in-process", "flwr-run"])
def test_a_failed_server_app_fails_the_command(broken_root, mode):
    # all three needed: the round, so the ServerApp, fails; `flwr run --stream` exits 0 all the same
    args = ["--num-clients", "3", "--rounds", "1", "--batches", "2", "--work", "bad", *mode]
    result = run_flower(broken_root, *args)
    assert result.returncode == 1
    if mode:
        assert "finished:failed" in result.stderr
        assert "round 1: 2 good replies, at least 3 needed" in result.stdout
    else:
        assert (
            "federated: error: the simulation failed: StepError: round 1: 2 good replies, at least 3 needed"
            in (result.stderr)
        )
        assert "DEPRECATED" not in result.stderr
    assert not (broken_root / "bad" / "results.json").exists()


def test_deployment_with_tls_and_node_auth_equals_the_local_runner(root, oracle):
    flower = run_flower(root, *SETTINGS, "--work", "dep", "--deployment")
    assert flower.returncode == 0, flower.stdout[-3000:] + flower.stderr[-3000:]
    assert hashes(root / "dep" / "global") == oracle
    assert verify(root / "dep").returncode == 0
    assert "Flower deployment (TLS, SuperNode auth)" in flower.stdout
    log = (root / "build" / "flwr-deploy" / "logs" / "superlink.log").read_text()
    assert "Uvicorn running on https://127.0.0.1:" in log
    assert log.count("[ControlServicer.RegisterNode] Created node_id=") == 3
    left = subprocess.run(["pgrep", "-f", f"flower-super.*{root}"], capture_output=True, text=True)
    assert left.stdout == ""


def test_an_unregistered_supernode_is_refused(tmp_path):
    home = tmp_path / "flwr"
    home.mkdir()
    env = {**os.environ, **run.OFFLINE, "FLWR_HOME": str(home)}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    port = free_port()
    with deployment.deployment(run.tool, env, home, tmp_path, 1, port, run.stop):
        private, _ = deployment.make_node_key(home / "tls", "intruder")
        with open(tmp_path / "intruder.log", "wb") as out:  # a file: the node's children keep pipes open
            intruder = subprocess.Popen(
                [run.tool("flower-supernode"), "--superlink", f"127.0.0.1:{port}", "--root-certificates",
                 str(home / "tls" / "ca.crt"), "--auth-supernode-private-key", str(private),
                 "--port", str(free_port()), "--max-retries", "1", "--max-wait-time", "5"],
                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        try:
            intruder.wait(90)  # it gives up by itself
        finally:
            run.stop(intruder)
    assert intruder.returncode != 0
    log = (home / "logs" / "superlink.log").read_text()
    assert "No SuperNode found with the given public key" in log


def test_a_supernode_killed_mid_round_does_not_hang_the_server(tmp_path):
    """Client 3's SuperNode is killed when its train message arrives: the server waits at most
    --round-timeout for it, then the round goes on with clients 1 and 2."""
    root = prepared_root(tmp_path, 3, n_train=60, n_test=20)
    shutil.copytree(REPO / "cfg", root / "cfg")
    logs = root / "build" / "flwr-deploy" / "logs"
    args = ["--num-clients", "3", "--rounds", "1", "--batches", "5", "--min-clients", "2"]
    args += ["--round-timeout", "20", "--work", "killed", "--deployment", "--port", str(free_port())]
    cmd = [sys.executable, "-m", "dlserver_tools.flower.run", "--root", str(root), "--program", str(WASM)]
    log = root / "killed.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([*cmd, *args], cwd=root, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 180
        node_log = logs / "supernode3.log"
        while not (node_log.is_file() and "Receiving: train message" in node_log.read_text()):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline
            time.sleep(0.1)
        os.killpg(int((logs / "supernode3.pid").read_text()), signal.SIGKILL)  # the node and its ClientApp
        killed_at = time.monotonic()
        proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, log.read_text()[-3000:]
    assert time.monotonic() - killed_at < 20 + 60  # the round timeout, then validation and shutdown
    rounds = json.loads((root / "killed" / "results.json").read_text())["rounds"]
    assert rounds[0]["clients"] == [1, 2]
    assert rounds[0]["no_reply"] == 1
    assert "no reply from 1 of 3 nodes" in log.read_text()
