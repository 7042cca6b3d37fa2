"""``dl-server verify MANIFEST [--key PUB] [--policy POLICY] [--files DIR]``: check a signed run.
(``dl-server verify WORK`` on a federation's work directory checks its chain: chain.py.)

One line per check (``ok`` or ``FAIL``), then exit 0 only if every check passed:

- signature: the record is signed and the signature covers it as it is now;
- signer: the signing key is ``--key`` (a public key or certificate), or else one of the
  policy's identities (by its certificate's key); a key nobody vouches for fails;
- policy (with ``--policy``): its sha256 is the one the run recorded, and the run complied
  with it: the program's hash is the policy's, the run started before the expiry, every
  source was granted, the clock and memory cap were the policy's, pinned files matched;
- files (with ``--files DIR``): the program, the input files and the output files under DIR
  are the ones the manifest names (an input the run rewrote is checked as an output).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path, PurePosixPath

from .manifest import FORMAT, sha256_file
from .policy import FD_READ, FD_WRITE, MIB, Policy, PolicyError
from .policy import load as load_policy
from .signing import KeyFileError, certificate_key, fingerprint, load_public_key, signature_valid, signer_key

SHOWN_NAMES = 3


class Report:
    """The lines of a verification, printed as they come."""

    def __init__(self, out):
        self.out = out
        self.failed: list[str] = []

    def ok(self, check: str, text: str) -> None:
        print(f"ok    {check}: {text}", file=self.out, flush=True)

    def fail(self, check: str, text: str) -> None:
        print(f"FAIL  {check}: {text}", file=self.out, flush=True)
        self.failed.append(check)


def verify(manifest: str, key: str | None, policy: str | None, files: str | None, out) -> list[str]:
    """Run the checks; return the names of those that failed."""
    report = Report(out)
    try:
        record = json.loads(Path(manifest).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        report.fail("manifest", f"{manifest}: cannot read a JSON record: {getattr(e, 'strerror', None) or e}")
        return report.failed
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        report.fail("manifest", f"{manifest}: not a {FORMAT} record")
        return report.failed
    loaded = _load_policy(report, policy, record)
    _check_signature(report, record, key, loaded)
    if loaded is not None:
        _check_compliance(report, record, loaded)
    if files is not None:
        _check_files(report, record, Path(files))
    return report.failed


def _load_policy(report: Report, path: str | None, record: dict) -> Policy | None:
    if path is None:
        return None
    try:
        started = datetime.fromisoformat(str(record.get("started_utc")))
        # Read as of the run: an identity's certificate or the policy may have expired since.
        return load_policy(path, Path(str(record.get("cwd", "."))), now=started)
    except (PolicyError, ValueError) as e:
        report.fail("policy", str(e))
        return None


def _check_signature(report: Report, record: dict, key_path: str | None, policy: Policy | None) -> None:
    try:
        signer = signer_key(record)
    except ValueError as e:
        report.fail("signature", str(e))
        return
    digest = fingerprint(signer)
    if not signature_valid(record, signer):
        report.fail("signature", "does not match the record: the manifest was changed after it was signed")
        return
    report.ok("signature", f"valid Ed25519 signature by key {digest[:16]}…")
    if key_path is not None:
        try:
            expected = fingerprint(load_public_key(key_path))
        except KeyFileError as e:
            report.fail("signer", str(e))
            return
        if expected != digest:
            report.fail("signer", f"signed by key {digest[:16]}…, not by --key {key_path} ({expected[:16]}…)")
        else:
            report.ok("signer", f"the key of --key {key_path}")
        return
    identities = policy.identities if policy is not None else []
    for identity in identities:
        cert_key = certificate_key(identity.certificate)
        if cert_key is not None and fingerprint(cert_key) == digest:
            report.ok("signer", f"identity {identity.id} of the policy (its certificate's key)")
            return
    report.fail("signer", f"key {digest[:16]}… is vouched for by neither --key nor an identity of the policy")


def _check_compliance(report: Report, record: dict, policy: Policy) -> None:
    entry = record.get("policy")
    if not isinstance(entry, dict):
        report.fail("policy", "the run had no policy (no 'policy' entry in the manifest)")
        return
    if entry.get("sha256") != policy.sha256:
        report.fail(
            "policy", f"{policy.path} has sha256 {policy.sha256[:16]}…, the run's was {entry.get('sha256')}"
        )
        return
    report.ok("policy", f"{policy.path} is the run's policy (sha256 {policy.sha256[:16]}…)")
    cwd = Path(str(record.get("cwd", ".")))
    program_record = record.get("program") or {}
    try:
        program = policy.program_named(str(program_record.get("path")), cwd)
        expected = policy.expected_hash(program)
    except PolicyError as e:
        report.fail("program", str(e))
        return
    if program_record.get("sha256") != expected:
        report.fail(
            "program", f"sha256 {program_record.get('sha256')} is not the policy's pi_hash {expected}"
        )
    else:
        report.ok("program", f"{program_record.get('path')} has the policy's pi_hash (program {program.id})")
    started = datetime.fromisoformat(str(record["started_utc"]))
    if started >= policy.expiry:
        report.fail(
            "expiry",
            f"the run started {record['started_utc']}, after the expiry {policy.expiry:%Y-%m-%d %H:%M}",
        )
    else:
        report.ok(
            "expiry", f"the run started before the policy's expiry ({policy.expiry:%Y-%m-%d %H:%M} UTC)"
        )
    ungranted = [
        f"{role} {source}"
        for role, bit, sources in (
            ("input", FD_READ, [s.get("path") for s in record["inputs"]["sources"]]),
            ("output", FD_WRITE, record["outputs"]["sources"]),
        )
        for source in sources
        if not program.may(PurePosixPath(str(source)), bit)
    ]
    if ungranted:
        report.fail("sources", "not granted by the policy: " + _names(ungranted))
    else:
        count = len(record["inputs"]["sources"]) + len(record["outputs"]["sources"])
        report.ok("sources", f"all {count} sources granted by the program's file rights")
    cap = policy.max_memory_mib * MIB if policy.max_memory_mib is not None else None
    limits = (entry.get("enable_clock"), entry.get("max_memory_bytes"))
    if limits[0] != policy.enable_clock or (cap is not None and (limits[1] is None or limits[1] > cap)):
        report.fail(
            "limits",
            f"the run had clock={limits[0]}, memory cap {limits[1]}; the policy says "
            f"clock={policy.enable_clock}, max_memory_mib {policy.max_memory_mib}",
        )
    else:
        report.ok(
            "limits",
            f"clock {'on' if limits[0] else 'off'}, memory cap {limits[1]} bytes, as the policy says",
        )
    inputs = record["inputs"]["files"]
    differ = [
        name for name, digest in policy.file_hashes.items() if name in inputs and inputs[name] != digest
    ]
    if differ:
        report.fail("file_hashes", "inputs differ from the policy's hashes: " + _names(differ))
    elif policy.file_hashes:
        report.ok("file_hashes", f"{len(policy.file_hashes)} pinned files as the policy says")


def _check_files(report: Report, record: dict, root: Path) -> None:
    program = record.get("program") or {}
    outputs: dict = record["outputs"]["files"]
    inputs = {name: digest for name, digest in record["inputs"]["files"].items() if name not in outputs}
    groups = [("program file", {str(program.get("path")): program.get("sha256")})]
    groups += [("input files", inputs), ("output files", outputs)]
    for check, expected in groups:
        missing, differ = [], []
        for name, digest in expected.items():
            try:
                actual = sha256_file(root / name)[0]
            except OSError:
                missing.append(name)
                continue
            if actual != digest:
                differ.append(name)
        if missing or differ:
            parts = [
                f"differ: {_names(differ)}" if differ else "",
                f"missing: {_names(missing)}" if missing else "",
            ]
            report.fail(check, "; ".join(p for p in parts if p) + f" (under {root})")
        else:
            report.ok(check, f"{len(expected)} as the manifest names them (under {root})")


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:SHOWN_NAMES])
    return shown + (f" and {len(names) - SHOWN_NAMES} more" if len(names) > SHOWN_NAMES else "")
