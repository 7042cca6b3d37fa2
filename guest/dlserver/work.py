"""The work a run asks of a network, estimated before it starts and checked against
limits.MAX_WORK, so a small cfg that fits in memory cannot hold the sandbox for hours.

work = sum over layers of multiply_adds (one forward pass of one input row, Layer.multiply_adds)
       * rows the command runs through the network * (3 when training: backward computes two
       products of the forward one's size, the delta and the weight gradient).
A layer whose share alone is over the limit is named (cfg file:line), else the network's total.
"""

from . import limits
from .errors import DLServerError

TRAINING_FACTOR = 3


def check_work(net, rows: int, what: str, training: bool = False) -> None:
    """Refuse running `rows` input rows through `net` (forward, or forward and backward with
    `training`) when the estimate is over limits.MAX_WORK; `what` says what the rows are."""
    factor = TRAINING_FACTOR if training else 1
    limit = limits.MAX_WORK
    total = 0
    for index, layer in enumerate(net.layers):
        work = layer.multiply_adds() * rows * factor
        if work > limit:
            raise DLServerError(
                f"{net.cfg_path}:{layer.cfg_line}: layer {index} ({layer.kind}) needs about {work:.3g}"
                f" multiply-adds for {what}, over the work limit {limit:.3g} (DL_SERVER_MAX_WORK raises it)"
            )
        total += work
    if total > limit:
        raise DLServerError(
            f"{net.cfg_path}: the network needs about {total:.3g} multiply-adds for {what},"
            f" over the work limit {limit:.3g} (DL_SERVER_MAX_WORK raises it)"
        )
