"""``dl-server --policy POLICY --sign-key KEY``: what the run command does with a policy and a key.

Before the run, ``prepare`` reads the policy and refuses (one line, nothing run, no
manifest) when the program is not the policy's (its sha256 differs from ``pi_hash``, or
its name is not among the programs), the policy has expired, a file it pins by hash
differs, or a requested source is not granted by the program's file rights.  Without
``-i``/``-o`` the program's read rights become the input sources and its write rights the
output sources.  The policy's ``enable_clock`` and ``max_memory_mib`` become the clock and
the memory cap (asking for more on the command line is refused; a smaller cap is kept), and
a standard stream the program is not granted is dropped.  The manifest then records the
policy (its sha256 and what it set) under ``"policy"``, and is signed with the key.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .policy import FD_READ, FD_WRITE, MIB, Policy, PolicyError, Principal, relative_path
from .policy import load as load_policy

CLOCK_VARIABLE = "DL_SERVER_CLOCK"


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--policy",
        metavar="POLICY",
        help="a Veracruz policy (JSON): run only the program it pins by hash, on the sources it "
        "grants, with its clock and memory settings (see `dl-server verify --help`)",
    )
    parser.add_argument(
        "--sign-key",
        metavar="KEY",
        help="sign the --manifest record with this Ed25519 private key (PEM; `dl-server keygen`)",
    )


class Guard:
    """The policy and key of one run: records the policy in the manifest and signs it."""

    def __init__(self, policy: Policy | None, program: Principal | None, key: Any, cwd: Path):
        self.policy = policy
        self.program = program
        self.key = key
        self.cwd = cwd
        self.entry: dict | None = None

    def attach(self, recorder) -> None:
        if self.entry is not None:
            recorder.record["policy"] = self.entry

    def seal(self, record: dict) -> None:
        """Sign the finished record (last, so that the signature covers all of it)."""
        if self.key is not None:
            from .signing import sign_record

            sign_record(record, self.key)

    def output(self, output):
        """The guest's output sink, with the streams the program is not granted dropped."""
        if self.policy is None or self.program is None:
            return output
        allowed = {s: self.policy.stream_allowed(self.program, s) for s in ("stdout", "stderr")}
        return output if all(allowed.values()) else _Muted(output, allowed)


class _Muted:
    """A GuestOutput whose ungranted streams go nowhere."""

    def __init__(self, output, allowed: dict[str, bool]):
        self._output = output
        self._allowed = allowed

    def stdout(self, data: bytes) -> None:
        if self._allowed["stdout"]:
            self._output.stdout(data)

    def stderr(self, data: bytes) -> None:
        if self._allowed["stderr"]:
            self._output.stderr(data)

    def __getattr__(self, name: str):
        return getattr(self._output, name)


def prepare(args: argparse.Namespace) -> Guard | None:
    """Apply --policy to args and load --sign-key; PolicyError refuses the run."""
    if args.policy is None and args.sign_key is None:
        return None
    cwd = Path.cwd()
    key = None
    if args.sign_key is not None:
        from .signing import KeyFileError, load_private_key

        if args.manifest is None:
            raise PolicyError("--sign-key needs --manifest FILE (the record it signs)")
        try:
            key = load_private_key(args.sign_key)
        except KeyFileError as e:
            raise PolicyError(str(e)) from None
    if args.policy is None:
        return Guard(None, None, key, cwd)
    policy = load_policy(args.policy, cwd)
    program = enforce(policy, args, cwd)
    guard = Guard(policy, program, key, cwd)
    guard.entry = {
        "path": relative_path(args.policy, cwd),
        "sha256": policy.sha256,
        "program_id": program.id,
        "program_file_name": program.file_name,
        "enable_clock": args.enable_clock,
        "max_memory_bytes": args.max_memory,
        "stdout": policy.stream_allowed(program, "stdout"),
        "stderr": policy.stream_allowed(program, "stderr"),
    }
    return guard


def enforce(policy: Policy, args: argparse.Namespace, cwd: Path, now: datetime | None = None) -> Principal:
    """Check the run against the policy and set args' sources, clock and memory from it."""
    from .compile_cache import default_cache_dir, wasm_digest

    program = policy.program_named(args.program, cwd)
    expected = policy.expected_hash(program)
    try:  # the digest the manifest records (remembered per file identity, as the run does)
        actual = wasm_digest(Path(args.program), None if args.no_cache else default_cache_dir())
    except OSError as e:
        raise PolicyError(f"program {args.program}: cannot read: {e.strerror or e}") from None
    if actual != expected:
        raise PolicyError(
            f"program {args.program}: sha256 {actual} differs from the policy's pi_hash {expected} "
            f"(program {program.id} of {policy.path})"
        )
    now = now or datetime.now(UTC)
    if now >= policy.expiry:
        raise PolicyError(f"policy {policy.path}: expired at {policy.expiry:%Y-%m-%d %H:%M} UTC")
    _check_pinned_files(policy, program, cwd)
    _apply_sources(policy, program, args, cwd)
    _apply_limits(policy, args)
    return program


def _check_pinned_files(policy: Policy, program: Principal, cwd: Path) -> None:
    from .manifest import sha256_file

    for name, expected in policy.file_hashes.items():
        if name == program.file_name:
            continue
        try:
            actual = sha256_file(cwd / name)[0]
        except OSError as e:
            raise PolicyError(f"policy {policy.path}: file_hashes: {name}: {e.strerror or e}") from None
        if actual != expected:
            raise PolicyError(f"{name}: sha256 {actual} differs from the policy's file_hashes {expected}")


def _apply_sources(policy: Policy, program: Principal, args: argparse.Namespace, cwd: Path) -> None:
    from .sources import SourceError, source_relpath

    if not args.inputs and not args.outputs:
        args.inputs = program.paths(FD_READ)
        args.outputs = program.paths(FD_WRITE)
        return
    for sources, bit, role in ((args.inputs, FD_READ, "read"), (args.outputs, FD_WRITE, "write")):
        for source in sources:
            try:
                rel = source_relpath(source, cwd)
            except SourceError as e:
                raise PolicyError(str(e)) from None
            if not program.may(rel, bit):
                granted = ", ".join(program.paths(bit)) or "none"
                raise PolicyError(
                    f"policy {policy.path}: source {source} is not granted {role} access "
                    f"(program {program.file_name} may {role}: {granted})"
                )


def _apply_limits(policy: Policy, args: argparse.Namespace) -> None:
    if args.enable_clock and not policy.enable_clock:
        raise PolicyError(
            f"policy {policy.path}: -c/--enable-clock asked, but the policy's enable_clock is false"
        )
    if any(name == CLOCK_VARIABLE for name, _ in args.env):
        raise PolicyError(f"policy {policy.path}: --env {CLOCK_VARIABLE} is set by the policy's enable_clock")
    args.enable_clock = policy.enable_clock
    if policy.max_memory_mib is not None:
        cap = policy.max_memory_mib * MIB
        if args.max_memory is not None and args.max_memory > cap:
            raise PolicyError(
                f"policy {policy.path}: --max-memory exceeds its max_memory_mib {policy.max_memory_mib}"
            )
        args.max_memory = args.max_memory or cap
