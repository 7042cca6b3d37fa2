"""kernels.read_files (guest/kernels/io.c), the bulk reader of image batches: each file is
stat'ed and opened relative to its directory, opened once per batch. Checked against Python's
own reading on paths of every shape, natively (the component runs the same C; the FIFO cases
through the wasmtime CLI are in tests/test_hardening_corpus.py)."""

import os

import pytest

from dlserver import kernels


def python_read(path: str, max_bytes: int = -1):
    """What read_files must give: the bytes of a regular file within max_bytes, else None."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not os.path.isfile(path) or (max_bytes >= 0 and st.st_size > max_bytes):
        return None
    with open(path, "rb") as f:
        return f.read()


@pytest.fixture
def tree(tmp_path, monkeypatch):
    """40 directories of 3 files each (more than the 16 the reader keeps open), a FIFO, a FIFO
    where a directory is expected, symlinks, an empty file and one of 200 KB (several preads)."""
    monkeypatch.chdir(tmp_path)
    for d in range(40):
        os.makedirs(f"d{d}/sub", exist_ok=True)
        for f in range(3):
            with open(f"d{d}/f{f}.png", "wb") as out:
                out.write(bytes([d, f]) * (d + f + 1))
    os.mkfifo("fifo")
    os.mkfifo("d1/fifo.png")
    os.symlink("d2/f1.png", "link.png")
    os.symlink("d3", "linkdir")
    os.symlink("fifo", "d4/to-fifo.png")
    open("empty.png", "wb").close()
    with open("d5/big.png", "wb") as out:
        out.write(os.urandom(200_000))
    with open("top.png", "wb") as out:
        out.write(b"top")
    return tmp_path


def test_every_file_of_a_batch_across_many_directories(tree):
    paths = [f"d{d}/f{f}.png" for f in range(3) for d in range(40)]  # directories taken in turn
    assert kernels.read_files(paths, -1) == [python_read(p) for p in paths]


def test_paths_of_every_shape_read_as_python_reads_them(tree):
    paths = [
        "top.png",  # no directory
        str(tree / "d7" / "f2.png"),  # absolute
        "d7/../d8/f0.png",
        "./d9/f1.png",
        "d10//f1.png",
        "link.png",
        "linkdir/f0.png",
        "empty.png",
        "d5/big.png",
        "d6/sub",  # a directory
        "d6/",  # no name
        "d6/missing.png",
        "missing/f0.png",
        "fifo",  # FIFOs: refused before an open that would wait for a writer
        "d1/fifo.png",
        "d4/to-fifo.png",
        "fifo/x.png",  # a FIFO where a directory should be
        "top.png/x.png",  # a file where a directory should be
        "",
        "/",
    ]
    got = kernels.read_files(paths, -1)
    assert got == [python_read(p) for p in paths]
    assert got[0] == b"top" and got[8] is not None and len(got[8]) == 200_000
    assert got[13:18] == [None] * 5


def test_the_size_limit_holds_for_each_file(tree):
    paths = ["d5/big.png", "d0/f0.png", "d39/f2.png"]
    assert kernels.read_files(paths, 100) == [python_read(p, 100) for p in paths]
    assert kernels.read_files(paths, 100)[0] is None


def test_names_that_are_not_strings_or_hold_nul_are_none(tree):
    assert kernels.read_files(["d0/f0.png", 3, "d0/f0.png\0x", b"d0/f0.png"], -1) == [
        python_read("d0/f0.png"),
        None,
        None,
        None,
    ]


def test_no_descriptor_stays_open_after_a_batch(tree):
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        kernels.read_files([f"d{d}/f0.png" for d in range(40)] + ["fifo/x.png", "missing/f0.png"], -1)
    assert len(os.listdir("/proc/self/fd")) == before
