"""Darknet's learning-rate policies (get_current_rate), float32 like the original
(docs/darknet-contract.md §4.13)."""

import math

from .rng import f32


def learning_rate(net) -> float:
    """The rate for the current batch number bn = seen / (batch * subdivisions)."""
    bn = net.current_batch
    lr = f32(net.learning_rate)
    power = f32(net.power)
    if bn < net.burn_in:
        return f32(lr * _pow(f32(f32(bn) / net.burn_in), power))
    policy = net.policy
    if policy == "constant":
        return lr
    if policy == "step":
        # batch_num / step in size_t (32 bits in wasm32): a negative step is a huge divisor
        return f32(lr * _pow(f32(net.scale), bn // (net.step & 0xFFFFFFFF)))
    if policy == "steps":
        rate = lr
        for step, scale in zip(net.steps, net.scales):
            if step > bn:
                return rate
            rate = f32(rate * f32(scale))
        return rate
    if policy == "exp":
        return f32(lr * _pow(f32(net.gamma), bn))
    if policy == "poly":
        return f32(lr * _pow(f32(1 - f32(f32(bn) / net.max_batches)), power))
    if policy == "random":
        return f32(lr * _pow(net.rng.uniform(0.0, 1.0), power))
    if policy == "sigmoid":
        # batch_num is an unsigned size_t in Darknet: bn - step wraps below the step.
        offset = f32(float((bn - net.step) & 0xFFFFFFFF))
        return f32(lr * (1.0 / (1.0 + _exp(f32(f32(net.gamma) * offset)))))
    raise ValueError(f"unknown policy {policy}")


def _pow(base: float, exponent: float) -> float:
    """C's pow: an overflow is inf (-inf for a negative base to an odd power), 0 to a negative
    power inf, a negative base to a fractional power NaN (Python raises for all three)."""
    try:
        return math.pow(base, exponent)
    except OverflowError:
        return -math.inf if base < 0 and exponent % 2 == 1 else math.inf
    except ValueError:
        return math.inf if base == 0 else math.nan


def _exp(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf
