"""File-heavy work through the host (issue 14, docs/host-io.md): what the host-vs-CLI gap rests
on, and that the host and the wasmtime CLI read the same files into the same results.

The speed itself is measured by `make bench` (host rows next to the CLI rows), never here."""

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import NEEDS_HOST_WASM, ROOT, mnist_images, run_host, run_wasmtime, seed_file, wasmtime_cli

FILE_READS = ROOT / "scripts" / "wasi_file_reads.py"


def test_wasmtime_py_still_has_no_switch_for_blocking_wasi_calls():
    """docs/host-io.md: the cause of the gap is that wasmtime's C API (and so wasmtime-py) gives
    no way to set WasiCtxBuilder::allow_blocking_current_thread, which the CLI sets. When an
    upgrade brings one, this fails: turn it on in runtime.py and remeasure with `make bench`."""
    from wasmtime import WasiConfig, _bindings

    names = [n for n in dir(_bindings) if n.startswith(("wasi_", "wasmtime_wasi", "wasmtime_config"))]
    assert len(names) > 20, "the bindings were not found where expected"
    assert not [n for n in names if "block" in n], "wasmtime's C API can now let WASI block its thread"
    assert not [n for n in dir(WasiConfig) if "block" in n]


BATCH = getattr(os, "SCHED_BATCH", None)


def policy_in_a_thread(body) -> list[int]:
    """Run body() in a new thread; the scheduling policies it returns."""
    policies: list[int] = []
    thread = threading.Thread(target=lambda: policies.extend(body()))
    thread.start()
    thread.join()
    return policies


def batch_allowed() -> bool:
    """Whether a thread may switch itself to SCHED_BATCH here (a sandbox may forbid it)."""

    def switch() -> list[int]:
        assert BATCH is not None
        try:
            os.sched_setscheduler(0, BATCH, os.sched_param(0))
        except OSError:
            return []
        return [os.sched_getscheduler(0)]

    return BATCH is not None and policy_in_a_thread(switch) == [BATCH]  # switch runs only then


needs_batch = pytest.mark.skipif(not batch_allowed(), reason="SCHED_BATCH not available or not allowed")


@needs_batch
def test_schedule_as_batch_holds_for_the_thread_and_the_threads_it_starts_only():
    from dlserver_host.runtime import schedule_as_batch

    def body() -> list[int]:
        before = os.sched_getscheduler(0)
        schedule_as_batch()
        return [before, os.sched_getscheduler(0), *policy_in_a_thread(lambda: [os.sched_getscheduler(0)])]

    main = os.sched_getscheduler(0)
    assert policy_in_a_thread(body) == [main, BATCH, BATCH]
    assert os.sched_getscheduler(0) == main != BATCH


@needs_batch
@pytest.mark.component
def test_a_guest_run_and_its_threads_are_scheduled_as_batch(program):
    """The output callbacks run on threads the guest's thread starts (guest_stdio.FileTail), after
    it set its policy, as do the WASI runtime's threads: they see SCHED_BATCH."""
    from dlserver_host import compile_cache, runtime

    policies: list[int] = []
    loaded = runtime.load_program(program, interruptible=False, cache_dir=compile_cache.default_cache_dir())
    run = loaded.start(
        argv=["dl-server.wasm", "frobnicate"],
        env=[],
        mounts=[],
        stdout=lambda data: policies.append(os.sched_getscheduler(0)),
        stderr=lambda data: policies.append(os.sched_getscheduler(0)),
    )
    result = run.wait()
    assert result is not None and result.outcome is runtime.Outcome.FAILED
    assert policies and set(policies) == {BATCH}
    assert os.sched_getscheduler(0) != BATCH


