"""The one exception type the guest raises for bad input; its text is the error line."""


class DLServerError(Exception):
    """A problem with the user's input: printed as one line, exit status 1."""
