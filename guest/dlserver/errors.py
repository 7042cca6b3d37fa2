"""The one exception type the guest raises for bad input; its text is the error line."""


class DLServerError(Exception):
    """A problem with the user's input: printed as one line, exit status 1."""


MAX_ECHO = 1000  # characters of one echoed value or error line


def printable(text: str, limit: int = MAX_ECHO) -> str:
    """Text safe to print on a terminal: control characters (C0, DEL, C1) as \\xNN escapes,
    and at most `limit` characters (the middle cut, with how many were left out)."""
    if len(text) > limit:
        cut = len(text) - limit
        text = f"{text[: limit // 2]}...[{cut} characters]...{text[-limit // 2 :]}"
    if text.isprintable():
        return text
    return "".join(
        ch if ch.isprintable() else f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"\\u{ord(ch):04x}"
        for ch in text
    )
