"""``dl-server keygen | policy init | verify``: the subcommands around policies and signed runs."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

SUBCOMMANDS = ("keygen", "policy", "verify")
DEFAULT_POLICY_DAYS = 30
DEFAULT_MAX_MEMORY_MIB = 4096  # all a wasm32 guest can address
EXIT_OK, EXIT_FAILURE = 0, 1


def is_subcommand(argv: list[str]) -> bool:
    return bool(argv) and argv[0] in SUBCOMMANDS


def parse_expiry(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a time: {text!r} (e.g. 2027-01-31T12:00, UTC)") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Policies, keys and signed manifests.")
    sub = parser.add_subparsers(dest="command", required=True)

    keygen = sub.add_parser("keygen", help="write an Ed25519 key pair and a self-signed certificate")
    keygen.add_argument("stem", nargs="?", default="dl-server", help="writes STEM.key, STEM.pub, STEM.crt")
    keygen.add_argument("--name", help="the certificate's common name (default: STEM's base name)")
    keygen.add_argument("--days", type=int, default=365, help="certificate validity in days (default 365)")

    policy = sub.add_parser("policy", help="policy tools").add_subparsers(dest="action", required=True)
    init = policy.add_parser("init", help="write a Veracruz policy for a program and its sources")
    init.add_argument(
        "-r", "--program", required=True, metavar="WASM", help="the program (its sha256 is pinned)"
    )
    init.add_argument(
        "-i", "--input-source", dest="inputs", nargs="*", action="extend", default=[], metavar="PATH"
    )
    init.add_argument(
        "-o", "--output-source", dest="outputs", nargs="*", action="extend", default=[], metavar="PATH"
    )
    init.add_argument(
        "--certificate",
        action="append",
        default=[],
        metavar="CERT",
        help="an identity (PEM certificate, e.g. from keygen) that provides the inputs and reads the outputs",
    )
    init.add_argument(
        "--expiry", type=parse_expiry, help=f"UTC time (default: {DEFAULT_POLICY_DAYS} days from now)"
    )
    init.add_argument("-c", "--enable-clock", action="store_true", help="let the program read the clock")
    init.add_argument(
        "--max-memory-mib",
        type=int,
        default=DEFAULT_MAX_MEMORY_MIB,
        metavar="MIB",
        help=f"the program's memory cap (default {DEFAULT_MAX_MEMORY_MIB}, all a wasm32 guest can address)",
    )
    init.add_argument(
        "--hash", action="append", default=[], metavar="FILE", help="pin this file by its sha256"
    )
    init.add_argument(
        "--out", default="policy.json", metavar="POLICY", help="where to write (default policy.json)"
    )
    init.add_argument("--force", action="store_true", help="overwrite --out if it exists")

    from . import verify as verify_module

    verify = sub.add_parser(
        "verify",
        help="check a signed manifest (one line per check)",
        description=verify_module.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verify.add_argument(
        "manifest",
        metavar="MANIFEST|WORK",
        help="a run's manifest, or a federation's work directory: the chain of its provenance/ records "
        "(see dlserver_host.chain; --key then applies to every record)",
    )
    verify.add_argument("--key", metavar="PUB", help="the signer's public key or certificate (PEM)")
    verify.add_argument("--policy", metavar="POLICY", help="check that the run complied with this policy")
    verify.add_argument("--files", metavar="DIR", help="check the files under DIR against the manifest")
    return parser


def run(argv: list[str], prog: str, error) -> int:
    args = build_parser(prog).parse_args(argv)
    from .policy import PolicyError
    from .signing import KeyFileError
    from .sources import SourceError

    try:
        if args.command == "keygen":
            return _keygen(args)
        if args.command == "policy":
            return _policy_init(args)
        return _verify(args, error)
    except (PolicyError, KeyFileError, SourceError) as e:
        error(str(e))
        return EXIT_FAILURE


def _keygen(args: argparse.Namespace) -> int:
    from .signing import keygen

    for path in keygen(args.stem, args.name or Path(args.stem).name, args.days):
        print(path)
    return EXIT_OK


def _policy_init(args: argparse.Namespace) -> int:
    from .atomic import write_atomically
    from .manifest import sha256_file
    from .policy import PolicyError, check_document, make_policy, program_file_name
    from .sources import source_relpath

    cwd = Path.cwd()
    out = Path(args.out)
    if out.exists() and not args.force:
        raise PolicyError(f"policy init: {out} exists (--force to overwrite)")
    try:
        program_hash = sha256_file(args.program)[0]
        certificates = [Path(c).read_text() for c in args.certificate]
        pinned = {source_relpath(p, cwd).as_posix(): sha256_file(p)[0] for p in args.hash}
    except OSError as e:
        raise PolicyError(f"policy init: cannot read {e.filename}: {e.strerror or e}") from None
    for path in [*args.inputs, *args.outputs]:
        if not (cwd / source_relpath(path, cwd)).exists():
            raise PolicyError(f"policy init: source {path} does not exist")
    if not 0 < args.max_memory_mib < 1 << 32:
        raise PolicyError(f"policy init: --max-memory-mib must be positive, got {args.max_memory_mib}")
    document = make_policy(
        program_name=program_file_name(args.program, cwd),
        program_sha256=program_hash,
        inputs=[source_relpath(p, cwd).as_posix() for p in args.inputs],
        outputs=[source_relpath(p, cwd).as_posix() for p in args.outputs],
        certificates=certificates,
        expiry=args.expiry
        or datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(days=DEFAULT_POLICY_DAYS),
        enable_clock=args.enable_clock,
        max_memory_mib=args.max_memory_mib,
        file_hashes=pinned,
    )
    check_document(document, str(out), cwd)  # certificates valid, paths inside cwd
    write_atomically(out, json.dumps(document, indent=2, sort_keys=True) + "\n")
    print(out)
    return EXIT_OK


def _verify(args: argparse.Namespace, error) -> int:
    from .verify import verify

    if Path(args.manifest).is_dir():
        from .chain import verify_chain

        if args.policy is not None or args.files is not None:
            error(f"verify {args.manifest}: --policy and --files apply to one manifest, not a work directory")
            return EXIT_FAILURE
        failed = verify_chain(args.manifest, args.key, sys.stdout)
    else:
        failed = verify(args.manifest, args.key, args.policy, args.files, sys.stdout)
    if failed:
        error(f"verify {args.manifest}: failed: {', '.join(dict.fromkeys(failed))}")
        return EXIT_FAILURE
    return EXIT_OK
