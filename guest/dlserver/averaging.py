"""Combining the same tensor from T models (federated averaging): every aggregation, Darknet's
and ONNX's, streams its models through one Combiner per tensor.

float32 (the definitions; `aggregation onnx` documents its double and integer ones):
- mean (the original's rule): sum in file order in float32, then multiply by f32(1/T)
  (Darknet's rule) or divide by T (the original's ONNX path, ONNX's rule);
- weighted mean (`-weights a,b,c`): w_i = f32(a_i / sum a), result = sum_i w_i * x_i in
  float32, in file order (Darknet's rule scales the first model by w_1, ONNX's adds
  w_1 * x_1 to zeros: the sign of a zero can differ);
- median (`-method median`): per coordinate, the middle value, or f32((lo + hi)/2) of
  the two middle values when T is even;
- trimmed mean (`-method trimmed:f`): per coordinate, drop the k = floor(f*T) smallest and
  k largest values, then the float32 mean (sum in ascending order, divided by T - 2k).
(float32 median and trimmed mean in kernels.column_rule: when -0 and +0 tie, the sign of a
zero result is unspecified. Whole-model rules, -method krum:F and the rest: dlserver.rules.)
"""

import math
from array import array
from fractions import Fraction
from itertools import repeat
from operator import add, mul, truediv
from typing import Any

from . import kernels, rules
from .errors import DLServerError
from .rng import f32


class Method:
    """How to combine: kind is 'mean', 'median' or 'trimmed' (per tensor, by a Combiner) or a
    whole-model rule of dlserver.rules (then `rule` is set); weights for a weighted mean."""

    def __init__(
        self,
        kind: str = "mean",
        fraction: float = 0.0,
        weights: list[float] | None = None,
        rule: rules.Rule | None = None,
    ):
        self.kind = kind
        self.fraction = fraction
        self.weights = weights
        self.rule = rule


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
        total = sum(parsed_weights)
        if any(w < 0 or not math.isfinite(w) for w in parsed_weights) or not 0 < total < math.inf:
            raise DLServerError(f"-weights {weights}: weights must be >= 0 with a positive sum (finite)")
    if method is None or method == "mean":
        return Method("mean", weights=parsed_weights)
    name = method.split(":")[0]
    if name in rules.NAMES and name != "bulyan":
        return Method(name, weights=parsed_weights, rule=rules.parse_rule(method, count))
    if parsed_weights is not None:
        raise DLServerError(f"-weights applies to the mean, not to -method {method}")
    if method == "median":
        return Method("median")
    if method.startswith("trimmed:"):
        try:
            fraction = float(method[len("trimmed:") :])
        except ValueError:
            fraction = -1.0
        if not 0.0 <= fraction < 0.5:
            raise DLServerError(f"-method {method}: the trimmed fraction must be in [0, 0.5)")
        if count - 2 * int(fraction * count) < 1:
            raise DLServerError(f"-method {method}: trims every one of the {count} models")
        return Method("trimmed", fraction=fraction)
    if name == "bulyan":
        return Method(name, rule=rules.parse_rule(method, count))
    raise DLServerError(
        f"-method {method}: unknown (use mean, median, trimmed:F, krum:F, multikrum:F:M, bulyan:F, geomed,"
        " fedavgm:..., fedadam:..., fedyogi:..., fedadagrad:..., dpfixed:Z:C or dpadaptive:...)"
    )


DARKNET, ONNX = "darknet", "onnx"  # the two mean rules (module docstring)


def _order_statistic(tensors: list, method: Method) -> array:
    """Median or trimmed mean of equally long float32 arrays, coordinate-wise, into a new array
    (kernels.column_rule: the definitions of the module docstring)."""
    size = len(tensors[0])
    out = array("f", bytes(4 * size))
    if size:
        if method.kind == "median":
            kernels.column_rule(kernels.RULE_MEDIAN, tensors, size, 0, out)
        else:
            k = int(method.fraction * len(tensors))
            kernels.column_rule(kernels.RULE_TRIMMED, tensors, size, k, out)
    return out


def trunc_div(a: int, b: int) -> int:
    """C integer division by b > 0: truncation toward zero."""
    return a // b if a >= 0 else -((-a) // b)


