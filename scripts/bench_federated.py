"""`make bench-federated`: wall time of the federation on Flower (simulation engine, clients in
parallel) against the local runner (dl-server-federated, one step after another), same
settings and seeds, run one after the other in the same command; then every round's global
model of the two compared by sha256 (they must be byte-identical).

    .venv/bin/python scripts/bench_federated.py --num-clients 4 --rounds 3 --batches 100 [--root R]

Needs MNIST prepared for --num-clients under the root (make mnist_training num-clients=N).
"""

import argparse
import hashlib
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parent.parent


def timed(cmd: list[str], root: Path) -> float:
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"bench-federated: {' '.join(cmd[:2])} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return seconds


def digests(directory: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.glob("round*.weights"))
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-clients", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batches", type=int, default=100)
    p.add_argument("--root", type=Path, default=Path("."))
    p.add_argument("--program", type=Path, default=REPO / "dl-server.wasm")
    opts = p.parse_args()
    root = opts.root.resolve()
    common = [
        "--num-clients",
        str(opts.num_clients),
        "--rounds",
        str(opts.rounds),
        "--batches",
        str(opts.batches),
    ]
    common += ["--program", str(opts.program.resolve()), "--root", str(root)]
    local = timed([str(BIN / "dl-server-federated"), *common, "--work", "federated-local"], root)
    flower = timed([str(BIN / "dl-server-flower"), *common, "--work", "federated-flower"], root)
    a, b = digests(root / "federated-local" / "global"), digests(root / "federated-flower" / "global")
    same = a == b and len(a) == opts.rounds + 1
    print(f"federation: {opts.num_clients} clients x {opts.rounds} rounds x {opts.batches} batches")
    print(f"{'runner':<32} {'wall s':>8}")
    print(f"{'local (dl-server-federated)':<32} {local:8.1f}")
    print(f"{'Flower simulation (1 CPU/client)':<32} {flower:8.1f}")
    print(f"ratio Flower / local: {flower / local:.2f}")
    for name in a:
        print(f"  {name}: {a[name][:16]}  {'same' if b.get(name) == a[name] else 'DIFFERENT'}")
    print("global models byte-identical" if same else "global models DIFFER")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
