"""Edit the text of a Darknet ``.cfg`` or ``.dataset`` file: one ``key=value`` line at a time."""

from __future__ import annotations

import re


def set_option(text: str, key: str, value: object) -> str:
    """``text`` with its first ``key=...`` line (spaces allowed around ``=``) made ``key=value``.

    Raises KeyError(key) when there is no such line.
    """
    text, count = re.subn(rf"(?m)^{re.escape(key)}\s*=.*$", f"{key}={value}", text, count=1)
    if count != 1:
        raise KeyError(key)
    return text
