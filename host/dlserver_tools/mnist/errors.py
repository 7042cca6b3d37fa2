"""The errors of MNIST preparation and its messages on stderr (prefix ``prepare_mnist:``)."""

from __future__ import annotations

import sys
import time


class PrepError(Exception):
    """A problem to report as one line and exit 1."""


class SourceUnavailable(PrepError):
    """The source cannot be reached (tool missing, network); try the next one."""


class UsageError(Exception):
    """Bad option value: exit 2."""


def log(msg: str) -> None:
    print(f"prepare_mnist: {msg}", file=sys.stderr, flush=True)


class Progress:
    """A plain stderr progress line (\\r-updated on a terminal)."""

    def __init__(self, label: str, total: int):
        self.label = label
        self.total = max(total, 1)
        self.tty = sys.stderr.isatty()
        self.last_pct = -1
        self.start = time.monotonic()

    def update(self, done: int) -> None:
        pct = done * 100 // self.total
        step = 1 if self.tty else 25
        if pct == self.last_pct or (pct % step and done != self.total):
            return
        self.last_pct = pct
        line = f"prepare_mnist: {self.label}: {done}/{self.total} ({pct}%)"
        if self.tty:
            print("\r" + line, end="", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        secs = time.monotonic() - self.start
        if self.tty:
            print(f" {secs:.1f}s", file=sys.stderr, flush=True)
        else:
            log(f"{self.label}: done in {secs:.1f}s")
