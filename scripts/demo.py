"""`make demo`: the README's main job. Train LeNet on MNIST inside the sandbox through the
`dl-server` host (inputs args.cfg, cfg, data; output model), then validate on the 10000
test images, and report accuracy, training time and where the results are.

`make demo-bn` (`demo.py mnist_resnet`): the same with cfg/mnist_resnet.cfg, a small
batch-normalised residual CNN (args_files/classifier_mnist_resnet.cfg, prediction_mnist_resnet.cfg).
"""

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from dlserver_host.darknet_output import top_line, train_line

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def run_sandboxed(args_file: str, inputs: list[str], outputs: list[str]) -> str:
    """Copy args_files/<args_file> to args.cfg and run dl-server.wasm through the host."""
    shutil.copy(ROOT / "args_files" / args_file, ROOT / "args.cfg")
    cmd = [str(BIN / "dl-server"), "--program", "dl-server.wasm", "-c", "--input-source", "args.cfg", *inputs]
    if outputs:
        cmd += ["--output-source", *outputs]
    print("$", " ".join(cmd[1:]).replace(str(BIN / "dl-server"), "dl-server"), flush=True)
    proc = subprocess.Popen([*cmd], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None  # stdout=PIPE
    lines = []
    for line in proc.stdout:
        lines.append(line)
        batch = train_line(line)
        if batch and batch.batch % 100 == 0:
            print("  " + line.rstrip(), flush=True)
    if proc.wait() != 0:
        sys.exit(f"demo: {args_file} failed (exit {proc.returncode})")
    return "".join(lines)


def main(name: str = "mnist_lenet") -> None:
    if name == "mnist_lenet":
        train_args, valid_args = "classifier.cfg", "prediction_multi.cfg"
    else:
        train_args, valid_args = f"classifier_{name}.cfg", f"prediction_{name}.cfg"
    cfg = (ROOT / "cfg" / f"{name}.cfg").read_text()
    batches = int(re.search(r"(?m)^max_batches=(\d+)", cfg).group(1))  # type: ignore[union-attr]
    batch = int(re.search(r"(?m)^batch=(\d+)", cfg).group(1))  # type: ignore[union-attr]
    (ROOT / "model").mkdir(exist_ok=True)
    for stale in (f"{name}.backup", f"{name}.loss.csv"):
        (ROOT / "model" / stale).unlink(missing_ok=True)
    start = time.perf_counter()
    run_sandboxed(train_args, ["cfg", "data"], ["model"])
    trained = time.perf_counter() - start
    out = run_sandboxed(valid_args, ["cfg", "model", "data"], [])
    last = out.strip().splitlines()[-1]
    top = top_line(last)
    if not top or top.k != 5:
        sys.exit(f"demo: unexpected last line of valid: {last}")
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "plot_loss.py"),
            f"model/{name}.loss.csv",
            f"model/{name}.loss.png",
        ],
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    print()
    print(f"top-1 {top.top1:f}, top-5 {top.topk:f} on the 10000 MNIST test images")
    print(
        f"training: {batches} batches of {batch} in {trained:.1f} s inside the sandbox "
        f"({trained / batches * 1000:.1f} ms/batch)"
    )
    print(f"weights: {ROOT / 'model' / f'{name}.weights'}")
    print(f"loss curve: {ROOT / 'model' / f'{name}.loss.png'} (data: model/{name}.loss.csv)")


if __name__ == "__main__":
    main(*sys.argv[1:2])
