"""`dl-server --policy`: malformed policies and refused runs, each one clear line and no run.

No guest runs here: every case is refused before the program is loaded (the "program" is a
few bytes that are not WebAssembly, so a run that got through would fail differently).
"""

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from dlserver_host import cli, commands, policy

PROGRAM = "prog.wasm"


@pytest.fixture
def ws(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    Path(PROGRAM).write_bytes(b"\0asm not really a component")
    for name in ("cfg", "model", "data"):
        Path(name).mkdir()
    Path("args.cfg").write_text("classifier\n")
    Path("data/a.txt").write_text("a\n")
    Path("secret.txt").write_text("no\n")
    return tmp_path


def init(*flags: str) -> dict:
    assert cli.main(["policy", "init", "-r", PROGRAM, "--force", *flags]) == 0
    return json.loads(Path("policy.json").read_text())


def refused(capsys, *flags: str, policy_file: str = "policy.json") -> str:
    """Run with the policy; assert exit 1, one error line and no manifest; return the line."""
    status = cli.main(["--program", PROGRAM, "--policy", policy_file, "--manifest", "run.json", *flags])
    err = capsys.readouterr().err
    assert status == 1
    assert err.count("\n") == 1 and err.startswith("dl-server: error: "), err
    assert not Path("run.json").exists()
    return err


def write(doc) -> None:
    Path("policy.json").write_text(doc if isinstance(doc, str) else json.dumps(doc))


def test_init_writes_veracruz_fields_with_the_programs_hash(ws):
    doc = init("-i", "args.cfg", "cfg", "model", "-o", "model", "--max-memory-mib", "512")
    (program,) = doc["programs"]
    assert program["pi_hash"] == policy.sha256_bytes(Path(PROGRAM).read_bytes())
    assert program["program_file_name"] == PROGRAM
    rights = {r["file_name"]: r["rights"] for r in program["file_rights"]}
    assert rights["args.cfg"] == policy.READ_RIGHTS
    assert rights["model"] == policy.READ_RIGHTS | policy.WRITE_RIGHTS
    assert rights["stdout"] & policy.FD_WRITE
    assert doc["max_memory_mib"] == 512 and doc["enable_clock"] is False
    assert set(doc["enclave_cert_expiry"]) == {"year", "month", "day", "hour", "minute"}
    # Veracruz's generate-policy values for 'r' and 'w' (READ_RIGHTS = 24582 with fd_readdir)
    assert (policy.READ_RIGHTS, policy.WRITE_RIGHTS) == (24582, 534084)


def test_one_byte_of_the_program_changed_refuses(ws, capsys):
    init("-i", "args.cfg")
    data = bytearray(Path(PROGRAM).read_bytes())
    data[5] ^= 1
    Path(PROGRAM).write_bytes(bytes(data))
    err = refused(capsys)
    assert "sha256" in err and "differs from the policy's pi_hash" in err


def test_expired_policy_refuses(ws, capsys):
    init("-i", "args.cfg", "--expiry", "2021-08-05T04:29")
    assert "expired at 2021-08-05 04:29 UTC" in refused(capsys)


@pytest.mark.parametrize(
    "flags",
    [["-i", "secret.txt"], ["-i", "args.cfg", "-o", "cfg"], ["-i", "data/../secret.txt"], ["-o", "./"]],
)
def test_ungranted_source_refuses(ws, capsys, flags):
    init("-i", "args.cfg", "data", "-o", "model")
    err = refused(capsys, *flags)
    assert "is not granted" in err or "'..'" in err


def test_clock_and_memory_beyond_the_policy_refuse(ws, capsys):
    init("-i", "args.cfg", "--max-memory-mib", "64")
    assert "enable_clock is false" in refused(capsys, "-c")
    assert "DL_SERVER_CLOCK" in refused(capsys, "--env", "DL_SERVER_CLOCK=1")
    assert "max_memory_mib 64" in refused(capsys, "--max-memory", "1G")


def test_pinned_input_that_differs_refuses(ws, capsys):
    init("-i", "args.cfg", "data", "--hash", "data/a.txt")
    Path("data/a.txt").write_text("b\n")
    assert "data/a.txt: sha256" in refused(capsys)


def test_sign_key_without_manifest_or_with_a_bad_key_refuses(ws, capsys):
    assert cli.main(["keygen", "op"]) == 0
    capsys.readouterr()
    assert cli.main(["--program", PROGRAM, "--sign-key", "op.key"]) == 1
    assert "--sign-key needs --manifest" in capsys.readouterr().err
    assert "not an unencrypted PEM private key" in refused(capsys, "--sign-key", "op.pub", policy_file="x")


def base_policy() -> dict:
    """A hand-written policy in Veracruz's 2021 layout (the fields policy init does not write too)."""
    return {
        "ciphersuite": "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        "debug": False,
        "enclave_cert_expiry": {"day": 1, "hour": 0, "minute": 0, "month": 1, "year": 2099},
        "execution_strategy": "Interpretation",
        "identities": [],
        "programs": [
            {
                "file_rights": [
                    {"file_name": "args.cfg", "rights": 8198},
                    {"file_name": "model", "rights": 533572},
                ],
                "id": 0,
                "pi_hash": policy.sha256_bytes(Path(PROGRAM).read_bytes()),
                "program_file_name": PROGRAM,
            }
        ],
        "proxy_attestation_server_url": "172.17.0.2:3010",
        "sinaloa_url": "172.17.0.2:3017",
        "mexico_city_hash_sgx": "4ff2b1a036fefbe51fee7a91e9f04a59fb22db1338583a56d84b076dd32e7792",
        "enable_clock": False,
        "std_streams_table": [{"Stdout": {"file_name": "stdout", "rights": 533572}}],
    }


def test_veracruz_layout_loads_with_its_rights_as_sources(ws):
    write(base_policy())
    loaded = policy.load("policy.json", ws)
    (program,) = loaded.programs
    assert program.paths(policy.FD_READ) == ["args.cfg"]
    assert program.paths(policy.FD_WRITE) == ["model"]
    assert loaded.stream_allowed(program, "stdout") and not loaded.stream_allowed(program, "stderr")
    assert loaded.max_memory_mib is None


def edit(path: str, value):
    """base_policy() with the value at path ('a.0.b'; value None deletes it)."""
    doc = base_policy()
    *parents, last = path.split(".")
    node = doc
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if value is None:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return doc


MALFORMED = [
    ("{ not json", "bad JSON at line 1 column 3"),
    ("[]", "top level: expected an object, got an array"),
    (lambda: edit("enable_clock", "yes"), "enable_clock: expected a boolean, got a string"),
    (lambda: edit("enable_clock", None), "missing 'enable_clock'"),
    (lambda: edit("programs.0.id", "0"), "programs[0].id: expected an integer, got a string"),
    (lambda: edit("programs.0.file_rights.0.rights", True), "rights: expected an integer, got a boolean"),
    (lambda: edit("programs.0.file_rights.0.rights", -1), "must be a 32-bit WASI rights set"),
    (lambda: edit("programs.0.pi_hash", "abc"), "pi_hash: expected 64 lowercase hex digits"),
    (
        lambda: edit("programs.0.program_file_name", "other.wasm"),
        "program prog.wasm is not among its programs",
    ),
    (lambda: edit("programs", []), "programs: empty"),
    (lambda: edit("execution_strategy", "AOT"), "expected Interpretation or JIT"),
    (lambda: edit("max_memory_mib", 0), "max_memory_mib: must be a positive"),
    (lambda: edit("enclave_cert_expiry.month", 13), "enclave_cert_expiry: not a valid time"),
    (lambda: edit("enclave_cert_expiry.day", 31.5), "day: expected an integer, got the number 31.5"),
    (lambda: edit("programs.0.file_rights.0.file_name", "../x"), "lies outside the working directory ('..')"),
    (lambda: edit("programs.0.file_rights.0.file_name", "/cfg/../../x"), "outside the working directory"),
    (lambda: edit("programs.0.file_rights.0.file_name", "out/x"), "leads to"),  # out -> /tmp (symlink)
    (lambda: edit("programs.0.file_rights.1.file_name", "args.cfg"), "duplicate file_name 'args.cfg'"),
    (lambda: edit("file_hashes", [{"file_path": "data/a.txt"}]), "file_hashes[0]: missing 'hash'"),
    (lambda: edit("std_streams_table", [{"Stdnet": {}}]), "std_streams_table[0]: expected"),
]


@pytest.mark.parametrize(("doc", "problem"), MALFORMED, ids=[m[1][:40] for m in MALFORMED])
def test_malformed_policy_one_line_no_run(ws, capsys, doc, problem):
    os.symlink("/tmp", "out")
    write(doc() if callable(doc) else doc)
    err = refused(capsys)
    assert err.startswith("dl-server: error: policy policy.json: ") and problem in err, err


def test_duplicate_ids(ws, capsys):
    doc = base_policy()
    doc["programs"].append(dict(doc["programs"][0], program_file_name="b.wasm"))
    write(doc)
    assert "programs: duplicate id 0" in refused(capsys)
    cli.main(["keygen", "op"])
    cert = Path("op.crt").read_text()
    doc = base_policy()
    doc["identities"] = [{"certificate": cert, "id": 3, "file_rights": []}] * 2
    write(doc)
    assert "identities: duplicate id 3" in refused(capsys)


def test_identity_certificates_are_checked(ws, capsys):
    doc = base_policy()
    doc["identities"] = [
        {
            "certificate": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----",
            "id": 0,
            "file_rights": [],
        }
    ]
    write(doc)
    assert "identities[0].certificate: not a valid X.509 certificate" in refused(capsys)
    doc["identities"][0]["certificate"] = expired_certificate()
    write(doc)
    assert "identities[0].certificate: not valid now (valid 2020-01-01 00:00 to 2021-01-01" in refused(capsys)
    assert cli.main(["keygen", "k", "--days", "0"]) == 1
    assert "--days must be at least 1" in capsys.readouterr().err


def expired_certificate() -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.x509.oid import NameOID

    key = Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "old")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(datetime(2020, 1, 1, tzinfo=UTC))
        .not_valid_after(datetime(2021, 1, 1, tzinfo=UTC))
        .sign(key, None)
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def test_init_refuses_sources_outside_or_missing(ws, capsys):
    assert cli.main(["policy", "init", "-r", PROGRAM, "-i", "../x"]) == 1
    assert "'..'" in capsys.readouterr().err
    assert cli.main(["policy", "init", "-r", PROGRAM, "-i", "nothere"]) == 1
    assert "source nothere does not exist" in capsys.readouterr().err
    assert not Path("policy.json").exists()


