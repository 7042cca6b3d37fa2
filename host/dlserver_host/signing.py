"""Ed25519 keys and signed manifests (``dl-server keygen``, ``--sign-key KEY``).

A signed manifest carries, under ``"signature"``, an Ed25519 signature over the rest of the
record in a canonical form: the JSON of the record without its ``"signature"`` key, keys
sorted, no spaces, non-ASCII escaped (``json.dumps(record, sort_keys=True,
separators=(",", ":"))``).  Everything the record says is covered: program and file
hashes, sources, outcome, and the policy's sha256 when the run had one.  Keys are PEM
(PKCS#8 private, SubjectPublicKeyInfo public); ``keygen`` also writes a self-signed X.509
certificate of the public key, which a policy can name as an identity.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import NameOID

ALGORITHM = "Ed25519"
COVERS = "the record without 'signature', as JSON with sorted keys, no spaces, ASCII"
SIGNATURE_KEY = "signature"


class KeyFileError(Exception):
    """A key or certificate file cannot be used (message is user-facing)."""


def canonical(record: dict) -> bytes:
    """The bytes that are signed: the record without its signature, canonical JSON."""
    body = {key: value for key, value in record.items() if key != SIGNATURE_KEY}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(key: Ed25519PublicKey) -> str:
    """sha256 of the 32-byte raw public key, in hex (what the manifest names the signer by)."""
    return hashlib.sha256(raw_public(key)).hexdigest()


def sign_record(record: dict, key: Ed25519PrivateKey) -> None:
    """Add the ``signature`` entry to the record, over everything else in it."""
    public = key.public_key()
    record[SIGNATURE_KEY] = {
        "algorithm": ALGORITHM,
        "public_key": base64.b64encode(raw_public(public)).decode(),
        "key_sha256": fingerprint(public),
        "covers": COVERS,
        "value": base64.b64encode(key.sign(canonical(record))).decode(),
    }


def signer_key(record: dict) -> Ed25519PublicKey:
    """The public key the record says it was signed with (ValueError if absent or malformed)."""
    entry = record.get(SIGNATURE_KEY)
    if not isinstance(entry, dict) or entry.get("algorithm") != ALGORITHM:
        raise ValueError("the manifest is not signed (no Ed25519 'signature' entry)")
    try:
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(entry["public_key"], validate=True))
    except (KeyError, TypeError, ValueError):
        raise ValueError("the signature's public_key is not an Ed25519 key") from None


def signature_valid(record: dict, key: Ed25519PublicKey) -> bool:
    entry = record[SIGNATURE_KEY]
    try:
        key.verify(base64.b64decode(entry["value"], validate=True), canonical(record))
    except (InvalidSignature, KeyError, TypeError, ValueError):
        return False
    return True


def _read_key_file(path: str, option: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise KeyFileError(f"{option} {path}: cannot read: {e.strerror or e}") from None


def load_private_key(path: str) -> Ed25519PrivateKey:
    data = _read_key_file(path, "--sign-key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise KeyFileError(f"--sign-key {path}: not an unencrypted PEM private key ({e})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"--sign-key {path}: not an Ed25519 key")
    return key


def load_public_key(path: str) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM public key or a PEM certificate."""
    data = _read_key_file(path, "--key")
    key: object
    try:
        if b"BEGIN CERTIFICATE" in data:
            key = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as e:
        raise KeyFileError(f"--key {path}: not a PEM public key or certificate ({e})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"--key {path}: not an Ed25519 key")
    return key


def certificate_key(pem: str) -> Ed25519PublicKey | None:
    """The Ed25519 key of a PEM certificate, or None (another algorithm, or unreadable)."""
    try:
        key = x509.load_pem_x509_certificate(pem.encode()).public_key()
    except ValueError:
        return None
    return key if isinstance(key, Ed25519PublicKey) else None


def self_signed_certificate(key: Ed25519PrivateKey, name: str, days: int) -> bytes:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .sign(key, None)
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def keygen(stem: str, name: str, days: int) -> list[Path]:
    """Write STEM.key (private, mode 0600), STEM.pub and STEM.crt; refuse to overwrite."""
    if days < 1:
        raise KeyFileError(f"keygen: --days must be at least 1, got {days}")
    paths = [Path(stem + suffix) for suffix in (".key", ".pub", ".crt")]
    for path in paths:
        if path.exists():
            raise KeyFileError(f"keygen: {path} exists (not overwritten)")
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        fd = os.open(paths[0], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(private)
        paths[1].write_bytes(public)
        paths[2].write_bytes(self_signed_certificate(key, name, days))
    except OSError as e:
        raise KeyFileError(f"keygen: cannot write {e.filename}: {e.strerror or e}") from None
    return paths
