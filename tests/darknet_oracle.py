"""Debian's darknet package (pjreddie's Darknet, native, CPU) as the tests' oracle: where it is,
whether it is there, and the C harnesses of tests/oracle/ built against its libdarknet.so.

Tests that need it skip where it is missing, except under DL_SERVER_REQUIRE_ORACLE=1 (CI sets
it after installing the package), where they run and fail."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

LIBDARKNET = Path("/usr/lib/darknet/libdarknet.so")
DARKNET_INCLUDE = LIBDARKNET.parent / "include"
DARKNET_CFGS = Path("/usr/share/darknet/cfg")
DARKNET_DATA = Path("/usr/share/darknet/data")
HARNESSES = Path(__file__).parent / "oracle"
REQUIRED = os.environ.get("DL_SERVER_REQUIRE_ORACLE") == "1"


def missing() -> str | None:
    """Why the oracle cannot run here, or None."""
    if not LIBDARKNET.exists():
        return "Debian's darknet package is not installed (apt-get install darknet)"
    if shutil.which("gcc") is None:
        return "no gcc to build the oracle harness"
    return None


needs_darknet = pytest.mark.skipif(missing() is not None and not REQUIRED, reason=missing() or "")


def require() -> None:
    """Skip the calling test or fixture where the oracle is missing (fail under REQUIRED)."""
    reason = missing()
    if reason is not None:
        if REQUIRED:
            pytest.fail(f"DL_SERVER_REQUIRE_ORACLE=1 but {reason}")
        pytest.skip(reason)


def build_harness(name: str, out_dir: Path) -> Path:
    """tests/oracle/<name>.c compiled against libdarknet.so into out_dir/<name>."""
    require()
    exe = out_dir / name
    subprocess.run(
        ["gcc", "-O2", "-o", str(exe), str(HARNESSES / f"{name}.c"), f"-I{DARKNET_INCLUDE}",
         f"-L{LIBDARKNET.parent}", "-ldarknet", f"-Wl,-rpath,{LIBDARKNET.parent}", "-lm"],
        check=True,
    )  # fmt: skip
    return exe
