"""Darknet's command line: arguments from argv or one per line of `args.cfg`, and its flag
handling (flags are removed from argv as they are found)."""

import math
import re
import sys

from .errors import DLServerError, printable
from .files import Wording, read_input_file
from .limits import INT_MAX, INT_MIN, c_int, text_bytes

ARGS_FILE = "args.cfg"
_INT = re.compile(r"[+-]?\d+\Z")
MAX_ARGS = 1024  # the original has room for 9 (a 10th line overflows its buffer)
PROGRAM = "dl-server"
ARGS_FILE_WORDING = Wording(
    "Argument file not found. Command-line arguments not found."
    " (no {path} in the working directory and no arguments given)",
    None,
    "{path}: cannot read {what}: {reason}",
)


class Argv:
    """Darknet's argv after flag removal: entries shift left, the tail becomes None, and
    argc keeps its original value (docs/darknet-contract.md §1.3)."""

    def __init__(self, args: list[str]):
        self.args: list[str | None] = list(args)
        self.argc = len(args)

    def __getitem__(self, i: int) -> str | None:
        return self.args[i] if i < self.argc else None

    def _delete(self, i: int) -> None:
        del self.args[i]
        self.args.append(None)

    def find_arg(self, flag: str) -> bool:
        for i in range(self.argc):
            if self.args[i] == flag:
                self._delete(i)
                return True
        return False

    def _find_value(self, flag: str) -> str | None:
        for i in range(self.argc - 1):
            if self.args[i] == flag:
                value = self.args[i + 1]
                self._delete(i)
                self._delete(i)
                if value is None:
                    raise DLServerError(f"flag {flag} needs a value")
                return value
        if self.argc and self.args[self.argc - 1] == flag:
            raise DLServerError(f"flag {flag} needs a value")
        return None

    def find_int(self, flag: str, default: int) -> int:
        value = self._find_value(flag)
        if value is None:
            return default
        number = c_int(value) if _INT.match(value) else None
        if number is None:
            raise DLServerError(f"flag {flag} {value}: not an integer from {INT_MIN} to {INT_MAX}")
        return number

    def find_float(self, flag: str, default: float) -> float:
        value = self._find_value(flag)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            raise DLServerError(f"flag {flag} {value}: not a number") from None
        if not math.isfinite(number):
            raise DLServerError(f"flag {flag} {value}: not a finite number")
        return number

    def find_str(self, flag: str, default: str | None) -> str | None:
        value = self._find_value(flag)
        return default if value is None else value

    def find_values(self, flag: str, count: int) -> list[str] | None:
        """The `count` arguments after `flag` (removed with it), or None without the flag."""
        for i in range(self.argc):
            if self.args[i] == flag:
                values = self.args[i + 1 : i + 1 + count]
                for _ in range(count + 1):
                    self._delete(i)
                if len(values) < count or any(v is None for v in values):
                    raise DLServerError(f"flag {flag} needs {count} values")
                return [v for v in values if v is not None]
        return None


def read_args_file(path: str = ARGS_FILE) -> list[str]:
    """One argument per line of args.cfg; echoes `argv[i] = '...'` on stdout like the original.

    Unlike the original, lines are not cut at 99 characters, a trailing '\\r' is dropped
    and up to MAX_ARGS arguments are taken (the original overflows past 9)."""
    data = read_input_file(path, "argument file", ARGS_FILE_WORDING, text_bytes())
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DLServerError(f"{path}: not a text file (invalid UTF-8 at byte {e.start})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    args = [line.removesuffix("\r") for line in lines]
    if not args:
        raise DLServerError(f"{path}: the argument file is empty")
    if len(args) > MAX_ARGS:
        raise DLServerError(f"{path}: {len(args)} arguments, at most {MAX_ARGS} are allowed")
    for i, arg in enumerate(args, 1):
        sys.stdout.write(f"argv[{i}] = '{printable(arg)}'\n")
    return [PROGRAM] + args
