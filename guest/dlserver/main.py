"""Entry of dl-server: arguments from argv or `args.cfg`, Darknet's flag handling, dispatch.

Exit status: 0 on success, 1 for any error (one line on stderr naming the file and the
problem), 2 for a command a later piece of work will build (a WASI component can only
report success or failure, so under wasmtime both 1 and 2 show as 1).
"""
import sys

from .commands import aggregation, aggregation_darknet, classifier, detector
from .errors import DLServerError, NotImplementedYet

ARGS_FILE = "args.cfg"
MAX_ARGS = 1024  # the original has room for 9 (a 10th line overflows its buffer)
PROGRAM = "dl-server"


class Argv:
    """Darknet's argv after flag removal: entries shift left, the tail becomes None, and
    argc keeps its original value (spec §1.3)."""

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
        try:
            return int(value)
        except ValueError:
            raise DLServerError(f"flag {flag} {value}: not an integer") from None

    def find_float(self, flag: str, default: float) -> float:
        value = self._find_value(flag)
        if value is None:
            return default
        try:
            return float(value)
        except ValueError:
            raise DLServerError(f"flag {flag} {value}: not a number") from None

    def find_str(self, flag: str, default: str | None) -> str | None:
        value = self._find_value(flag)
        return default if value is None else value


def read_args_file(path: str = ARGS_FILE) -> list[str]:
    """One argument per line of args.cfg; echoes `argv[i] = '...'` on stdout like the original.

    Unlike the original, lines are not cut at 99 characters, a trailing '\\r' is dropped
    and up to MAX_ARGS arguments are taken (the original overflows past 9)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise DLServerError("Argument file not found. Command-line arguments not found."
                            f" (no {path} in the working directory and no arguments given)") from None
    except OSError as e:
        raise DLServerError(f"{path}: cannot read argument file: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DLServerError(f"{path}: not a text file (invalid UTF-8 at byte {e.start})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    args = [line[:-1] if line.endswith("\r") else line for line in lines]
    if not args:
        raise DLServerError(f"{path}: the argument file is empty")
    if len(args) > MAX_ARGS:
        raise DLServerError(f"{path}: {len(args)} arguments, at most {MAX_ARGS} are allowed")
    for i, arg in enumerate(args, 1):
        sys.stdout.write(f"argv[{i}] = '{arg}'\n")
    return [PROGRAM] + args


def run_classifier(argv: Argv) -> None:
    if argv.argc < 4:
        raise DLServerError(f"usage: {argv[0]} {argv[1]} [train/predict/valid] [cfg] [weights (optional)]")
    top = argv.find_int("-t", 0)
    clear = argv.find_arg("-clear")
    seed = argv.find_int("-seed", None)
    data, cfg, weights, filename = argv[3], argv[4], argv[5], argv[6]
    if cfg is None:
        raise DLServerError(f"usage: {argv[0]} {argv[1]} {argv[2]} [data] [cfg] [weights (optional)]")
    command = argv[2]
    if command == "train":
        classifier.train_classifier(data, cfg, weights, clear, seed)
    elif command == "valid":
        classifier.validate_classifier(data, cfg, weights)
    elif command == "predict":
        classifier.predict_classifier(data, cfg, weights, filename, top)
    else:
        raise DLServerError(f"Not an option under classifier: {command}")


def run_detect(argv: Argv) -> None:
    """Darknet's detect: thresh and filename read before -out is removed (spec §1.4)."""
    thresh = argv.find_float("-thresh", .5)
    filename = argv[4] if argv.argc > 4 else None
    outfile = argv.find_str("-out", None)
    if argv[2] is None:
        raise DLServerError(f"usage: {argv[0]} detect [cfg] [weights] [image] [-thresh T] [-out NAME]")
    detector.test_detector("cfg/coco.data", argv[2], argv[3], filename, thresh, .5, outfile)


def run_aggregation(argv: Argv) -> None:
    if argv.argc < 4:
        raise DLServerError(f"usage: {argv[0]} {argv[1]} [weights_format] [cfg]/NONE [weights_1/weights_2/...]")
    if argv[2] == "darknet":
        method = argv.find_str("-method", None)
        weights = argv.find_str("-weights", None)
        cfg, out = argv[3], argv[4]
        inputs = [argv[i] for i in range(5, argv.argc) if argv[i] is not None]
        if out is None:
            raise DLServerError(f"usage: {argv[0]} aggregation darknet [cfg] [output] [weights_1] [weights_2 ...]")
        aggregation_darknet.aggregate_darknet(cfg, out, inputs, method, weights)
        return
    if argv[2] == "onnx":
        aggregation.run_onnx(argv)
        return
    if argv[2] == "onnx_predict":
        aggregation.run_onnx_predict(argv)
        return
    raise DLServerError(f"Not an option under aggregation: {argv[2]}")


COMMANDS = {"classifier": run_classifier, "detect": run_detect, "aggregation": run_aggregation}


def run(args: list[str]) -> None:
    """Run one command given as a full argv (argv[0] is the program name)."""
    argv = Argv(args)
    command = COMMANDS.get(argv[1])
    if command is None:
        raise DLServerError(f"Not an option: {argv[1]} (commands: {', '.join(COMMANDS)})")
    command(argv)


def main(args: list[str] | None = None) -> int:
    """Entry point: returns the exit status after printing any error as one line."""
    if args is None:
        args = sys.argv
    status = 0
    try:
        if len(args) < 2:
            args = read_args_file()
        run(args)
    except NotImplementedYet as e:
        sys.stderr.write(f"dl-server: {e}\n")
        status = 2
    except DLServerError as e:
        sys.stderr.write(f"dl-server: error: {e}\n")
        status = 1
    except MemoryError:
        sys.stderr.write("dl-server: error: out of memory\n")
        status = 1
    except Exception as e:  # a bug, not bad input: still one line and a failure status
        sys.stderr.write(f"dl-server: internal error: {type(e).__name__}: {e}\n")
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    return status


if __name__ == "__main__":
    sys.exit(main())
