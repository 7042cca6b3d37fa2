"""``dl-server --policy POLICY.json``: a Veracruz global policy, read and enforced on this host.

The format is Veracruz's (veracruz-project/veracruz, policy-utils/src/policy.rs and
principal.rs as of late 2021, when programs carried ``pi_hash`` and a ``std_streams_table``;
``max_memory_mib`` and ``file_hashes`` come from its 2022 revision and are read too, as is
the 2023 layout where ``file_rights`` maps paths to ``"rwx"`` letters and a program is pinned
by its ``file_hashes`` entry)::

    {
      "identities": [{"id": 0, "certificate": "-----BEGIN CERTIFICATE-----...",
                      "file_rights": [{"file_name": "model", "rights": 558666}]}],
      "programs": [{"id": 0, "program_file_name": "dl-server.wasm", "pi_hash": "<sha256>",
                    "file_rights": [{"file_name": "args.cfg", "rights": 24582}, ...]}],
      "enclave_cert_expiry": {"year": 2027, "month": 1, "day": 1, "hour": 0, "minute": 0},
      "enable_clock": false,
      "max_memory_mib": 4096,
      "std_streams_table": [{"Stdout": {"file_name": "stdout", "rights": 534084}}, ...],
      "file_hashes": [{"file_path": "model/x.weights", "hash": "<sha256>"}],
      "execution_strategy": "JIT", "debug": false, "ciphersuite": "...", ...
    }

``rights`` are WASI rights bit sets, as Veracruz's ``generate-policy`` writes them: a
file may be read if ``fd_read`` (bit 1) is set, written if ``fd_write`` (bit 6) is.  A
right on a directory covers what lies under it.  File names are relative to the working
directory, which is the guest's root ``/`` (a leading ``/`` is dropped); ``stdin``,
``stdout`` and ``stderr`` name the standard streams, as in Veracruz.  Of the entries that
are a path or contain it, the longest decides (Veracruz's ``check_permission``).

Used here: the program's ``pi_hash`` (or its ``file_hashes`` entry), its file rights (read
rights are the input sources, write rights the output sources), ``enclave_cert_expiry``
(the policy's expiry, UTC), ``enable_clock``, ``max_memory_mib``, the standard streams'
rights, ``file_hashes`` (checked before the run), and the identities (ids unique,
certificates parsed and within their validity).  Read and type-checked but without effect
on a standalone host: ``execution_strategy`` (wasmtime always compiles), ``debug``,
``ciphersuite``, the URLs, ``proxy_service_cert`` and ``runtime_manager_hash_*`` (they
concern Veracruz's TLS sessions and attestation, which this host does not have), and the
identities' own rights (no client connects: the operator places the files).  Other keys are
ignored, as Veracruz's parser ignores them (among them the 2023 ``pipelines`` and
``native_modules``: this host runs one program).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

# WASI rights bits (wasi_snapshot_preview1), as Veracruz's generate-policy combines them.
FD_READ, FD_SEEK, FD_WRITE = 1 << 1, 1 << 2, 1 << 6
PATH_CREATE_DIRECTORY, PATH_CREATE_FILE, PATH_OPEN = 1 << 9, 1 << 10, 1 << 13
FD_READDIR, PATH_FILESTAT_SET_SIZE = 1 << 14, 1 << 19
READ_RIGHTS = PATH_OPEN | FD_READ | FD_SEEK | FD_READDIR
WRITE_RIGHTS = (
    FD_WRITE | PATH_CREATE_FILE | PATH_FILESTAT_SET_SIZE | FD_SEEK | PATH_OPEN | PATH_CREATE_DIRECTORY
)
STREAMS = ("stdin", "stdout", "stderr")
STREAM_KEYS = {"Stdin": "stdin", "Stdout": "stdout", "Stderr": "stderr"}
CIPHERSUITE = "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"
EXECUTION_STRATEGIES = ("Interpretation", "JIT")
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
MAX_POLICY_BYTES = 16 << 20
MIB = 1 << 20


class PolicyError(Exception):
    """The policy is malformed, or refuses the run (message is one user-facing line)."""


@dataclass
class Principal:
    """An identity (``certificate`` set) or a program (``file_name`` set) and its file rights."""

    id: int
    rights: dict[str, int]
    file_name: str = ""
    pi_hash: str | None = None
    certificate: str = ""

    def may(self, path: PurePosixPath, bit: int) -> bool:
        """Whether ``path`` may be used with ``bit``: of the entries that are it or contain it, the
        longest path decides (as in Veracruz's ``check_permission``)."""
        covering = [
            (len(PurePosixPath(name).parts), rights)
            for name, rights in self.rights.items()
            if _covers(PurePosixPath(name), path)
        ]
        return bool(covering) and bool(max(covering)[1] & bit)

    def paths(self, bit: int) -> list[str]:
        """The file names (not streams) whose rights have ``bit``, in the policy's order."""
        return [name for name, rights in self.rights.items() if rights & bit and name not in STREAMS]


@dataclass
class Policy:
    path: str
    sha256: str
    identities: list[Principal]
    programs: list[Principal]
    expiry: datetime
    enable_clock: bool
    max_memory_mib: int | None
    streams: dict[str, int] = field(default_factory=dict)
    file_hashes: dict[str, str] = field(default_factory=dict)

    def program_named(self, program: str, cwd: Path) -> Principal:
        """The program entry for the --program path: by its path from cwd, else by base name."""
        names = [relative_path(program, cwd), os.path.basename(program)]
        for name in names:
            for entry in self.programs:
                if entry.file_name == name:
                    return entry
        known = ", ".join(p.file_name for p in self.programs) or "none"
        raise PolicyError(f"policy {self.path}: program {program} is not among its programs ({known})")

    def expected_hash(self, program: Principal) -> str:
        digest = program.pi_hash or self.file_hashes.get(program.file_name)
        if digest is None:
            raise PolicyError(
                f"policy {self.path}: program {program.file_name} has no pi_hash nor file_hashes entry"
            )
        return digest

    def stream_allowed(self, program: Principal, stream: str) -> bool:
        """A standard stream is the program's if it or the streams table grants it."""
        bit = FD_READ if stream == "stdin" else FD_WRITE
        return bool((program.rights.get(stream, 0) | self.streams.get(stream, 0)) & bit)


def _covers(outer: PurePosixPath, inner: PurePosixPath) -> bool:
    return outer == PurePosixPath(".") or outer == inner or outer in inner.parents


def relative_path(path: str, cwd: Path) -> str:
    """A host path as the manifest records it: relative to cwd when inside it, else absolute."""
    absolute = Path(os.path.abspath(path))
    try:
        return absolute.relative_to(cwd).as_posix()
    except ValueError:
        return str(absolute)


def program_file_name(program: str, cwd: Path) -> str:
    """The name ``policy init`` gives a program: its path from cwd, else its base name."""
    name = relative_path(program, cwd)
    return os.path.basename(program) if os.path.isabs(name) else name


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load(path: str, cwd: Path, now: datetime | None = None) -> Policy:
    """Read and check a policy file; PolicyError names the file and the first problem."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_POLICY_BYTES + 1)
    except OSError as e:
        raise PolicyError(f"policy {path}: cannot read: {e.strerror or e}") from None
    if len(data) > MAX_POLICY_BYTES:
        raise PolicyError(f"policy {path}: larger than {MAX_POLICY_BYTES >> 20} MiB")
    try:
        doc = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise PolicyError(f"policy {path}: not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise PolicyError(f"policy {path}: bad JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except RecursionError:
        raise PolicyError(f"policy {path}: bad JSON: nested too deeply") from None
    return _Reader(path, cwd, now or datetime.now(UTC)).policy(doc, sha256_bytes(data))


def check_document(doc: dict, path: str, cwd: Path) -> None:
    """Check a policy document before it is written (as ``load`` would read it)."""
    text = json.dumps(doc).encode()
    _Reader(path, cwd, datetime.now(UTC)).policy(doc, sha256_bytes(text))


class _Reader:
    """Checks a parsed policy document field by field (Veracruz's required fields and types)."""

    def __init__(self, path: str, cwd: Path, now: datetime):
        self.path = path
        self.cwd = cwd
        self.now = now

    def fail(self, where: str, problem: str) -> PolicyError:
        return PolicyError(f"policy {self.path}: {where}: {problem}")

    def get(
        self, obj: dict, key: str, kind: type | tuple[type, ...], where: str, required: bool = True
    ) -> Any:
        if key not in obj:
            if required:
                raise self.fail(where, f"missing '{key}'")
            return None
        value = obj[key]
        wrong_bool = isinstance(value, bool) and kind in (int, (int, type(None)))
        if not isinstance(value, kind) or wrong_bool:
            raise self.fail(
                f"{where}.{key}" if where else key, f"expected {_kind_name(kind)}, got {_json_type(value)}"
            )
        return value

    def policy(self, doc: Any, digest: str) -> Policy:
        if not isinstance(doc, dict):
            raise self.fail("top level", f"expected an object, got {_json_type(doc)}")
        self.check_ignored(doc)
        identities = [
            self.identity(item, f"identities[{i}]") for i, item in enumerate(self.items(doc, "identities"))
        ]
        programs = [
            self.program(item, f"programs[{i}]") for i, item in enumerate(self.items(doc, "programs"))
        ]
        if not programs:
            raise self.fail("programs", "empty: the policy allows no program")
        self.unique([p.id for p in identities], "identities", "id")
        self.unique([p.id for p in programs], "programs", "id")
        self.unique([p.file_name for p in programs], "programs", "program_file_name")
        memory = self.get(doc, "max_memory_mib", int, "", required=False)
        if memory is not None and not 0 < memory < 1 << 32:
            raise self.fail("max_memory_mib", f"must be a positive 32-bit number, got {memory}")
        return Policy(
            path=self.path,
            sha256=digest,
            identities=identities,
            programs=programs,
            expiry=self.timepoint(self.get(doc, "enclave_cert_expiry", dict, "")),
            enable_clock=self.get(doc, "enable_clock", bool, ""),
            max_memory_mib=memory,
            streams=self.streams(doc),
            file_hashes=self.file_hashes(doc),
        )

    def check_ignored(self, doc: dict) -> None:
        for key in (
            "ciphersuite",
            "veracruz_server_url",
            "proxy_attestation_server_url",
            "proxy_service_cert",
        ):
            self.get(doc, key, str, "", required=False)
        for key in ("runtime_manager_hash_linux", "runtime_manager_hash_nitro"):
            self.get(doc, key, (str, type(None)), "", required=False)
        self.get(doc, "debug", bool, "", required=False)
        strategy = self.get(doc, "execution_strategy", str, "", required=False)
        if strategy is not None and strategy not in EXECUTION_STRATEGIES:
            raise self.fail("execution_strategy", f"expected Interpretation or JIT, got {strategy!r}")

    def items(self, doc: dict, key: str) -> list:
        items = self.get(doc, key, list, "")
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise self.fail(f"{key}[{i}]", f"expected an object, got {_json_type(item)}")
        return items

    def unique(self, values: list, section: str, key: str) -> None:
        seen = set()
        for value in values:
            if value in seen:
                raise self.fail(section, f"duplicate {key} {value!r}")
            seen.add(value)

    def rights(self, owner: dict, where: str) -> dict[str, int]:
        """file_rights: a list of {file_name, rights (WASI bits)}, or (Veracruz 2023) a map of
        path to "rwx" letters, read as generate-policy's READ_RIGHTS and WRITE_RIGHTS."""
        entries = self.get(owner, "file_rights", (list, dict), where)
        if isinstance(entries, dict):
            return {
                self.file_name(name, f"{where}.file_rights[{name!r}]"): self.letters(
                    letters, f"{where}.file_rights[{name!r}]"
                )
                for name, letters in entries.items()
            }
        table: dict[str, int] = {}
        for i, item in enumerate(entries):
            at = f"{where}.file_rights[{i}]"
            if not isinstance(item, dict):
                raise self.fail(at, f"expected an object, got {_json_type(item)}")
            name = self.file_name(self.get(item, "file_name", str, at), f"{at}.file_name")
            rights = self.get(item, "rights", int, at)
            if not 0 <= rights < 1 << 32:
                raise self.fail(f"{at}.rights", f"must be a 32-bit WASI rights set, got {rights}")
            if name in table:
                raise self.fail(at, f"duplicate file_name {name!r}")
            table[name] = rights
        return table

    def letters(self, value: Any, where: str) -> int:
        if not isinstance(value, str) or set(value) - set("rwx"):
            raise self.fail(where, f"expected letters of 'rwx', got {value!r}")
        return (READ_RIGHTS if "r" in value else 0) | (WRITE_RIGHTS if "w" in value else 0)

    def file_name(self, name: str, where: str) -> str:
        """A name as a path relative to cwd, refused if it leads outside (by '..' or a symlink)."""
        text = name.lstrip("/")
        if text in STREAMS:
            return text
        if "\0" in name or "\\" in name:
            raise self.fail(where, f"{name!r} is not a plain path")
        rel = PurePosixPath(text or ".")
        if ".." in rel.parts:
            raise self.fail(where, f"{name!r} lies outside the working directory ('..')")
        real = os.path.realpath(self.cwd / rel)
        if real != str(self.cwd) and not real.startswith(str(self.cwd).rstrip("/") + "/"):
            raise self.fail(where, f"{name!r} lies outside the working directory (it leads to {real})")
        return rel.as_posix()

    def identity(self, item: dict, where: str) -> Principal:
        ident = self.get(item, "id", int, where)
        certificate = self.get(item, "certificate", str, where)
        self.certificate(certificate, f"{where}.certificate")
        return Principal(id=ident, rights=self.rights(item, where), certificate=certificate)

    def certificate(self, text: str, where: str) -> None:
        from cryptography import x509

        if not text.rstrip("\n").endswith("-----END CERTIFICATE-----"):
            raise self.fail(where, "not a PEM certificate (no END CERTIFICATE line)")
        try:
            cert = x509.load_pem_x509_certificate(text.encode())
        except ValueError as e:
            raise self.fail(where, f"not a valid X.509 certificate: {e}") from None
        if not cert.not_valid_before_utc <= self.now <= cert.not_valid_after_utc:
            raise self.fail(
                where,
                f"not valid now (valid {cert.not_valid_before_utc:%Y-%m-%d %H:%M} to "
                f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC)",
            )

    def program(self, item: dict, where: str) -> Principal:
        ident = self.get(item, "id", int, where)
        name = self.get(item, "program_file_name", str, where)
        if not name.strip("/"):
            raise self.fail(f"{where}.program_file_name", "empty")
        digest = self.get(item, "pi_hash", str, where, required=False)
        if digest is not None and not SHA256_HEX.fullmatch(digest):
            raise self.fail(f"{where}.pi_hash", f"expected 64 lowercase hex digits, got {digest!r}")
        return Principal(
            id=ident, rights=self.rights(item, where), file_name=name.lstrip("/"), pi_hash=digest
        )

    def timepoint(self, value: dict) -> datetime:
        parts = [
            self.get(value, key, int, "enclave_cert_expiry")
            for key in ("year", "month", "day", "hour", "minute")
        ]
        try:
            year, month, day, hour, minute = parts
            return datetime(year, month, day, hour, minute, tzinfo=UTC)
        except ValueError as e:
            raise self.fail("enclave_cert_expiry", f"not a valid time: {e}") from None

    def streams(self, doc: dict) -> dict[str, int]:
        table: dict[str, int] = {}
        entries = self.get(doc, "std_streams_table", list, "", required=False) or []
        for i, entry in enumerate(entries):
            at = f"std_streams_table[{i}]"
            if not isinstance(entry, dict) or len(entry) != 1 or next(iter(entry)) not in STREAM_KEYS:
                raise self.fail(at, 'expected {"Stdin"|"Stdout"|"Stderr": {file_name, rights}}')
            key, rights = next(iter(entry.items()))
            if not isinstance(rights, dict):
                raise self.fail(f"{at}.{key}", f"expected an object, got {_json_type(rights)}")
            bits = self.get(rights, "rights", int, f"{at}.{key}")
            table[STREAM_KEYS[key]] = table.get(STREAM_KEYS[key], 0) | bits
        return table

    def file_hashes(self, doc: dict) -> dict[str, str]:
        table: dict[str, str] = {}
        for i, item in enumerate(self.get(doc, "file_hashes", list, "", required=False) or []):
            at = f"file_hashes[{i}]"
            if not isinstance(item, dict):
                raise self.fail(at, f"expected an object, got {_json_type(item)}")
            name = self.file_name(self.get(item, "file_path", str, at), f"{at}.file_path")
            digest = self.get(item, "hash", str, at)
            if not SHA256_HEX.fullmatch(digest):
                raise self.fail(f"{at}.hash", f"expected 64 lowercase hex digits, got {digest!r}")
            table[name] = digest
        return table


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {bool: "a boolean", int: "an integer", str: "a string", list: "an array", dict: "an object"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join("null" if k is type(None) else names[k] for k in kinds)


# ---- policy init ----------------------------------------------------------------------------


def timepoint(moment: datetime) -> dict[str, int]:
    return {
        "day": moment.day,
        "hour": moment.hour,
        "minute": moment.minute,
        "month": moment.month,
        "year": moment.year,
    }


def rights_table(reads: list[str], writes: list[str]) -> list[dict]:
    """Veracruz's file_rights list: READ_RIGHTS on reads, WRITE_RIGHTS on writes (both: or-ed)."""
    table: dict[str, int] = {}
    for names, bits in ((reads, READ_RIGHTS), (writes, WRITE_RIGHTS)):
        for name in names:
            table[name] = table.get(name, 0) | bits
    return [{"file_name": name, "rights": bits} for name, bits in table.items()]


def make_policy(
    *,
    program_name: str,
    program_sha256: str,
    inputs: list[str],
    outputs: list[str],
    certificates: list[str],
    expiry: datetime,
    enable_clock: bool,
    max_memory_mib: int,
    file_hashes: dict[str, str],
) -> dict:
    """A policy document in Veracruz's format for one program and its sources.

    Each certificate becomes an identity that provides the program and the inputs (write)
    and reads the outputs (read), as generate-policy's capability tables express it.
    """
    identities = [
        {
            "certificate": certificate,
            "file_rights": rights_table(outputs, [program_name, *inputs]),
            "id": ident,
        }
        for ident, certificate in enumerate(certificates)
    ]
    return {
        "ciphersuite": CIPHERSUITE,
        "debug": False,
        "enable_clock": enable_clock,
        "enclave_cert_expiry": timepoint(expiry),
        "execution_strategy": "JIT",
        "file_hashes": [{"file_path": name, "hash": digest} for name, digest in file_hashes.items()],
        "identities": identities,
        "max_memory_mib": max_memory_mib,
        "programs": [
            {
                "file_rights": rights_table(inputs, [*outputs, "stdout", "stderr"]),
                "id": 0,
                "pi_hash": program_sha256,
                "program_file_name": program_name,
            }
        ],
        "proxy_attestation_server_url": "",
        "proxy_service_cert": "",
        "runtime_manager_hash_linux": None,
        "runtime_manager_hash_nitro": None,
        "std_streams_table": [
            {"Stdin": {"file_name": "stdin", "rights": READ_RIGHTS}},
            {"Stdout": {"file_name": "stdout", "rights": WRITE_RIGHTS}},
            {"Stderr": {"file_name": "stderr", "rights": WRITE_RIGHTS}},
        ],
        "veracruz_server_url": "",
    }
