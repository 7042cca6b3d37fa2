"""Darknet's cfg/data/list grammar (docs/darknet-contract.md §2) and its errors."""

import pytest

from dlserver.config import parse_cfg, read_data_cfg, read_list
from dlserver.errors import DLServerError


def test_strip_removes_all_spaces_and_first_key_wins():
    sections = parse_cfg("[net]\nbatch = 10\n  batch=20\n# comment\n; other\n\n[conv]\nfilters= 4\n", "t.cfg")
    assert [s.name for s in sections] == ["[net]", "[conv]"]
    assert sections[0].find_int("batch", 1) == 10
    assert sections[1].find_int("filters", 1) == 4


def test_defaults_are_reported_with_darknet_wording(capsys):
    (net,) = parse_cfg("[net]\nheight=1\n", "t.cfg")
    assert net.find_int("batch", 1) == 1
    assert net.find_float("momentum", 0.9) == 0.9
    assert net.find_str("policy", "constant") == "constant"
    assert net.find_int("width", 0, quiet=True) == 0
    err = capsys.readouterr().err
    assert err == (
        "batch: Using default '1'\nmomentum: Using default '0.900000'\npolicy: Using default 'constant'\n"
    )


def test_unused_fields_are_reported(capsys):
    (_, conv) = parse_cfg("[net]\n[convolutional]\nfilters=2\nbogus=3\n", "t.cfg")
    conv.find_int("filters", 1)
    conv.report_unused()
    assert capsys.readouterr().err == "Unused field: 'bogus = 3'\n"


def test_numbers_parse_like_darknet_values():
    (net,) = parse_cfg("[net]\na=.8\nb=5e-05\nc=-3\nd=0.00005\nl=1,2,3\n", "t.cfg")
    assert net.find_float("a", 0) == 0.8
    assert net.find_float("b", 0) == 5e-05
    assert net.find_int("c", 0) == -3
    assert net.find_float("d", 0) == 0.00005
    assert net.find_list("l", int) == [1, 2, 3]


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "has no sections"),
        ("# only a comment\n", "has no sections"),
        ("batch=1\n[net]\n", r"comes before any \[section\]"),
        ("[net\nbatch=1\n", r"has no closing '\]'"),
        ("[net]\nbatch\n", "is not a key=value option"),
        ("[net]\nbatch=\n", "has no value"),
        ("[net]\n=3\n", "has no key"),
    ],
)
def test_malformed_cfg_text(text, message):
    with pytest.raises(DLServerError, match=message):
        parse_cfg(text, "bad.cfg")


def test_bad_numbers_name_file_line_and_key():
    (net,) = parse_cfg("[net]\nbatch=ten\n", "bad.cfg")
    with pytest.raises(DLServerError, match=r"bad.cfg:2: batch=ten: not an integer"):
        net.find_int("batch", 1)


def test_data_cfg_and_lists(tmp_path):
    data = tmp_path / "x.dataset"
    data.write_text("classes=10\ntrain  = a.list\n")
    options = read_data_cfg(str(data))
    assert options.find_int("classes", 2) == 10
    assert options.find_str("train", "x") == "a.list"
    lst = tmp_path / "a.list"
    lst.write_bytes(b"one\r\ntwo\n\nlast")
    assert read_list(str(lst)) == ["one", "two", "", "last"]


def test_missing_files_are_clear_errors(tmp_path):
    with pytest.raises(DLServerError, match="nope.dataset: cannot open data cfg: no such file"):
        read_data_cfg(str(tmp_path / "nope.dataset"))
    with pytest.raises(DLServerError, match="cannot open list file: it is a directory"):
        read_list(str(tmp_path))
