"""The dense codec: every value, coded by one value stage."""

from __future__ import annotations

import numpy as np

from .base import Codec, check_finite
from .values import ValueStage

__all__ = ["Dense"]


class Dense(Codec):
    """Every value, coded by a value stage."""

    def __init__(self, values: ValueStage, deflate: bool = True) -> None:
        self.values = values
        self.deflate = deflate
        self.stages = values.stages or ("none",)
        self.spec = "+".join(self.stages)

    def _encode(self, x, rng):
        return self.values.encode(x, rng)

    def _layout(self, p, size):
        return self.values.layout(p, size)

    def decode(self, enc, size):
        p, arrays = self._open(enc, size)
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is caught as Inf
            return check_finite(self.values.decode(p, arrays, size))