def test_subcommands_are_not_run_options():
    assert commands.is_subcommand(["verify", "x"]) and not commands.is_subcommand(["--program", "verify"])


def test_veracruz_2023_layout_rwx_maps_and_file_hashes_pin_the_program(ws, capsys):
    digest = policy.sha256_bytes(Path(PROGRAM).read_bytes())
    doc = base_policy()
    del doc["programs"][0]["pi_hash"]
    doc["programs"][0]["program_file_name"] = "/" + PROGRAM
    doc["programs"][0]["file_rights"] = {"/args.cfg": "r", "/data": "r", "/data/a.txt": "", "/model": "rw"}
    doc.update(file_hashes=[{"file_path": "/" + PROGRAM, "hash": digest}], pipelines=[], native_modules=[])
    write(doc)
    loaded = policy.load("policy.json", ws)
    (program,) = loaded.programs
    assert loaded.expected_hash(program) == digest
    assert program.paths(policy.FD_WRITE) == ["model"]
    # the longest covering entry decides: data/a.txt is withheld although data is readable
    assert program.may(policy.PurePosixPath("data/b.txt"), policy.FD_READ)
    assert not program.may(policy.PurePosixPath("data/a.txt"), policy.FD_READ)
    assert "source data/a.txt is not granted read access" in refused(capsys, "-i", "data/a.txt")
    doc["programs"][0]["file_rights"] = {"/args.cfg": "read"}
    write(doc)
    assert "file_rights['/args.cfg']: expected letters of 'rwx', got 'read'" in refused(capsys)
    doc["file_hashes"] = []
    doc["programs"][0]["file_rights"] = {}
    write(doc)
    assert "program prog.wasm has no pi_hash nor file_hashes entry" in refused(capsys)
