"""Combining the same tensor from T models (federated averaging), on float32 arrays.

- mean (the original's rule): sum in file order in float32, then multiply by f32(1/T)
  (Darknet) or divide by T (the original's ONNX path);
- weighted mean (`-weights a,b,c`): w_i = f32(a_i / sum a), result = sum_i w_i * x_i in
  float32, in file order;
- median (`-method median`): per coordinate, the middle value, or f32((lo + hi)/2) of
  the two middle values when T is even;
- trimmed mean (`-method trimmed:f`): per coordinate, drop the k = floor(f*T) smallest and
  k largest values, then the float32 mean (sum in ascending order, divided by T - 2k).
"""
from array import array
import math

from . import kernels
from .errors import DLServerError
from .rng import f32


class Method:
    """How to combine: kind is 'mean', 'median' or 'trimmed'; weights for a weighted mean."""

    def __init__(self, kind: str = "mean", fraction: float = 0.0, weights: list[float] | None = None):
        self.kind = kind
        self.fraction = fraction
        self.weights = weights


def parse_method(method: str | None, weights: str | None, count: int) -> Method:
    """The combination asked for by `-method` and `-weights` flags, checked against count."""
    parsed_weights = None
    if weights is not None:
        try:
            parsed_weights = [float(w) for w in weights.split(",")]
        except ValueError:
            raise DLServerError(f"-weights {weights}: not a comma-separated list of numbers") from None
        if len(parsed_weights) != count:
            raise DLServerError(f"-weights {weights}: {len(parsed_weights)} weights for {count} models")
        if any(w < 0 or not math.isfinite(w) for w in parsed_weights) or sum(parsed_weights) <= 0:
            raise DLServerError(f"-weights {weights}: weights must be >= 0 with a positive sum")
    if method is None or method == "mean":
        return Method("mean", weights=parsed_weights)
    if parsed_weights is not None:
        raise DLServerError(f"-weights applies to the mean, not to -method {method}")
    if method == "median":
        return Method("median")
    if method.startswith("trimmed:"):
        try:
            fraction = float(method[len("trimmed:"):])
        except ValueError:
            fraction = -1.0
        if not 0.0 <= fraction < 0.5:
            raise DLServerError(f"-method {method}: the trimmed fraction must be in [0, 0.5)")
        if count - 2 * int(fraction * count) < 1:
            raise DLServerError(f"-method {method}: trims every one of the {count} models")
        return Method("trimmed", fraction=fraction)
    raise DLServerError(f"-method {method}: unknown (use mean, median or trimmed:<fraction>)")


def combine(tensors: list, method: Method, divide: bool = False) -> array:
    """Combine equally long float32 arrays into a new array."""
    n = len(tensors[0])
    count = len(tensors)
    if method.kind == "mean" and method.weights is None:
        out = array("f", tensors[0])
        for t in tensors[1:]:
            kernels.axpy(n, 1.0, t, out)
        if divide:
            divisor = float(count)
            return array("f", [f32(x / divisor) for x in out])
        kernels.scal(n, f32(1.0 / count), out)
        return out
    if method.kind == "mean":
        total = sum(method.weights)
        out = array("f", bytes(4 * n))
        for w, t in zip(method.weights, tensors):
            kernels.axpy(n, f32(w / total), t, out)
        return out
    if method.kind == "median":
        mid = count // 2
        if count % 2:
            return array("f", [sorted(column)[mid] for column in zip(*tensors)])
        return array("f", [f32((s[mid - 1] + s[mid]) / 2) for s in map(sorted, zip(*tensors))])
    k = int(method.fraction * count)
    kept = count - 2 * k
    values = []
    for column in zip(*tensors):
        acc = 0.0
        for v in sorted(column)[k:count - k]:
            acc = f32(acc + v)
        values.append(f32(acc / kept))
    return array("f", values)
