"""The fast mode (docs/darknet-contract.md §10.5): `-fast` among any command's arguments, or
DL_SERVER_FAST=1 in the environment, runs gemm and the convolutions with fused
multiply-adds (the kernels' fast twins) instead of Darknet's exact roundings.

The flag is taken out of the arguments before the command sees them (argc without it), so
the positional arguments of every command are those of the same command without `-fast`.
"""

import os

from . import kernels
from .errors import DLServerError

FLAG = "-fast"
ENV = "DL_SERVER_FAST"


def take(args: list[str]) -> tuple[list[str], bool]:
    """args without any `-fast` (argv[0] kept), and whether the fast mode is asked for."""
    rest = args[:1] + [a for a in args[1:] if a != FLAG]
    text = os.environ.get(ENV)
    if text not in (None, "", "0", "1"):
        raise DLServerError(f"{ENV}={text[:40]}: must be 0 or 1")
    return rest, len(rest) < len(args) or text == "1"


def select(on: bool) -> None:
    """The kernels' mode for this run; an error when the fast kernels cannot run here."""
    if on and not kernels.fast_supported():
        raise DLServerError(f"{FLAG}: this machine's CPU has no fused multiply-add (FMA); run without -fast")
    kernels.set_fast_mode(on)
