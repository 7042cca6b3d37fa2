"""Darknet's text formats: network `.cfg`, data `.data`/`.dataset` files and list files.

Lines keep Darknet's grammar (docs/darknet-contract.md §2): every space and tab is removed, `[` starts a
section, `#`/`;`/blank lines are skipped, the first `=` splits key from value and the
first occurrence of a key wins. Defaults and unused keys are reported on stderr with
Darknet's wording. Unlike Darknet, malformed input is an error naming file and line.
"""

import math
import re
import sys
from typing import overload

from .errors import DLServerError, printable
from .files import read_input_file
from .limits import INT_MAX, INT_MIN, c_int, text_bytes
from .rng import f32

_INT = re.compile(r"[+-]?\d+\Z")
_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\Z")


def read_text(path: str, what: str = "file") -> str:
    """Read a whole text file, turning OS errors into one clear line."""
    data = read_input_file(path, what, limit=text_bytes())
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DLServerError(f"{path}: not a text file (invalid UTF-8 at byte {e.start})") from None


def _strip(line: str) -> str:
    return line.replace(" ", "").replace("\t", "").replace("\n", "").replace("\r", "")


class Options:
    """The key=value options of one cfg section (or of a whole data file)."""

    def __init__(self, path: str, name: str, line: int):
        self.path = path
        self.name = name
        self.line = line
        self.entries: list[tuple[str, str, int]] = []
        self.used: set[str] = set()

    def add(self, key: str, value: str, line: int) -> None:
        self.entries.append((key, value, line))

    def _find(self, key: str):
        for k, v, line in self.entries:
            if k == key:
                self.used.add(key)
                return v, line
        return None, 0

    def has(self, key: str) -> bool:
        return any(k == key for k, _, _ in self.entries)

    def _where(self, line: int) -> str:
        return f"{self.path}:{line}"

    @overload
    def find_str(self, key: str, default: str, quiet: bool = False) -> str: ...
    @overload
    def find_str(self, key: str, default: None, quiet: bool = False) -> str | None: ...
    def find_str(self, key: str, default: str | None, quiet: bool = False) -> str | None:
        value, _ = self._find(key)
        if value is not None:
            return value
        if default is not None and not quiet:
            print(f"{key}: Using default '{default}'", file=sys.stderr)
        return default

    def find_int(self, key: str, default: int, quiet: bool = False) -> int:
        value, line = self._find(key)
        if value is None:
            if not quiet:
                print(f"{key}: Using default '{default}'", file=sys.stderr)
            return default
        if not _INT.match(value):
            raise DLServerError(f"{self._where(line)}: {key}={value}: not an integer")
        return self._c_int(key, value, value, line)

    def _c_int(self, key: str, value: str, item: str, line: int) -> int:
        """Darknet reads ints with atoi into a C int: past its range is an error here."""
        number = c_int(item)
        if number is None:
            raise DLServerError(
                f"{self._where(line)}: {key}={value}: {item} is out of the range of a C int"
                f" ({INT_MIN} to {INT_MAX})"
            )
        return number

    def find_float(self, key: str, default: float, quiet: bool = False) -> float:
        value, line = self._find(key)
        if value is None:
            if not quiet:
                print(f"{key}: Using default '{default:f}'", file=sys.stderr)
            return default
        if not _FLOAT.match(value):
            raise DLServerError(f"{self._where(line)}: {key}={value}: not a number")
        return self._c_float(key, value, value, line)

    def _c_float(self, key: str, value: str, item: str, line: int) -> float:
        """Darknet keeps cfg numbers in C floats: past their range (inf) is an error here."""
        number = float(item)
        if math.isinf(f32(number)):
            raise DLServerError(
                f"{self._where(line)}: {key}={value}: {item} is out of the range of a C float (about 3.4e38)"
            )
        return number

    def find_list(self, key: str, kind=float) -> list | None:
        """A comma-separated list of numbers, or None when the key is absent."""
        value, line = self._find(key)
        if value is None:
            return None
        pattern = _INT if kind is int else _FLOAT
        items = value.split(",")
        if value.endswith(","):
            items = items[:-1]
        for item in items:
            if not pattern.match(item):
                raise DLServerError(f"{self._where(line)}: {key}={value}: '{item}' is not a number")
        if kind is int:
            return [self._c_int(key, value, item, line) for item in items]
        return [self._c_float(key, value, item, line) for item in items]

    def report_unused(self) -> None:
        """Darknet's `Unused field` warnings, for keys no layer looked at."""
        for k, v, _ in self.entries:
            if k not in self.used:
                print(f"Unused field: '{printable(k)} = {printable(v)}'", file=sys.stderr)


def _parse_option(options: Options, stripped: str, path: str, number: int) -> None:
    if "=" not in stripped:
        raise DLServerError(f"{path}:{number}: '{stripped}' is not a key=value option")
    key, value = stripped.split("=", 1)
    if not key:
        raise DLServerError(f"{path}:{number}: option '={value}' has no key")
    if not value:
        raise DLServerError(f"{path}:{number}: option '{key}' has no value")
    options.add(key, value, number)


def parse_cfg(text: str, path: str) -> list[Options]:
    """Sections of a network cfg, in file order."""
    sections: list[Options] = []
    for number, raw in enumerate(text.split("\n"), 1):
        stripped = _strip(raw)
        if not stripped or stripped[0] in "#;":
            continue
        if stripped[0] == "[":
            if not stripped.endswith("]"):
                raise DLServerError(f"{path}:{number}: section header '{stripped}' has no closing ']'")
            sections.append(Options(path, stripped, number))
        elif not sections:
            raise DLServerError(f"{path}:{number}: option '{stripped}' comes before any [section]")
        else:
            _parse_option(sections[-1], stripped, path, number)
    if not sections:
        raise DLServerError(f"{path}: config file has no sections")
    return sections


def read_cfg(path: str) -> list[Options]:
    """Read a network cfg file."""
    return parse_cfg(read_text(path, "network cfg"), path)


def read_data_cfg(path: str) -> Options:
    """Read a `.data`/`.dataset` file: options with no sections."""
    text = read_text(path, "data cfg")
    options = Options(path, "data", 1)
    for number, raw in enumerate(text.split("\n"), 1):
        stripped = _strip(raw)
        if not stripped or stripped[0] in "#;":
            continue
        _parse_option(options, stripped, path, number)
    return options


def read_list(path: str, what: str = "list file") -> list[str]:
    """Lines of a list file (paths, labels or names); a final newline adds no entry."""
    text = read_text(path, what)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]
