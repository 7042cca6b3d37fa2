"""Build the `_dlk` C extension with ziglang: for wasm32-wasi (linked into the
component by componentize-py) and natively (for tests of the guest package).

    python scripts/build_kernels.py wasm   -> build/wasm/_dlk.abi3.so
    python scripts/build_kernels.py native -> build/native/_dlk.abi3.so
    python scripts/build_kernels.py sanitize -> build/sanitize/_dlk.abi3.so (gcc, ASan + UBSan)

Every .c file of guest/kernels is a translation unit (bindings.c and the kernels it calls);
symbols are hidden but for PyInit__dlk. The native build also has the test hooks
(-DDLK_TEST_HOOKS: `_dlk.musl_sort_desc`), which the component leaves out.

The fast units (*_fast.c: gemm and the convolutions again, and Winograd, guest/kernels/fast.h)
are compiled apart; with DLK_FAST_FMA=1 they get FAST_FLAGS: -mrelaxed-simd in wasm
(f32x4.relaxed_madd), -mfma natively on x86-64 (run only when _dlk.fast_supported() says the
CPU has FMA).
"""

import argparse
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KERNELS = ROOT / "guest" / "kernels"
BUILD = ROOT / "build"

# pyconfig.h for wasm32-wasi: the host's one describes x86-64.
WASM_PYCONFIG = """\
#ifndef Py_PYCONFIG_H
#define Py_PYCONFIG_H
#define SIZEOF_DOUBLE 8
#define SIZEOF_FLOAT 4
#define SIZEOF_FPOS_T 8
#define SIZEOF_INT 4
#define SIZEOF_LONG 4
#define SIZEOF_LONG_DOUBLE 16
#define SIZEOF_LONG_LONG 8
#define SIZEOF_OFF_T 8
#define SIZEOF_PID_T 4
#define SIZEOF_PTHREAD_T 4
#define SIZEOF_SHORT 2
#define SIZEOF_SIZE_T 4
#define SIZEOF_TIME_T 8
#define SIZEOF_UINTPTR_T 4
#define SIZEOF_VOID_P 4
#define SIZEOF_WCHAR_T 4
#define SIZEOF__BOOL 1
#define ALIGNOF_LONG 4
#define ALIGNOF_SIZE_T 4
#define HAVE_STDINT_H 1
#define HAVE_INTTYPES_H 1
#define HAVE_UNISTD_H 1
#define HAVE_SYS_TYPES_H 1
#define HAVE_SYS_STAT_H 1
#define HAVE_STDLIB_H 1
#define HAVE_STRING_H 1
#define HAVE_WCHAR_H 1
#define HAVE_CLOCK_GETTIME 1
#define STDC_HEADERS 1
#define WITH_DOC_STRINGS 1
#define PY_FORMAT_SIZE_T "z"
#define Py_ENABLE_SHARED 0
#endif
"""

SOURCES = sorted(KERNELS.glob("*.c")) + sorted(KERNELS.glob("*.h"))
COMMON_FLAGS = [
    "-O3",
    "-fPIC",
    "-ffp-contract=off",
    "-fno-fast-math",
    "-fvisibility=hidden",
    "-Wall",
    "-Wno-unused-function",
]

# DLK_FAST_FMA=1 (environment, at build time): the fast units' v4f_madd is fused,
# f32x4.relaxed_madd in wasm and fma natively (x86-64: -mfma, used only when the CPU has FMA).
# Off by default: wasmtime 49-50 (Cranelift) lowers relaxed_madd to vfmadd213ps, whose
# destination is a multiplicand, so every accumulator is copied and the 8x4 gemm tile spills:
# measured slower than a multiply and an add (docs/darknet-contract.md §10.5).
FAST_FMA = os.environ.get("DLK_FAST_FMA") == "1"
FAST_FLAGS = {
    "wasm": ["-mrelaxed-simd", "-DDLK_FAST_FMA"] if FAST_FMA else [],
    "native": (["-mfma"] if platform.machine().lower() in ("x86_64", "amd64") else []) + ["-DDLK_FAST_FMA"]
    if FAST_FMA
    else [],
}


def unit_flags(kind: str, src: Path) -> list[str]:
    """Flags of one translation unit beyond COMMON_FLAGS: FAST_FLAGS for the fast units."""
    return FAST_FLAGS[kind] if src.stem.endswith("_fast") else []


def zig(*args: str) -> None:
    """Run `python -m ziglang ...`, failing loudly."""
    cmd = [sys.executable, "-m", "ziglang", *args]
    result = subprocess.run(cmd)
    if result.returncode != 0:
        sys.exit(f"build_kernels: failed: {' '.join(cmd)}")


def up_to_date(target: Path) -> bool:
    """Built after every source, and with the same DLK_FAST_FMA (recorded beside it)."""
    stamp = target.with_name("fast-fma")
    built_with = stamp.read_text() if stamp.exists() else "0"
    return (
        target.exists()
        and built_with == str(int(FAST_FMA))
        and all(target.stat().st_mtime >= s.stat().st_mtime for s in SOURCES + [Path(__file__)])
    )