def write_files(root: Path, count: int) -> tuple[str, int]:
    """count files of different sizes under root/f/ (one above 64 KiB, the size of one pread)
    and their list; returns (the list's path relative to root, their total bytes)."""
    (root / "f").mkdir()
    paths, total = [], 0
    for i in range(count):
        data = bytes((i * 7 + j) % 251 for j in range(i * 13 % 300)) if i != 5 else b"x" * 70000
        (root / "f" / f"{i:04d}.bin").write_bytes(data)
        paths.append(f"f/{i:04d}.bin")
        total += min(len(data), 1 << 16)  # the guest reads at most one 64 KiB pread per file
    (root / "files.list").write_text("\n".join(paths) + "\n")
    return "files.list", total


@pytest.mark.component
def test_the_file_reads_guest_reads_every_byte_under_wasmtime_py_and_the_cli(tmp_path):
    """The micro-benchmark of `make bench` measures what it says: both runners read each file."""
    list_file, total = write_files(tmp_path, 200)
    wasm = subprocess.run(
        [sys.executable, str(FILE_READS), "build"], check=True, capture_output=True, text=True
    ).stdout.strip()
    cli = subprocess.run(
        [wasmtime_cli(), "run", "--dir=./", wasm, list_file], cwd=tmp_path, capture_output=True, text=True
    )
    py = subprocess.run(
        [sys.executable, str(FILE_READS), "run", list_file], cwd=tmp_path, capture_output=True, text=True
    )
    assert cli.returncode == 0 and py.returncode == 0, cli.stderr + py.stderr
    assert cli.stdout == py.stdout == f"200 files {total} bytes\n"


@pytest.mark.component
def test_the_file_reads_guest_under_wasmtime_py_sees_only_the_current_directory(tmp_path):
    """Its preopen is the current directory, read-only, as the host's inputs: no path out of it."""
    (tmp_path / "files.list").write_text("/etc/passwd\n")
    py = subprocess.run(
        [sys.executable, str(FILE_READS), "run", "files.list"], cwd=tmp_path, capture_output=True, text=True
    )
    assert py.returncode == 1 and "/etc/passwd" in py.stderr and py.stdout == ""


VALID_IMAGES = 300


def needs_host_wasm(test):
    for mark in NEEDS_HOST_WASM:
        test = mark(test)
    return test


@pytest.mark.slow
@needs_host_wasm
def test_host_and_cli_give_the_same_valid_lines_on_hundreds_of_images(program, workdir, capfd):
    """classifier valid over 300 MNIST files (the batch reader's path: many small files): the
    host's stdout is the CLI's, line for line."""
    source = ROOT / "data" / "mnist" / "images_client1"
    names = (
        sorted(n for n in os.listdir(source) if n.startswith("t_"))[:VALID_IMAGES] if source.is_dir() else []
    )
    if len(names) < VALID_IMAGES:
        pytest.skip("MNIST not prepared (make mnist_training)")
    paths = mnist_images(workdir, names)
    (workdir / "data" / "valid.list").write_text("\n".join(paths) + "\n")
    dataset = (
        (workdir / "cfg" / "mnist.dataset")
        .read_text()
        .replace("data/mnist/mnist.valid.list", "data/valid.list")
    )
    (workdir / "cfg" / "mnist.dataset").write_text(dataset)
    (workdir / "model" / "mnist_lenet.weights").write_bytes(
        seed_file("model/mnist_lenet.weights").read_bytes()
    )
    args = ["classifier", "valid", "cfg/mnist.dataset", "cfg/mnist_lenet.cfg", "model/mnist_lenet.weights"]
    (workdir / "args.cfg").write_text("".join(a + "\n" for a in args))
    cli = run_wasmtime(workdir)
    assert cli.returncode == 0, cli.stderr
    capfd.readouterr()
    status = run_host(program, None, "--no-progress", "-i", "args.cfg", "cfg", "model", "data")
    out, err = capfd.readouterr()
    assert status == 0, err
    assert out == cli.stdout
    assert sum(line.startswith(tuple(paths)) for line in out.splitlines()) == VALID_IMAGES
