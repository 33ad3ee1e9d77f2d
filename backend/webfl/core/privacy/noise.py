"""Gaussian noise from the operating system's CSPRNG.

A NumPy ``Generator`` is a seeded, predictable stream: whoever learns or guesses the
seed (the run's seed is in its settings) can subtract the noise and the guarantee is
gone. So DP noise is drawn from ``os.urandom`` through the Box-Muller transform,
vectorised: 16 random bytes give two independent standard normals.

This is floating-point Gaussian sampling, not a discrete Gaussian (Canonne et al.
2020): its low-order bits are not exactly Gaussian, a known gap shared with Opacus and
TensorFlow Privacy. The source of bytes is injectable for tests only.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

__all__ = ["RandomBytes", "SecureGaussian"]

RandomBytes = Callable[[int], bytes]
_TWO_PI = 2.0 * np.pi


class SecureGaussian:
    """Standard normal draws (float64) from ``random_bytes`` (``os.urandom`` by default)."""

    def __init__(self, random_bytes: RandomBytes = os.urandom) -> None:
        self._random_bytes = random_bytes

    def standard_normal(self, n: int) -> np.ndarray:
        if n < 0:
            raise ValueError(f"cannot draw {n} values")
        pairs = (n + 1) // 2
        raw = self._random_bytes(16 * pairs)
        if len(raw) != 16 * pairs:
            raise RuntimeError(f"random source returned {len(raw)} bytes, asked for {16 * pairs}")
        words = np.frombuffer(raw, dtype="<u8").reshape(2, pairs)
        # The top 53 bits of each word, as a uniform in (0, 1]: log() never sees 0.
        u = ((words >> np.uint64(11)).astype(np.float64) + 1.0) * 2.0**-53
        radius = np.sqrt(-2.0 * np.log(u[0]))
        angle = _TWO_PI * u[1]
        return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:n]
