"""`make demo`: the README's main job. Train LeNet on MNIST inside the sandbox through the
`dl-server` host (inputs args.cfg, cfg, data; output model), then validate on the 10000
test images, and report accuracy, training time and where the results are."""

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


def main() -> None:
    (ROOT / "model").mkdir(exist_ok=True)
    for stale in ("mnist_lenet.backup", "mnist_lenet.loss.csv"):
        (ROOT / "model" / stale).unlink(missing_ok=True)
    start = time.perf_counter()
    run_sandboxed("classifier.cfg", ["cfg", "data"], ["model"])
    trained = time.perf_counter() - start
    out = run_sandboxed("prediction_multi.cfg", ["cfg", "model", "data"], [])
    last = out.strip().splitlines()[-1]
    top = top_line(last)
    if not top or top.k != 5:
        sys.exit(f"demo: unexpected last line of valid: {last}")
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "plot_loss.py"),
            "model/mnist_lenet.loss.csv",
            "model/mnist_lenet.loss.png",
        ],
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    print()
    print(f"top-1 {top.top1:f}, top-5 {top.topk:f} on the 10000 MNIST test images")
    print(
        f"training: 2000 batches of 100 in {trained:.1f} s inside the sandbox "
        f"({trained / 2000 * 1000:.1f} ms/batch)"
    )
    print(f"weights: {ROOT / 'model' / 'mnist_lenet.weights'}")
    print(f"loss curve: {ROOT / 'model' / 'mnist_lenet.loss.png'} (data: model/mnist_lenet.loss.csv)")


if __name__ == "__main__":
    main()
