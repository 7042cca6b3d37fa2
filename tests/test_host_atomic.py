"""dlserver_host.atomic: the one way the host and the tools replace a file."""

import os

import pytest

from dlserver_host.atomic import TEMP_SUFFIX, atomic_file, write_atomically


def test_replaces_by_rename_and_keeps_the_mode(tmp_path):
    dest = tmp_path / "f.txt"
    dest.write_text("old")
    os.chmod(dest, 0o640)
    inode = os.stat(dest).st_ino
    write_atomically(dest, "new")
    assert dest.read_text() == "new"
    assert os.stat(dest).st_ino != inode and os.stat(dest).st_mode & 0o777 == 0o640
    write_atomically(tmp_path / "sub" / "g.bin", b"\x00", private=True)
    assert os.stat(tmp_path / "sub" / "g.bin").st_mode & 0o777 == 0o600
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(TEMP_SUFFIX)]


def test_a_failed_write_leaves_the_destination_and_no_temporary_file(tmp_path):
    dest = tmp_path / "f.txt"
    dest.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(dest) as f:
        f.write(b"partial")
        assert os.path.dirname(f.name) == str(tmp_path) and f.name.endswith(TEMP_SUFFIX)
        raise RuntimeError
    assert dest.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]
