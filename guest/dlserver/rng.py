"""musl/wasi-libc's rand() and Darknet's draws built on it (docs/darknet-contract.md §10.2), so a run
consumes and produces the same random numbers as the original wasm build."""

import math
import struct

from . import kernels

_MUL = 6364136223846793005
_MASK = (1 << 64) - 1
_TWO_PI = 6.2831854820251465  # f64(f32(2*pi)): Darknet's TWO_PI is a float literal
_F32 = struct.Struct("f")


def f32(x: float) -> float:
    """Round a Python float to IEEE float32."""
    return _F32.unpack(_F32.pack(x))[0]


class Random:
    """The rand() state (initially 0, as in a fresh wasm instance) plus Box-Muller's cache."""

    def __init__(self, seed: int | None = None):
        self.state = 0
        self.spare: tuple[float, float] | None = None  # Box-Muller's (r1, r2)
        if seed is not None:
            self.srand(seed)

    def srand(self, seed: int) -> None:
        """musl srand: s = seed - 1 (as uint32)."""
        self.state = (seed - 1) & 0xFFFFFFFF
        self.spare = None

    def rand(self) -> int:
        """s = s*6364136223846793005 + 1 mod 2^64; return s >> 33."""
        self.state = (self.state * _MUL + 1) & _MASK
        return self.state >> 33

    def uniform(self, a: float, b: float) -> float:
        """rand_uniform(a, b) = f32(f32(rand()) / 2^31) * (b - a) + a, in float32 steps."""
        if b < a:
            a, b = b, a
        r = f32(f32(float(self.rand())) / 2147483648.0)
        return f32(f32(r * f32(b - a)) + a)

    def normal(self) -> float:
        """rand_normal: Box-Muller with a cached second value, rounded to float32."""
        if self.spare is not None:
            r1, r2 = self.spare
            self.spare = None
            return f32(math.sqrt(r1) * math.sin(r2))
        r1 = self.rand() / 2147483647.0
        if r1 < 1e-100:
            r1 = 1e-100
        r1 = -2 * math.log(r1)
        r2 = (self.rand() / 2147483647.0) * _TWO_PI
        self.spare = (r1, r2)
        return f32(math.sqrt(r1) * math.cos(r2))

    def uniform_fill(self, out, a: float, b: float, scale: float) -> None:
        """out[i] = f32(scale * uniform(a, b)) for every item of the float32 buffer `out`, in
        order (in C: the same draws and the same float steps as a loop over uniform())."""
        self.state = kernels.rand_uniform_fill(out, len(out), a, b, scale, self.state)

    def normal_fill(self, out, scale: float) -> None:
        """out[i] = f32(scale * normal()) for every item of `out`, in order (in C, Box-Muller's
        cached pair carried in and out as with normal())."""
        self.state, self.spare = kernels.rand_normal_fill(out, len(out), scale, self.state, self.spare)

    def rand_below(self, n: int, m: int) -> list[int]:
        """[rand() % m for _ in range(n)], drawn in C."""
        self.state, picks = kernels.rand_below(n, m, self.state)
        return picks

    def skip(self, n: int) -> None:
        """Advance the state by n rand() calls in O(log n) (LCG jump-ahead)."""
        mul, inc = 1, 0
        a, c = _MUL, 1
        while n:
            if n & 1:
                mul, inc = (mul * a) & _MASK, (inc * a + c) & _MASK
            c = (c * (a + 1)) & _MASK
            a = (a * a) & _MASK
            n >>= 1
        self.state = (self.state * mul + inc) & _MASK

    def skip_normals(self, m: int) -> None:
        """Advance as m normal() calls would (Box-Muller pairs share two rand() draws)."""
        if m and self.spare is not None:
            self.spare = None
            m -= 1
        pairs, odd = divmod(m, 2)
        self.skip(2 * pairs)
        if odd:
            self.normal()
