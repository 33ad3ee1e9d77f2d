"""Value stages: how a codec codes a float32 vector of any length n (raw, fp16; see quantize)."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import numpy as np

from .base import Layout, WireParams

__all__ = ["MAX_EXP", "Half", "Raw", "ValueStage"]

MAX_EXP = 200  # fp16 scale exponents beyond float32's range only ever decode to Inf


class ValueStage(ABC):
    """How a stage codes a float32 vector of any length n."""

    stages: tuple[str, ...]

    @abstractmethod
    def encode(self, x: np.ndarray, rng: np.random.Generator) -> tuple[dict, list[np.ndarray]]:
        """Parameters and arrays for the finite float32 vector ``x``."""

    @abstractmethod
    def layout(self, p: WireParams, n: int) -> Layout:
        """Check this stage's parameters; the arrays it expects for ``n`` values."""

    @abstractmethod
    def decode(self, p: WireParams, arrays: list[np.ndarray], n: int) -> np.ndarray:
        """The float32 values; the caller checks them for NaN and Inf."""


class Raw(ValueStage):
    """float32 as is."""

    stages = ()

    def encode(self, x, rng):
        return {}, [x.astype("<f4", copy=False)]

    def layout(self, p, n):
        return [("<f4", (n,))]

    def decode(self, p, arrays, n):
        return arrays[0]


class Half(ValueStage):
    """IEEE half precision after an exact power-of-two scaling.

    The scale puts the largest magnitude just under 2**15, so small deltas keep 11
    significant bits instead of sinking into fp16 subnormals, and large weights
    cannot overflow.
    """

    stages = ("fp16",)

    def encode(self, x, rng):
        peak = float(np.abs(x).max())
        exp = math.frexp(peak)[1] - 15 if peak else 0
        return {"exp": exp}, [np.ldexp(x, -exp).astype("<f2")]

    def layout(self, p, n):
        p.int("exp", -MAX_EXP, MAX_EXP)
        return [("<f2", (n,))]

    def decode(self, p, arrays, n):
        return np.ldexp(arrays[0].astype(np.float32), p["exp"])
