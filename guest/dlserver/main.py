"""Entry of dl-server: arguments from argv or `args.cfg`, then the command's run(argv).

Exit status: 0 on success, 1 for any error (one line on stderr naming the file and the
problem).
"""

import sys

from . import buffers, fastmode, limits
from .argv import Argv, read_args_file
from .commands import aggregation, classifier, detector
from .errors import DLServerError, printable

COMMANDS = {"classifier": classifier.run, "detect": detector.run, "aggregation": aggregation.run}


def run(args: list[str]) -> None:
    """Run one command given as a full argv (argv[0] is the program name)."""
    argv = Argv(args)
    name = argv[1]
    command = None if name is None else COMMANDS.get(name)
    if command is None:
        raise DLServerError(f"Not an option: {argv[1]} (commands: {', '.join(COMMANDS)})")
    command(argv)


def main(args: list[str] | None = None) -> int:
    """Entry point: returns the exit status after printing any error as one line."""
    if args is None:
        args = sys.argv
    status = 0
    try:
        limits.refresh()
        buffers.reset_budget()
        args, fast = fastmode.take(args)  # `dl-server.wasm -fast` alone: args.cfg, fast
        if len(args) < 2:
            args, in_file = fastmode.take(read_args_file())
            fast = fast or in_file
        fastmode.select(fast)
        run(args)
    except DLServerError as e:
        sys.stderr.write(f"dl-server: error: {printable(str(e))}\n")
        status = 1
    except MemoryError:
        run_line = printable(" ".join(args[1:]))
        sys.stderr.write(f"dl-server: error: out of memory running '{run_line}'\n")
        status = 1
    except Exception as e:  # a bug, not bad input: still one line and a failure status
        sys.stderr.write(f"dl-server: internal error: {type(e).__name__}: {printable(str(e))}\n")
        status = 1
    finally:
        fastmode.select(False)
    sys.stdout.flush()
    sys.stderr.flush()
    return status


if __name__ == "__main__":
    sys.exit(main())
