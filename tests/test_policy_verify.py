"""`dl-server verify`: an untouched signed run passes; each change is caught and named.

One real signed run (LeNet weights aggregation, ~0.2 s), then each tampering on a fresh copy
of its workspace.  The signature is also checked independently of signing.py: the record
minus "signature", re-serialized here with sorted keys, verifies under the signer's key.
"""

import base64
import json
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from conftest import NEEDS_HOST_WASM, ROOT, flat_lenet_weights, lenet_aggregation, run_host
from dlserver_host import cli

pytestmark = NEEDS_HOST_WASM

SOURCES = ["-i", "args.cfg", "cfg", "model", "-o", "model"]


@pytest.fixture
def signed_run(program, tmp_path, monkeypatch) -> Path:
    ws = tmp_path / "run"
    (ws / "cfg").mkdir(parents=True)
    (ws / "model").mkdir()
    shutil.copy(ROOT / "cfg" / "mnist_lenet.cfg", ws / "cfg")
    (ws / "model" / "a.weights").write_bytes(flat_lenet_weights(1.0))
    (ws / "model" / "b.weights").write_bytes(flat_lenet_weights(3.0))
    monkeypatch.chdir(ws)
    assert cli.main(["keygen", "op"]) == 0
    assert cli.main(["keygen", "other"]) == 0
    Path("args.cfg").write_text("")
    assert cli.main(["policy", "init", "-r", program, *SOURCES, "--certificate", "op.crt"]) == 0
    args = lenet_aggregation("model/sum.weights", "model/a.weights", "model/b.weights")
    flags = ["--policy", "policy.json", "--manifest", "run.json", "--sign-key", "op.key"]
    assert run_host(program, args, *flags) == 0
    return ws


def verify(capfd, *flags: str) -> tuple[int, list[str], str]:
    capfd.readouterr()
    status = cli.main(["verify", "run.json", *flags])
    out, err = capfd.readouterr()
    return status, out.splitlines(), err


def failed(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("FAIL")]


def test_untouched_run_passes_and_the_signature_is_plain_ed25519(signed_run, capfd):
    status, lines, err = verify(capfd, "--key", "op.pub", "--policy", "policy.json", "--files", ".")
    assert status == 0 and err == "" and not failed(lines), lines
    assert "ok    signer: the key of --key op.pub" in lines
    record = json.loads(Path("run.json").read_text())
    assert (
        record["policy"]["sha256"]
        == __import__("hashlib").sha256(Path("policy.json").read_bytes()).hexdigest()
    )
    signature = record.pop("signature")
    key = Ed25519PublicKey.from_public_bytes(base64.b64decode(signature["public_key"]))
    key.verify(
        base64.b64decode(signature["value"]),
        json.dumps(record, sort_keys=True, separators=(",", ":")).encode(),
    )


def edit_json(path: str, change) -> None:
    doc = json.loads(Path(path).read_text())
    change(doc)
    Path(path).write_text(json.dumps(doc, indent=1))


TAMPERINGS = {
    "manifest: an output's hash": (
        lambda: edit_json(
            "run.json", lambda m: m["outputs"]["files"].update({"model/sum.weights": "0" * 64})
        ),
        [],
        "FAIL  signature: does not match the record",
    ),
    "manifest: the outcome": (
        lambda: edit_json("run.json", lambda m: m.update(exit_status=0, outcome="failed")),
        [],
        "FAIL  signature: does not match the record",
    ),
    "manifest: signature removed": (
        lambda: edit_json("run.json", lambda m: m.pop("signature")),
        [],
        "FAIL  signature: the manifest is not signed",
    ),
    "output file": (
        lambda: Path("model/sum.weights").write_bytes(flat_lenet_weights(5.0)),
        ["--files", "."],
        "FAIL  output files: differ: model/sum.weights",
    ),
    "input file": (
        lambda: Path("model/a.weights").unlink(),
        ["--files", "."],
        "FAIL  input files: missing: model/a.weights",
    ),
    "policy": (
        lambda: edit_json("policy.json", lambda p: p.update(enable_clock=True)),
        ["--policy", "policy.json"],
        "FAIL  policy: policy.json has sha256",
    ),
    "key": (lambda: None, ["--key", "other.pub"], "FAIL  signer: signed by key"),
    "key, re-signed by another": (
        lambda: resign("other.key"),
        ["--policy", "policy.json"],
        "FAIL  signer: key",
    ),
}


def resign(key_path: str) -> None:
    from dlserver_host.signing import load_private_key, sign_record

    edit_json("run.json", lambda m: sign_record(m, load_private_key(key_path)))


@pytest.mark.parametrize("name", list(TAMPERINGS))
def test_each_change_fails_naming_what_differs(signed_run, capfd, name):
    change, flags, expected = TAMPERINGS[name]
    change()
    status, lines, err = verify(capfd, *flags)
    assert status == 1
    assert any(line.startswith(expected) for line in failed(lines)), lines
    assert err.startswith("dl-server: error: verify run.json: failed: ") and err.count("\n") == 1


def test_verify_without_anyone_vouching_for_the_key_fails(signed_run, capfd):
    status, lines, _ = verify(capfd)
    assert status == 1
    assert failed(lines) == [
        next(line for line in lines if line.startswith("FAIL  signer: key ")),
    ]


def test_an_unsigned_record_or_a_run_without_policy_fails(signed_run, program, capfd):
    assert run_host(program, None, *SOURCES, "--manifest", "plain.json", "--sign-key", "op.key") == 0
    capfd.readouterr()
    assert cli.main(["verify", "plain.json", "--key", "op.pub", "--policy", "policy.json"]) == 1
    out = capfd.readouterr().out
    assert "FAIL  policy: the run had no policy" in out and "ok    signature" in out