def wasm_include_dir() -> Path:
    """A copy of the host's Python headers with a wasm32 pyconfig.h."""
    host_include = Path(sysconfig.get_paths()["include"])
    inc = BUILD / "wasm-include"
    if not (inc / "Python.h").exists():
        shutil.copytree(host_include, inc, dirs_exist_ok=True)
    (inc / "pyconfig.h").write_text(WASM_PYCONFIG)
    return inc


def translation_units(kernels: Path) -> list[Path]:
    """The .c files to compile: all of them (a tree from before bindings.c: its unity dlk.c)."""
    unity = kernels / "dlk.c"
    return [unity] if unity.exists() else sorted(kernels.glob("*.c"))


def compile_wasm(kernels: Path, target: Path) -> None:
    """A guest/kernels-like directory -> a wasm32-wasi shared library (units compiled apart, 2 at once)."""
    objs = target.parent / "obj"
    objs.mkdir(parents=True, exist_ok=True)
    include = wasm_include_dir()
    units = translation_units(kernels)

    def compile_one(src: Path) -> Path:
        obj = objs / (src.stem + ".o")
        zig(
            "cc",
            "--target=wasm32-wasi",
            "-msimd128",
            *COMMON_FLAGS,
            *unit_flags("wasm", src),
            f"-I{include}",
            "-c",
            str(src),
            "-o",
            str(obj),
        )
        return obj

    with ThreadPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
        built = list(pool.map(compile_one, units))
    zig(
        "wasm-ld",
        "-shared",
        "--experimental-pic",
        "--unresolved-symbols=import-dynamic",
        "--strip-debug",  # ~0.5 MB of DWARF the component has no use for
        *map(str, built),
        "-o",
        str(target),
    )


def compile_native(kernels: Path, target: Path, test_hooks: bool = True) -> None:
    """guest/kernels-like directory -> a native shared library, with the test hooks unless told not to."""
    include = sysconfig.get_paths()["include"]
    hooks = ["-DDLK_TEST_HOOKS"] if test_hooks else []
    # -mcpu=baseline: the same x86-64 code on every machine (no FMA, matching wasm SIMD128);
    # the fast units are compiled apart with their own flags and linked in as objects.
    flags = ["-target", "native-native-gnu", "-mcpu=baseline", *COMMON_FLAGS, *hooks, f"-I{include}"]
    if "-mfma" in FAST_FLAGS["native"]:
        flags.append("-DDLK_FAST_FMA_NATIVE")  # fast_supported() asks the CPU
    units = translation_units(kernels)
    objects = []
    for src in units:
        if unit_flags("native", src):
            obj = target.parent / (src.stem + ".o")
            zig("cc", *flags, *unit_flags("native", src), "-fPIC", "-c", str(src), "-o", str(obj))
            objects.append(obj)
    plain = [src for src in units if not unit_flags("native", src)]
    zig("cc", *flags, "-shared", *map(str, plain), *map(str, objects), "-o", str(target))


# The sanitizer build: gcc's AddressSanitizer and UndefinedBehaviorSanitizer (zig cc ships no
# ASan runtime). Python is not instrumented, so the library runs with libasan preloaded
# (sanitizer_env); any UBSan finding aborts (-fno-sanitize-recover).
SANITIZE_FLAGS = [
    "-O1",
    "-g",
    "-fsanitize=address,undefined",
    "-fno-sanitize-recover=undefined",
    "-fno-omit-frame-pointer",
    "-Wno-unknown-pragmas",  # the kernels' `#pragma clang loop`
]


def compile_sanitize(kernels: Path, target: Path) -> None:
    """guest/kernels-like directory -> a native shared library built by gcc with the sanitizers."""
    include = sysconfig.get_paths()["include"]
    flags = [f for f in COMMON_FLAGS if f != "-O3"]
    cmd = ["gcc", *SANITIZE_FLAGS, *flags, "-DDLK_TEST_HOOKS", "-shared", f"-I{include}"]
    result = subprocess.run([*cmd, *map(str, translation_units(kernels)), "-o", str(target)])
    if result.returncode != 0:
        sys.exit("build_kernels: the sanitizer build failed (it needs gcc with libasan and libubsan)")


def sanitizer_env() -> dict[str, str]:
    """The environment a process loading build/sanitize/_dlk.abi3.so needs: libasan first, no leak
    report (Python's own allocations would fill it), reports on stderr and a non-zero exit."""
    libasan = subprocess.run(
        ["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True, check=True
    ).stdout.strip()
    return {
        "LD_PRELOAD": libasan,
        "ASAN_OPTIONS": "detect_leaks=0:allocator_may_return_null=1:abort_on_error=0",
        "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
    }


def build(kind: str) -> Path:
    """build/<kind>/_dlk.abi3.so ('wasm' or 'native'), compiled unless up to date."""
    target = BUILD / kind / "_dlk.abi3.so"
    if up_to_date(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    compile_kernels = {"wasm": compile_wasm, "native": compile_native, "sanitize": compile_sanitize}
    compile_kernels[kind](KERNELS, target)
    target.with_name("fast-fma").write_text(str(int(FAST_FMA)))
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="+", choices=["wasm", "native", "sanitize"])
    for name in parser.parse_args().targets:
        print(build(name))


if __name__ == "__main__":
    main()
