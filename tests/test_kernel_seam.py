"""The seam between the guest's Python and `_dlk`: one module imports it, and tests swap
kernels through kernels.using()."""

import re

import pytest

import _dlk
import reference.training
from conftest import ROOT
from dlserver import kernels


def test_only_kernels_py_imports_dlk():
    importers = [
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "guest").rglob("*.py")
        if re.search(r"^\s*(import _dlk|from _dlk )", p.read_text(), re.MULTILINE)
    ]
    assert importers == ["guest/dlserver/kernels.py"]


def test_kernels_are_dlks_own_functions():
    wrappers = {"jpeg_decode_scan"}
    renamed = {"decode_png_chw": "png_load_chw", "decode_png_rows": "png_load_rows"}
    for name in set(kernels.KERNELS) - wrappers:
        assert getattr(kernels, name) is getattr(_dlk, renamed.get(name, name)), name


def test_using_swaps_and_restores():
    before = {name: getattr(kernels, name) for name in kernels.KERNELS}
    with kernels.using(reference.training):
        assert kernels.sgd_update is reference.training.sgd_update
        assert kernels.gemm is _dlk.gemm  # what the reference does not define stays
    assert {name: getattr(kernels, name) for name in kernels.KERNELS} == before
    with pytest.raises(AttributeError):
        kernels.use({"not_a_kernel": len})
