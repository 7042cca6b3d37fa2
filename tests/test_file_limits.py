"""The size limits of the one file reader (guest/dlserver/files.py) as limits.Limit values: each
caller's error line, word for word, names the value this run reads and the variable raising it."""

import pytest

from dlserver import limits
from dlserver.argv import read_args_file
from dlserver.config import read_text
from dlserver.errors import DLServerError
from dlserver.files import read_input_file


@pytest.fixture
def this_run(monkeypatch):
    """Set DL_SERVER_* variables as a run would see them (limits.refresh), restored after."""

    def setenv(name: str, value: str) -> None:
        monkeypatch.setenv(name, value)
        limits.refresh()

    yield setenv
    monkeypatch.undo()
    limits.refresh()


def error_line(read) -> str:
    with pytest.raises(DLServerError) as raised:
        read()
    return str(raised.value)


def test_each_reader_names_its_limit_and_the_variable_raising_it(tmp_path, this_run):
    path = tmp_path / "f"
    path.write_bytes(bytes(100))
    this_run("DL_SERVER_MAX_FILE_BYTES", "99")
    assert error_line(lambda: read_input_file(str(path), "weights file")) == (
        f"{path}: cannot open weights file: 100 bytes is over the limit 99"
        " (DL_SERVER_MAX_FILE_BYTES raises it)"
    )
    assert read_text(str(path), "cfg") == "\0" * 100  # a text file has its own limit
    this_run("DL_SERVER_MAX_TEXT_BYTES", "50")
    assert error_line(lambda: read_text(str(path), "cfg")) == (
        f"{path}: cannot open cfg: 100 bytes is over the limit 50 (DL_SERVER_MAX_TEXT_BYTES raises it)"
    )
    assert error_line(lambda: read_args_file(str(path))) == (
        f"{path}: cannot read argument file: 100 bytes is over the limit 50"
        " (DL_SERVER_MAX_TEXT_BYTES raises it)"
    )


def test_a_limit_is_this_runs_value_read_when_asked(this_run):
    assert limits.file_bytes() == limits.Limit(512 << 20, "DL_SERVER_MAX_FILE_BYTES")
    assert limits.text_bytes() == limits.Limit(64 << 20, "DL_SERVER_MAX_TEXT_BYTES")
    this_run("DL_SERVER_MAX_TEXT_BYTES", "7")
    assert limits.text_bytes() == limits.Limit(7, "DL_SERVER_MAX_TEXT_BYTES")
    assert limits.file_bytes().value == 512 << 20


def test_a_file_at_its_limit_is_read(tmp_path, this_run):
    path = tmp_path / "f"
    path.write_bytes(bytes(range(256)) * 1024)  # 256 KiB: several 64 KiB reads
    this_run("DL_SERVER_MAX_FILE_BYTES", str(256 * 1024))
    assert read_input_file(str(path), "image") == path.read_bytes()
    this_run("DL_SERVER_MAX_FILE_BYTES", str(256 * 1024 - 1))
    assert "262144 bytes is over the limit 262143" in error_line(lambda: read_input_file(str(path), "image"))
