"""The host's compile cache, with an empty component (compiles in milliseconds)."""

import hashlib
import os
from pathlib import Path

import pytest
import wasmtime
from wasmtime.component import Component

from dlserver_host import compile_cache, runtime


@pytest.fixture
def empty_component(tmp_path: Path) -> Path:
    path = tmp_path / "empty.wasm"
    path.write_bytes(wasmtime.wat2wasm("(component)"))
    return path


def cache_entries(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.glob("*.cwasm"))


def test_cache_is_keyed_by_content_version_and_engine_settings(empty_component, tmp_path):
    cache = tmp_path / "cache"
    runtime.load_component(runtime.make_engine(), empty_component, cache)
    (entry,) = cache_entries(cache)
    digest = hashlib.sha256(empty_component.read_bytes()).hexdigest()
    assert entry == f"{digest}-wasmtime{runtime.wasmtime_version()}-{runtime.ENGINE_SETTINGS[True]}.cwasm"
    assert runtime.wasmtime_version() == "50.0.1"


def test_second_load_comes_from_the_cache(empty_component, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    runtime.load_component(runtime.make_engine(), empty_component, cache)

    def no_compiling(*args):
        raise AssertionError("compiled again")

    monkeypatch.setattr(Component, "from_file", no_compiling)
    assert runtime.load_component(runtime.make_engine(), empty_component, cache) is not None


def test_the_digest_is_remembered_until_the_file_changes(empty_component, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    runtime.load_component(runtime.make_engine(), empty_component, cache)
    hashed = []
    real_file_digest = hashlib.file_digest
    monkeypatch.setattr(hashlib, "file_digest", lambda f, name: hashed.append(1) or real_file_digest(f, name))
    runtime.load_component(runtime.make_engine(), empty_component, cache)
    assert hashed == []
    data = empty_component.read_bytes()
    empty_component.write_bytes(data)  # same bytes, same size: only ctime/mtime change
    runtime.load_component(runtime.make_engine(), empty_component, cache)
    assert hashed == [1]
    assert len(cache_entries(cache)) == 1


def test_a_corrupt_cache_entry_is_replaced(empty_component, tmp_path):
    cache = tmp_path / "cache"
    runtime.load_component(runtime.make_engine(), empty_component, cache)
    (entry,) = cache.glob("*.cwasm")
    entry.write_bytes(b"garbage")
    assert runtime.load_component(runtime.make_engine(), empty_component, cache) is not None
    assert entry.read_bytes() != b"garbage"
    assert [p.name for p in cache.iterdir() if p.name.startswith(".tmp-")] == []


def test_old_cache_entries_are_pruned(tmp_path):
    cache = tmp_path / "cache"
    engine = runtime.make_engine()
    for i in range(compile_cache.CACHE_ENTRIES_KEPT + 2):
        wasm = tmp_path / f"c{i}.wasm"  # distinct bytes: an empty component plus a custom section
        wasm.write_bytes(wasmtime.wat2wasm("(component)") + b"\x00\x04\x01x" + bytes([i, i]))
        runtime.load_component(engine, wasm, cache)
        newest = max(cache.glob("*.cwasm"), key=lambda p: p.stat().st_mtime_ns)
        os.utime(newest, ns=(i * 10**9, i * 10**9))  # distinct, ordered mtimes
    entries = sorted(cache.glob("*.cwasm"), key=lambda p: p.stat().st_mtime_ns)
    assert len(entries) == compile_cache.CACHE_ENTRIES_KEPT
    assert entries[0].stat().st_mtime_ns == 2 * 10**9


def test_no_cache_dir_means_no_cache(empty_component, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compile_cache.default_cache_dir() == tmp_path / "xdg" / "dl-server"
    runtime.load_component(runtime.make_engine(), empty_component, None)
    assert not (tmp_path / "xdg").exists()


def test_not_a_wasm_file_is_a_host_error(tmp_path):
    path = tmp_path / "args.cfg"
    path.write_text("classifier\n")
    with pytest.raises(runtime.HostError, match="not a WebAssembly file"):
        runtime.load_component(runtime.make_engine(), path, None)
