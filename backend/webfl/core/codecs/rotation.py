"""Randomized Hadamard rotation before quantization (Suresh et al. 2017)."""

from __future__ import annotations

import math

import numpy as np

from .quantize import Quant
from .values import ValueStage

__all__ = ["MAX_SEED", "Rotated", "fwht", "rotate", "signs"]

MAX_SEED = 2**31 - 1


class Rotated(ValueStage):
    """A randomized Hadamard rotation before quantization (Suresh et al. 2017).

    Rotating spreads outliers over many coordinates, shrinking each block's range
    and so the quantization error. Only the seed of the random signs is sent.
    """

    def __init__(self, inner: Quant) -> None:
        self.inner = inner
        self.stages = ("rot", *inner.stages)

    def encode(self, x, rng):
        seed = int(rng.integers(MAX_SEED + 1))
        params, arrays = self.inner.encode(rotate(x, seed), rng)
        return {"seed": seed, **params}, arrays

    def layout(self, p, n):
        p.int("seed", 0, MAX_SEED)
        return self.inner.layout(p, n)

    def decode(self, p, arrays, n):
        return rotate(self.inner.decode(p, arrays, n), p["seed"], inverse=True)


def rotate(x: np.ndarray, seed: int, inverse: bool = False) -> np.ndarray:
    """``H D x`` (``inverse``: ``D H x``) with D random signs from ``seed``.

    H is orthonormal Walsh-Hadamard on each power-of-two segment of the binary
    decomposition of ``len(x)``: no padding, so the payload stays n values long.
    """
    d = signs(seed, x.size)
    y = np.array(x, dtype=np.float32) if inverse else x * d
    start = 0
    for p in reversed(range(x.size.bit_length())):
        if x.size >> p & 1:
            fwht(y[start : start + 2**p])
            start += 2**p
    if inverse:
        y *= d
    return y


def signs(seed: int, n: int) -> np.ndarray:
    """±1 per entry from the raw PCG64 stream.

    NumPy keeps bit generators' streams fixed across versions (``Generator`` methods
    may change), so the browser's NumPy and the server's draw the same signs.
    """
    words = np.random.PCG64(seed).random_raw(-(-n // 64)).astype("<u8")
    bits = np.unpackbits(words.view(np.uint8), count=n, bitorder="little")
    return np.float32(1) - np.float32(2) * bits


def fwht(v: np.ndarray) -> None:
    """In-place orthonormal fast Walsh-Hadamard transform of a power-of-two-long view."""
    n = v.size
    # The butterflies of span < 32 would stride through tiny rows (slow in NumPy), so
    # they run on the transposed (32, n/32) matrix, where each is a whole-row operation.
    rows = min(n, 32)
    t = np.ascontiguousarray(v.reshape(-1, rows).T)
    _butterflies(t.reshape(-1), t.shape[1])
    v.reshape(-1, rows)[...] = t.T
    _butterflies(v, rows)
    v *= np.float32(1 / math.sqrt(n))


def _butterflies(v: np.ndarray, h: int) -> None:
    """The unnormalised Walsh-Hadamard stages of span h, 2h, ... < len(v), in place."""
    while h < v.size:
        pairs = v.reshape(-1, 2, h)
        total = pairs[:, 0] + pairs[:, 1]
        np.subtract(pairs[:, 0], pairs[:, 1], out=pairs[:, 1])
        pairs[:, 0] = total
        h *= 2
