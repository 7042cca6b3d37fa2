"""Which client gets which image.

Split ``--data-dist iid`` (the default): the training indices
``0..n_train-1`` are cut with ``numpy.array_split(numpy.arange(n_train), N)``
and client k (1-based) gets piece k-1; the same is done, independently, with
the test indices.  So each client gets a contiguous run of the official order,
the first ``n % N`` clients get one image more than the others, and the
concatenation of the client lists is exactly the global list.  (With N=10:
6000 training and 1000 test images per client; client 1 has t_00000..t_05999
and v_00000..v_00999.)

Split ``--data-dist non-iid`` (label skew, ``--alpha A`` default 0.5, ``--seed S``
default 0): with ``rng = numpy.random.default_rng(S)``, draw
``P = rng.dirichlet([A] * N, size=10)`` -- row c is how class c is shared
between the N clients.  Then for each class c = 0..9 in turn, the training
indices with label c (official order) are shuffled with ``rng.permutation``
and cut at ``round(cumsum(P[c]) * count)``: client k gets piece k-1.  The test
indices are then cut the same way with the same P (so each client's test list
has its own training label mix).  If some client ends up with no training or no
test image, P is drawn again from the same rng (at most 1000 times).  Small A
gives strong skew (A=0.1: most clients hold 1-3 classes), large A approaches
iid.  The same S, A, N and MNIST give the same split (the manifest keeps a
sha256 of the assignment; NumPy does not promise identical Generator streams
across its major versions).  File names keep the global index and label; a
client's lists are in official order; the global lists are in official order
(they do not concatenate the client lists).  Note that t_00000_c5.png is then
not necessarily in images_client1/ (args_files/prediction_one.cfg expects it
there): rerun with iid for that example.
"""

from __future__ import annotations

import hashlib
import struct

import numpy as np

from .dataset import CLASSES
from .errors import UsageError

DEFAULT_ALPHA = 0.5
DEFAULT_SEED = 0
NON_IID_ATTEMPTS = 1000

SPLIT_DESCRIPTION = {
    "iid": "numpy.array_split(arange(n), num_clients), contiguous, client k = piece k-1",
    "non-iid": "label skew: rng = numpy.random.default_rng(seed); P = rng.dirichlet([alpha] * "
    "num_clients, size=10); per class c, rng.permutation of its indices cut at "
    "round(cumsum(P[c]) * count), client k = piece k-1; test cut with the same P; "
    "redrawn while a client has no train or no test image",
}


def shards(n: int, num_clients: int) -> list[tuple[int, int]]:
    """[start, end) of each client's contiguous shard (numpy.array_split order)."""
    parts = np.array_split(np.arange(n), num_clients)
    out, start = [], 0
    for p in parts:
        out.append((start, start + len(p)))
        start += len(p)
    return out


def iid_split(n: int, num_clients: int) -> list[np.ndarray]:
    """Client k's indices (piece k-1 of numpy.array_split)."""
    return [np.arange(lo, hi) for lo, hi in shards(n, num_clients)]


def _cut_by_class(labels: np.ndarray, shares: np.ndarray, rng) -> list[np.ndarray]:
    """Share each class's indices between the clients: shuffled, cut at round(cumsum * count)."""
    num_clients = shares.shape[1]
    pieces: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for c in range(CLASSES):
        idx = rng.permutation(np.flatnonzero(labels == c))
        cuts = np.rint(np.cumsum(shares[c]) * len(idx)).astype(np.int64)
        cuts[-1] = len(idx)
        for k, part in enumerate(np.split(idx, cuts[:-1])):
            pieces[k].append(part)
    return [np.sort(np.concatenate(p)) for p in pieces]


def non_iid_split(
    train_y: np.ndarray, test_y: np.ndarray, num_clients: int, alpha: float, seed: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Label-skewed split: per class, Dirichlet(alpha) shares over the clients (module doc)."""
    rng = np.random.default_rng(seed)
    for _ in range(NON_IID_ATTEMPTS):
        shares = rng.dirichlet(np.full(num_clients, alpha), size=CLASSES)
        train = _cut_by_class(train_y, shares, rng)
        test = _cut_by_class(test_y, shares, rng)
        if all(len(p) for p in train) and all(len(p) for p in test):
            return train, test
    raise UsageError(
        f"--data-dist non-iid --alpha {alpha:g}: no split in {NON_IID_ATTEMPTS} draws gives each "
        f"of the {num_clients} clients at least one training and one test image "
        f"(use fewer clients or a larger alpha)"
    )


def split_digest(train: list[np.ndarray], test: list[np.ndarray]) -> str:
    """sha256 of the assignment: per client, its train then test indices as int64 little-endian."""
    h = hashlib.sha256()
    for part in (*train, *test):
        h.update(struct.pack("<q", len(part)))
        h.update(np.asarray(part, dtype="<i8").tobytes())
    return h.hexdigest()


def dist_params(data_dist: str, alpha: float, seed: int) -> dict:
    """What the manifest records about the split (and what a re-run must match)."""
    if data_dist == "iid":
        return {"data_dist": "iid"}
    return {"data_dist": data_dist, "alpha": float(alpha), "seed": int(seed)}
