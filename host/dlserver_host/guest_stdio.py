"""The guest's stdout and stderr, shared by both engines: the guest writes them to files in a
private directory (``dl-server-stdio-*``), and a FileTail forwards each file as it grows.

Files rather than pipes or wasmtime-py's custom streams: wasmtime-py 50's ``stdout_custom``
passes on at most 8192 bytes of one guest write and drops the rest (runtime.GuestRun), and
the CLI engine's child writes to them as its fd 1 and 2.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

OutputCallback = Callable[[bytes], None]


class FileTail:
    """Forward what is appended to a file to ``callback``, from a thread, until closed.

    On exit the rest of the file is forwarded before the thread ends, so nothing
    the guest wrote is lost.
    """

    POLL_SECONDS = 0.02
    CHUNK = 1 << 16

    def __init__(self, path: str, callback: OutputCallback):
        self._file = open(path, "rb")  # noqa: SIM115 (kept open until __exit__ closes it)
        self._callback = callback
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._forward, name="guest-output", daemon=True)

    def __enter__(self) -> FileTail:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        self._thread.join()
        self._file.close()

    def _forward(self) -> None:
        while True:
            finishing = self._done.is_set()  # read after this: everything written is seen
            data = self._file.read(self.CHUNK)
            if data:
                self._callback(data)
            elif finishing:
                return
            else:
                self._done.wait(self.POLL_SECONDS)


def nearly_full(path: str) -> bool:
    """Whether the file system holding ``path`` (the stdio directory) has less than 64 KiB left:
    a guest that trapped there could not write its output."""
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 1 << 16


def last_line(message: str) -> str:
    """The last non-blank line of an engine's report (a trap's message, the CLI's stderr report)."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    return lines[-1] if lines else message
