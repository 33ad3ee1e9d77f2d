"""Unbiased stochastic b-bit quantization with per-block scales (QSGD-style)."""

from __future__ import annotations

import numpy as np

from .base import CodecError
from .values import ValueStage

__all__ = ["BLOCK", "Quant", "pack", "unpack"]

BLOCK = 256  # values per quantization block; its (low, step) costs 0.25 bit per value


class Quant(ValueStage):
    """Unbiased stochastic ``bits``-bit quantization with per-block scales.

    Each block of ``BLOCK`` values gets 2**bits evenly spaced levels from its minimum
    to its maximum; a value goes to one of its two neighbouring levels with the
    probabilities that make the expected result exactly the value (QSGD-style,
    Alistarh et al. 2017), so the error is below one step and averages out.
    Codes are packed little-end first, 8 // bits per byte.
    """

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.levels = 2**bits
        self.stages = (f"q{bits}",)

    def encode(self, x, rng):
        n = x.size
        blocks = -(-n // BLOCK)
        # Pad with the last value: it leaves the last block's minimum and maximum alone.
        padded = np.full(blocks * BLOCK, x[-1], np.float32)
        padded[:n] = x
        padded = padded.reshape(blocks, BLOCK)
        low = padded.min(axis=1)
        with np.errstate(over="ignore"):  # a range beyond float32 is refused just below
            step = (padded.max(axis=1) - low) / np.float32(self.levels - 1)
        if not np.isfinite(step).all():
            raise ValueError("values too large to quantize in float32")
        inverse = np.divide(1, step, out=np.zeros_like(step), where=step > 0)
        scaled = (padded - low[:, None]) * inverse[:, None]
        scaled += rng.random(scaled.shape, dtype=np.float32)
        codes = np.clip(np.floor(scaled, out=scaled), 0, self.levels - 1, out=scaled).astype(np.uint8)
        return {}, [pack(codes.reshape(-1)[:n], self.bits), np.stack([low, step], axis=1).astype("<f4")]

    def layout(self, p, n):
        return [("|u1", (-(-n * self.bits // 8),)), ("<f4", (-(-n // BLOCK), 2))]

    def decode(self, p, arrays, n):
        packed, scales = arrays
        if not np.isfinite(scales).all():
            raise CodecError("quantization scales contain NaN or Inf", "nonfinite")
        if (scales[:, 1] < 0).any():
            raise CodecError("quantization steps must not be negative")
        tail = n * self.bits % 8
        if tail and packed[-1] >> tail:
            raise CodecError("unused bits of the last code byte must be zero")
        codes = np.zeros(scales.shape[0] * BLOCK, np.uint8)
        codes[:n] = unpack(packed, self.bits, n)
        values = codes.reshape(-1, BLOCK) * scales[:, 1:] + scales[:, :1]
        return values.reshape(-1)[:n]


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """``bits``-bit codes, 8 // bits a byte, the first in the lowest bits."""
    if bits == 8:
        return codes
    per = 8 // bits
    lanes = np.zeros(-(-codes.size // per) * per, np.uint8)
    lanes[: codes.size] = codes
    lanes = lanes.reshape(-1, per)
    out = lanes[:, 0].copy()
    for j in range(1, per):  # one vectorised pass per code slot of a byte
        out |= lanes[:, j] << np.uint8(bits * j)
    return out


def unpack(packed: np.ndarray, bits: int, n: int) -> np.ndarray:
    """The first ``n`` codes of ``pack``'s output."""
    if bits == 8:
        return packed
    per = 8 // bits
    codes = np.empty((packed.size, per), np.uint8)
    for j in range(per):
        codes[:, j] = (packed >> np.uint8(bits * j)) & np.uint8(2**bits - 1)
    return codes.reshape(-1)[:n]