def divide_f32(acc: array, d: int) -> array:
    """f32(x / d) for every x: a correctly rounded float32 division (x and d are exact in
    double, and rounding a double quotient to float32 is innocuous for division).
    In place when d is a power of 2."""
    if d == 1:
        return acc
    if d & (d - 1) == 0:
        kernels.scal(len(acc), 1.0 / d, acc)  # multiplying by 2**-k rounds the same way
        return acc
    # No division kernel: map() keeps the loop in C, one float object per value.
    return array("f", map(truediv, acc, repeat(float(d))))


class Combiner:
    """Combines the values of one tensor across models, fed in file order with add(), into
    result(). kind: "f32" (an array('f')), "f64", "int" (lists or arrays of Python numbers),
    "string" (kept from the first model); "f16" and "bf16" combine as "f32".

    rule: DARKNET or ONNX, the float32 mean's rule. Under DARKNET the first model's float32
    values are the accumulator of the mean, so they hold the result afterwards (the caller
    passes arrays it no longer needs); under ONNX one model alone is given back as it came.
    Values fed to median or trimmed must stay unchanged until result()."""

    def __init__(self, method: Method, kind: str = "f32", rule: str = ONNX):
        self.kind = "f32" if kind in ("f16", "bf16") else kind
        self.method = method
        self.rule = rule
        # the running sum: array('f') or array('d'), or a list of exact integers or Fractions
        self.acc: Any = None
        self.first: Any = None
        self.stack: list[Any] = []  # every model's values (median, trimmed)
        self.count = 0
        weights = method.weights
        if weights is not None:
            s = sum(weights)
            self.coef_f32 = [f32(w / s) for w in weights]
            self.coef_f64 = [w / s for w in weights]
            self.coef_exact = [Fraction(w) for w in weights]

    def add(self, values) -> None:
        i, kind = self.count, self.kind
        self.count += 1
        if i == 0:
            self.first = values
        if kind == "string":
            return
        if self.method.kind != "mean":
            self.stack.append(values)
            return
        weighted = self.method.weights is not None
        if kind == "f32":
            n = len(values)
            if i > 0:
                kernels.axpy(n, self.coef_f32[i] if weighted else 1.0, values, self.acc)
            elif self.rule == DARKNET:
                self.acc = values
                if weighted:
                    kernels.scal(n, self.coef_f32[0], values)
            elif weighted:
                self.acc = array("f", bytes(4 * n))
                kernels.axpy(n, self.coef_f32[0], values, self.acc)
            else:
                self.acc = array("f", values)
        elif kind == "f64":
            if weighted:
                terms = map(mul, values, repeat(self.coef_f64[i]))
                self.acc = array("d", map(add, repeat(0.0) if i == 0 else self.acc, terms))
            else:
                self.acc = array("d", values) if i == 0 else array("d", map(add, self.acc, values))
        else:
            terms = map(mul, values, repeat(self.coef_exact[i])) if weighted else values
            self.acc = list(terms) if i == 0 else list(map(add, self.acc, terms))

    def result(self):
        kind, total, method = self.kind, self.count, self.method
        if kind == "string" or (total == 1 and self.rule == ONNX):
            return self.first
        if method.kind == "mean":
            if method.weights is not None:
                if kind == "int":
                    s = sum(self.coef_exact)
                    return [int(v / s) for v in self.acc]  # int() of a Fraction truncates
                return self.acc
            if kind == "f32":
                if self.rule == DARKNET:
                    kernels.scal(len(self.acc), f32(1.0 / total), self.acc)
                    return self.acc
                return divide_f32(self.acc, total)
            if kind == "f64":
                return array("d", map(truediv, self.acc, repeat(float(total))))
            return [trunc_div(v, total) for v in self.acc]
        if kind == "f32":
            return _order_statistic(self.stack, method)
        columns = map(sorted, zip(*self.stack))
        if method.kind == "median":
            mid = total // 2
            if total % 2:
                values = [c[mid] for c in columns]
            elif kind == "int":
                values = [trunc_div(c[mid - 1] + c[mid], 2) for c in columns]
            else:
                values = [(c[mid - 1] + c[mid]) / 2 for c in columns]
        else:
            k = int(method.fraction * total)
            kept = total - 2 * k
            if kind == "int":
                values = [trunc_div(sum(c[k : total - k]), kept) for c in columns]
            else:
                values = []
                for c in columns:
                    acc = 0.0
                    for v in c[k : total - k]:
                        acc += v
                    values.append(acc / kept)
        return values if kind == "int" else array("d", values)
