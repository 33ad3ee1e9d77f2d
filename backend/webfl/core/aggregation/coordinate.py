"""Coordinate-wise robust means (Yin et al. 2018): the median and the trimmed mean."""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import Any

import numpy as np

from ..specs import Params
from .buffered import Buffered

__all__ = ["CoordinateMedian", "TrimmedMean"]


class SortedMean(Buffered):
    """Sort each coordinate across updates in place, average the middle rows in float64."""

    @abstractmethod
    def _trim(self, n: int) -> int:
        """How many values to drop from each end of a coordinate's ``n`` sorted values."""

    def _finish(self) -> np.ndarray:
        n = self.count
        k = self._trim(n)
        rows = self._buf[:n]
        if k:
            # One in-place sort along axis 0 (SIMD; faster than np.partition for short
            # columns) reorders values within each column only: no copy of the matrix.
            rows.sort(axis=0)
        return rows[k : n - k].mean(axis=0, dtype=np.float64).astype(np.float32)


class CoordinateMedian(SortedMean):
    """Coordinate-wise median of the updates (Yin et al. 2018); weights are ignored.

    Ignoring weights is deliberate: a weighted median would let one client that claims a
    huge example count decide every coordinate. An even count averages the two middle
    values. Needs 3 updates: the median of two is their mean, which either can move at will.
    """

    name = "median"

    @property
    def min_count(self) -> int:
        return 3

    def _trim(self, n: int) -> int:
        return (n - 1) // 2


class TrimmedMean(SortedMean):
    """Coordinate-wise ``beta``-trimmed mean (Yin et al. 2018); weights are ignored.

    Drops the ``floor(beta * n)`` smallest and largest values of each coordinate, but at
    least one per side when ``beta > 0`` (the default 0.1 would trim nothing below 10
    updates), and averages the rest; so it needs 3 updates. ``beta = 0`` is the unweighted mean.
    """

    name = "trimmed_mean"
    positional = ("beta",)

    def __init__(self, beta: float = 0.1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 0 <= beta < 0.5:
            raise ValueError(f"beta must satisfy 0 <= beta < 0.5, got {beta!r}")
        self.beta = beta

    @classmethod
    def from_params(cls, p: Params) -> dict[str, Any]:
        beta = p.number("beta", 0, 0.5, open_hi=True)
        return {} if beta is None else {"beta": beta}

    def params(self) -> dict[str, Any]:
        return {"beta": self.beta}

    @property
    def min_count(self) -> int:
        return 3 if self.beta > 0 else 1

    def _trim(self, n: int) -> int:
        if not self.beta:
            return 0
        # The epsilon keeps e.g. 0.29 * 100 = 28.999999999999996 from trimming one too few.
        return max(1, math.floor(self.beta * n + 1e-9))
