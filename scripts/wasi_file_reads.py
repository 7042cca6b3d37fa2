"""The WASI file-access micro-benchmark of docs/host-io.md: a trivial C guest
(scripts/wasi_file_reads.c: open, pread, close each file of a list) under wasmtime-py, the way
the dl-server host runs its guest (its own thread, the current directory preopened read-only,
stdout to a file), so that `make bench` can time it against `wasmtime run --dir=./`.

    .venv/bin/python scripts/wasi_file_reads.py build       # prints the path of the guest, built once
    .venv/bin/python scripts/wasi_file_reads.py run LIST    # in the current directory: "N files B bytes"
"""

import hashlib
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "scripts" / "wasi_file_reads.c"
BENCH = ROOT / "build" / "bench"


def build() -> Path:
    """build/bench/wasi_file_reads-<digest>.wasm, compiled with ziglang for wasm32-wasi."""
    source = SOURCE.read_bytes()
    wasm = BENCH / f"wasi_file_reads-{hashlib.sha256(source).hexdigest()[:16]}.wasm"
    if not wasm.exists():
        BENCH.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=BENCH) as tmp:
            out = Path(tmp) / "guest.wasm"
            zig = [sys.executable, "-m", "ziglang", "cc", "-target", "wasm32-wasi", "-O2"]
            subprocess.run([*zig, str(SOURCE), "-o", str(out)], check=True)
            os.replace(out, wasm)
    return wasm


def run(wasm: Path, list_file: str) -> None:
    """Run the guest under wasmtime-py in a thread, as runtime.GuestRun does, and print its stdout."""
    from wasmtime import Config, Engine, ExitTrap, Func, Linker, Module, Store, WasiConfig

    config = Config()
    config.cache = True  # the CLI's compile cache, as `wasmtime run -C cache=y`
    engine = Engine(config)
    module = Module.from_file(engine, str(wasm))
    result: list[int] = []

    def guest() -> None:
        with tempfile.TemporaryDirectory(prefix="wasi-file-reads-") as tmp:
            wasi = WasiConfig()
            wasi.argv = ["wasi_file_reads", list_file]
            wasi.preopen_dir(".", ".", False)  # read-only, as the host's input directories
            wasi.stdout_file = os.path.join(tmp, "stdout")
            wasi.inherit_stderr()
            store = Store(engine)
            store.set_wasi(wasi)
            linker = Linker(engine)
            linker.define_wasi()
            try:
                start = linker.instantiate(store, module).exports(store)["_start"]
                assert isinstance(start, Func)
                start(store)
                result.append(0)
            except ExitTrap as e:
                result.append(e.code)
            finally:
                store.close()
            sys.stdout.write(Path(tmp, "stdout").read_text())

    thread = threading.Thread(target=guest)
    thread.start()
    thread.join()
    sys.exit(result[0] if result else 1)


def main() -> None:
    if sys.argv[1:2] == ["build"]:
        print(build())
    elif sys.argv[1:2] == ["run"] and len(sys.argv) == 3:
        run(build(), sys.argv[2])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
