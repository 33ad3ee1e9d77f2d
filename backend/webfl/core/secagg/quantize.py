"""Clipping and quantization of an update to integers mod 2^b, and decoding of their sum.

A volunteer clips its update to L2 norm ``clip`` (so every coordinate lies in
[-clip, clip]) and maps each coordinate to one of 2^q evenly spaced levels over
[-bound, bound], ``bound`` = ``clip`` unless given. For a large model that full range
wastes the levels (a typical coordinate is clip / sqrt(d), far below one step, so the
rounding noise swamps the update: ``bench/secagg.py`` measures it); a ``bound`` of a few
clip / sqrt(d) keeps the steps fine, and the rare coordinates beyond it are clipped. The server only ever sees the sum of n such vectors; n * (2^q - 1) < 2^b keeps
that sum from wrapping mod 2^b, so it decodes exactly to the sum of the dequantized
updates (the mean is then the server's job).

Rounding is stochastic (unbiased: the expected level is the exact value) when given a
generator, which in real use must come from the OS (``np.random.default_rng()`` with no
seed); without one it rounds to the nearest level (deterministic, biased by up to half a
step), for tests and for callers that cannot draw randomness.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Quantizer", "modulus_bits"]

MAX_BITS = 32


def modulus_bits(q: int, n: int, margin: int = 0) -> int:
    """b = q + ceil(log2 n) + margin: the sum of n values of q bits never reaches 2^b.

    ``margin`` leaves room for integers added before masking beyond the n updates (for
    example a distributed-noise share); the n updates alone need none.
    """
    if not 1 <= q <= 24:
        raise ValueError(f"quantization bits must be in 1..24, not {q}")
    if n < 1 or margin < 0:
        raise ValueError("the cohort size must be >= 1 and the margin >= 0")
    bits = q + math.ceil(math.log2(n)) + margin
    if bits > MAX_BITS:
        raise ValueError(f"{q} bits for {n} volunteers (+{margin}) need {bits} > {MAX_BITS} modulus bits")
    return bits


@dataclass(frozen=True)
class Quantizer:
    """Clip to L2 norm ``clip``, quantize to ``q`` bits over [-bound, bound], modulus 2^``bits``."""

    clip: float
    q: int
    bits: int
    bound: float | None = None

    @classmethod
    def for_cohort(cls, clip: float, q: int, n: int, margin: int = 0, bound: float | None = None) -> Quantizer:
        return cls(clip, q, modulus_bits(q, n, margin), bound)

    def __post_init__(self) -> None:
        for name, value in (("clipping bound", self.clip), ("coordinate bound", self.range)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"the {name} must be a positive number, not {value}")
        if self.bits < modulus_bits(self.q, 1) or self.bits > MAX_BITS:
            raise ValueError(f"modulus bits must be in {self.q}..{MAX_BITS}, not {self.bits}")

    @property
    def range(self) -> float:
        """The per-coordinate range [-range, range] the levels span."""
        return self.clip if self.bound is None else self.bound

    @property
    def levels(self) -> int:
        return (1 << self.q) - 1

    @property
    def capacity(self) -> int:
        """The most updates whose sum cannot wrap mod 2^bits."""
        return ((1 << self.bits) - 1) // self.levels

    def quantize(self, x: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Levels in 0..2^q-1 (uint32) of ``x`` clipped to L2 norm ``clip``, then to [-range, range]."""
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        if not np.isfinite(x).all():
            raise ValueError("an update with NaN or Inf cannot be quantized")
        norm = float(np.linalg.norm(x))
        if norm > self.clip:
            x = x * (self.clip / norm)
        scaled = (np.clip(x, -self.range, self.range) + self.range) * (self.levels / (2 * self.range))
        if rng is None:
            levels = np.rint(scaled)
        else:
            levels = np.floor(scaled + rng.random(scaled.shape))
        return np.clip(levels, 0, self.levels).astype(np.uint32)

    def decode_sum(self, total: np.ndarray, count: int) -> np.ndarray:
        """The float sum of ``count`` dequantized updates from the sum of their levels."""
        total = np.asarray(total)
        if total.dtype != np.uint32:
            raise ValueError("a quantized sum is uint32")
        if not 1 <= count <= self.capacity:
            raise ValueError(f"{count} updates do not fit the modulus 2^{self.bits} (at most {self.capacity})")
        if total.size and int(total.max()) > count * self.levels:
            raise ValueError(f"a coordinate of the sum exceeds {count} x {self.levels}: it wrapped or is not a sum")
        step = 2 * self.range / self.levels
        return total.astype(np.float64) * step - count * self.range
