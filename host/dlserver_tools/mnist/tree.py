"""The files of data/mnist/ (module doc of the package): written, reused, checked, cleaned."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np

from dlserver_host.atomic import TEMP_SUFFIX, write_atomically

from .dataset import CLASSES, COLS, ROWS, Dataset
from .errors import Progress, UsageError, log
from .png import encode_png_rows
from .split import SPLIT_DESCRIPTION, dist_params, iid_split, non_iid_split, split_digest

FORMAT_VERSION = 1


def client_dir_name(k: int, num_clients: int) -> str:
    return "images" if num_clients == 1 else f"images_client{k}"


def marker_path(mnist_out: Path, num_clients: int) -> Path:
    return mnist_out / f".prepared-{num_clients}.json"


_GENERATED_DIR = re.compile(r"^images(_client\d+)?$")
_GENERATED_NAME = r"(mnist\.(train|valid)(\.client\d+)?\.list|\.prepared-\d+\.json)"
# a generated file, or what an interrupted atomic write of one left behind
_GENERATED_FILE = re.compile(rf"^({_GENERATED_NAME}|\.{_GENERATED_NAME}\.[^.]+{re.escape(TEMP_SUFFIX)})$")


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


def remove_leftovers(mnist_out: Path, keep_dirs: set[str], keep_files: dict[str, set[str]]) -> int:
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


def build(root: Path, ds: Dataset, num_clients: int, data_dist: str, alpha: float, seed: int) -> dict:
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
    keep_files: dict[str, set[str]] = {}  # dir name -> names of the files kept in it
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
        write_atomically(
            mnist_out / f"mnist.train.client{k}.list",
            "".join(train_paths[i] + "\n" for i in tr_parts[k - 1].tolist()),
        )
        write_atomically(
            mnist_out / f"mnist.valid.client{k}.list",
            "".join(test_paths[i] + "\n" for i in te_parts[k - 1].tolist()),
        )
        entry = {"client": k, "dir": rel_dir}
        if data_dist == "iid":  # contiguous ranges, as format-1 manifests have them
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
        log(
            f"{written} PNGs written, {total - written} reused ({moved} moved), "
            f"{removed} stale entries removed"
        )

    write_atomically(mnist_out / "mnist.train.list", "".join(p + "\n" for p in train_paths))
    write_atomically(mnist_out / "mnist.valid.list", "".join(p + "\n" for p in test_paths))

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
    write_atomically(marker_path(mnist_out, num_clients), json.dumps(manifest, indent=1) + "\n")
    return manifest
