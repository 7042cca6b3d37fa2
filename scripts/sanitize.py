"""`make sanitize`: the C kernels built with AddressSanitizer and UndefinedBehaviorSanitizer
(build/sanitize, scripts/build_kernels.py), then run by

1. the kernel unit tests and the tests of the guest code that calls kernels the most (JPEG, PNG,
   the robust rules), and the bad-input corpus (tests/corpus/hostile.py), natively;
2. every fuzz target of scripts/fuzz.py for FUZZ_SECONDS each (default 10): its corpus in
   build/fuzz/corpus (the seeds, and what `make fuzz` has grown) is replayed first.

A sanitizer finding (its report written to build/sanitize/report.<pid>) stops the run with the
report and exit status 1.

    .venv/bin/python scripts/sanitize.py [--seconds N] [--no-fuzz]
"""

import argparse
import os
import subprocess
import sys
from pathlib import Path

from build_kernels import build, sanitizer_env

ROOT = Path(__file__).resolve().parent.parent
TESTS = [
    "tests/test_kernels.py",
    "tests/test_train_kernels.py",
    "tests/test_kernel_seam.py",
    "tests/test_jpeg.py",
    "tests/test_png.py",
    "tests/test_rules_robust.py",
    "tests/test_hardening_corpus.py",
    "tests/test_read_files.py",
]
FUZZ_TARGETS = ["png", "jpeg", "cfg", "weights", "onnx", "onnx-input", "onnx-aggregation", "args"]


def reported(directory: Path) -> bool:
    """Print the sanitizer reports written so far; whether there were any."""
    reports = sorted(directory.glob("report.*"))
    for report in reports:
        print(report.read_text()[-6000:])
    return bool(reports)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=int(os.environ.get("FUZZ_SECONDS", "10")))
    parser.add_argument("--no-fuzz", action="store_true", help="the tests only")
    args = parser.parse_args()
    library = build("sanitize")
    for old in library.parent.glob("report.*"):
        old.unlink()
    env = {**os.environ, **sanitizer_env(), "DL_SERVER_NATIVE_KERNELS": str(library.parent)}
    log = f"log_path={library.parent / 'report'}"
    env["ASAN_OPTIONS"] += ":" + log
    env["UBSAN_OPTIONS"] += ":" + log
    # -p no:cacheprovider: the tests' cache stays that of the ordinary build
    tests = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not component"]
    status = subprocess.run([*tests, *TESTS], cwd=ROOT, env=env).returncode
    if reported(library.parent) or status != 0:
        print("sanitize: the tests failed under the sanitizers")
        return 1
    print(f"sanitize: {len(TESTS)} test files passed under ASan + UBSan")
    if args.no_fuzz:
        return 0
    for target in FUZZ_TARGETS:
        fuzz = [sys.executable, "scripts/fuzz.py", target, "--seconds", str(args.seconds)]
        result = subprocess.run(fuzz, cwd=ROOT, env=env, capture_output=True, text=True)
        done = [line for line in result.stderr.splitlines() if line.startswith("Done")]
        if reported(library.parent) or result.returncode != 0 or not done:
            print(result.stderr[-6000:])
            print(f"sanitize: fuzz target {target} failed under the sanitizers")
            return 1
        print(f"sanitize: fuzz {target}: {done[-1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
