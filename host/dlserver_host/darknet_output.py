"""Parsers of the lines Darknet (and so dl-server) prints: the one place that knows their format.

Each parser takes one line (a trailing newline is allowed) and returns a typed record,
or None when the line is not of that kind:

    train_line   ``%d, %.3f: %f, %f avg, %f rate, %f seconds, %d images``  (classifier train, per batch)
    top_line     ``%d: top 1: %f, top %d: %f``                            (classifier valid, per image)
    predicted_line  ``%s: Predicted in %f seconds.``                       (detect)
    onnx_value_line ``n_float_data[%d] = %f``                              (aggregation onnx_predict)

``train_lines`` and ``last_top_line`` apply them to a run's whole stdout.
"""

from __future__ import annotations

import re
from typing import NamedTuple

_FLOAT = r"-?(?:\d+\.\d{6}|nan|inf)"  # %f; Python prints nan and inf for the special values

#: Darknet's per-batch training line; groups in print order (batch, epoch, loss, avg, rate, seconds, images).
TRAIN_LINE = re.compile(
    rf"^(?P<batch>\d+), (?P<epoch>\d+\.\d{{3}}): (?P<loss>{_FLOAT}), (?P<avg>{_FLOAT}) avg, "
    rf"(?P<rate>\d+\.\d{{6}}) rate, (?P<seconds>\d+\.\d{{6}}) seconds, (?P<images>\d+) images$"
)
TOP_LINE = re.compile(r"^(?P<index>\d+): top 1: (?P<top1>\d+\.\d{6}), top (?P<k>\d+): (?P<topk>\d+\.\d{6})$")
PREDICTED_LINE = re.compile(r"^(?P<filename>.*): Predicted in (?P<seconds>\d+\.\d{6}) seconds\.$")
ONNX_VALUE_LINE = re.compile(rf"^n_float_data\[(?P<index>\d+)\] = (?P<value>{_FLOAT})$")


class TrainLine(NamedTuple):
    batch: int  # batches done, 1-based
    epoch: float  # images seen / training images
    loss: float  # this batch's loss
    avg: float  # running average of the loss
    rate: float  # learning rate used for this batch
    seconds: float  # time of this batch (0 when the clock is off)
    images: int  # images seen so far


class TopLine(NamedTuple):
    index: int  # type: ignore[assignment]  # 0-based index of the image just validated (hides tuple.index)
    top1: float  # running top-1 accuracy
    k: int  # the dataset's top (5 for MNIST)
    topk: float  # running top-k accuracy


class PredictedLine(NamedTuple):
    filename: str
    seconds: float  # the forward pass


class OnnxValue(NamedTuple):
    index: int  # type: ignore[assignment]  # position in the model's output (hides tuple.index)
    value: float


def _match(pattern: re.Pattern, line: str):
    return pattern.match(line.rstrip("\r\n"))


def train_line(line: str) -> TrainLine | None:
    m = _match(TRAIN_LINE, line)
    if m is None:
        return None
    g = m.groupdict()
    return TrainLine(
        int(g["batch"]),
        float(g["epoch"]),
        float(g["loss"]),
        float(g["avg"]),
        float(g["rate"]),
        float(g["seconds"]),
        int(g["images"]),
    )


def train_lines(stdout: str) -> list[TrainLine]:
    """Every training line of a run's output, in order."""
    return [t for line in stdout.splitlines() if (t := train_line(line))]


def top_line(line: str) -> TopLine | None:
    m = _match(TOP_LINE, line)
    if m is None:
        return None
    return TopLine(int(m["index"]), float(m["top1"]), int(m["k"]), float(m["topk"]))


def last_top_line(stdout: str) -> TopLine | None:
    """The final accuracy of a `classifier valid` run: its last line, if that is a top line."""
    lines = stdout.rstrip("\n").splitlines()
    return top_line(lines[-1]) if lines else None


def predicted_line(line: str) -> PredictedLine | None:
    m = _match(PREDICTED_LINE, line)
    if m is None:
        return None
    return PredictedLine(m["filename"], float(m["seconds"]))


def onnx_value_line(line: str) -> OnnxValue | None:
    m = _match(ONNX_VALUE_LINE, line)
    if m is None:
        return None
    return OnnxValue(int(m["index"]), float(m["value"]))
