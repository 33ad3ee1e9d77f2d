"""Federated feature statistics and the standardisation they give a tabular model.

Before round 1 of a task without given scaling, each volunteer reports per-feature
count, sum and sum of squares of its rows (never the rows); sums add up, so the server
gets the pooled mean and standard deviation exactly.

Why the standardisation is a fixed layer of the model rather than folded into the
first layer's weights: folding makes version 0 take raw features, but SGD on raw
features stays as ill-conditioned as ever (a feature of magnitude 1,000 gets gradients
1,000 times larger): on breast cancer it stays at the majority class. :class:`Standardised` keeps the trained
parameters in standardised space, so any magnitude trains well, and still takes raw
features: the browser builds it from the task definition like any model.
:func:`fold` turns trained parameters into a plain MLP on raw features, for export.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .kernels import Kernels
from .models import MLP, GradientSteps

__all__ = ["FeatureStats", "Standardised", "feature_stats", "fold", "scaling_from_stats"]


@dataclass(frozen=True)
class FeatureStats:
    """Per-feature ``count``, ``sum`` and ``sumsq`` (float64 arrays of one length)."""

    count: np.ndarray
    sum: np.ndarray
    sumsq: np.ndarray

    def __add__(self, other: FeatureStats) -> FeatureStats:
        if self.count.shape != other.count.shape:
            raise ValueError(f"cannot add statistics of {self.count.size} and {other.count.size} features")
        return FeatureStats(self.count + other.count, self.sum + other.sum, self.sumsq + other.sumsq)

    def to_dict(self) -> dict:
        return {"count": self.count.tolist(), "sum": self.sum.tolist(), "sumsq": self.sumsq.tolist()}

    @classmethod
    def from_dict(cls, d: object, num_features: int) -> FeatureStats:
        """Statistics as a volunteer reported them, checked: a ValueError says what is wrong."""
        if not isinstance(d, dict) or set(d) != {"count", "sum", "sumsq"}:
            raise ValueError("feature statistics need exactly count, sum and sumsq")
        arrays = {}
        for key in ("count", "sum", "sumsq"):
            v = d[key]
            if not isinstance(v, list) or len(v) != num_features or not all(
                isinstance(e, (int, float)) and not isinstance(e, bool) for e in v
            ):
                raise ValueError(f"{key} must be a list of {num_features} numbers")
            arrays[key] = np.asarray(v, dtype=np.float64)
            if not np.isfinite(arrays[key]).all():
                raise ValueError(f"{key} must be finite")
        count, s, sq = arrays["count"], arrays["sum"], arrays["sumsq"]
        if (count < 1).any() or (count != np.round(count)).any():
            raise ValueError("count must be whole numbers >= 1")
        # Cauchy-Schwarz: sum^2 <= count * sumsq for any real rows (with float slack).
        if (sq < 0).any() or (s * s > count * sq * (1 + 1e-9) + 1e-9).any():
            raise ValueError("sum and sumsq are not the statistics of any real rows")
        return cls(count, s, sq)


def feature_stats(x: np.ndarray) -> FeatureStats:
    """What one volunteer reports about its rows ``x`` (n, features)."""
    x = np.asarray(x, dtype=np.float64)
    return FeatureStats(np.full(x.shape[1], float(x.shape[0])), x.sum(axis=0), np.square(x).sum(axis=0))


def scaling_from_stats(stats: FeatureStats) -> tuple[np.ndarray, np.ndarray]:
    """Pooled ``(mean, std)``; a constant feature gets std 1 so it passes through centred."""
    mean = stats.sum / stats.count
    var = np.maximum(stats.sumsq / stats.count - mean * mean, 0.0)
    std = np.sqrt(var)
    # Relative floor: a feature whose spread is rounding noise of its magnitude is constant.
    constant = std <= 1e-7 * np.maximum(np.abs(mean), 1.0)
    return mean, np.where(constant, 1.0, std)


class Standardised(GradientSteps):
    """``inner`` applied to ``(x - mean) / std``: same parameters, same interface, raw inputs."""

    def __init__(self, inner, mean: np.ndarray, std: np.ndarray) -> None:
        mean, std = np.asarray(mean, dtype=np.float32), np.asarray(std, dtype=np.float32)
        if mean.shape != std.shape or mean.ndim != 1 or not (std > 0).all():
            raise ValueError("standardisation needs mean and std of one length, std > 0")
        self.inner, self.mean, self.inv_std = inner, mean, np.float32(1.0) / std
        self.layout, self.size, self.num_classes = inner.layout, inner.size, inner.num_classes

    def standardise(self, x: np.ndarray) -> np.ndarray:
        if x.shape[-1] != self.mean.shape[0]:
            raise ValueError(f"expected {self.mean.shape[0]} features, got {x.shape[-1]}")
        return (np.asarray(x, dtype=np.float32) - self.mean) * self.inv_std

    def views(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        return self.inner.views(flat)

    def init(self, seed: int) -> np.ndarray:
        return self.inner.init(seed)

    def logits(self, params: np.ndarray, x: np.ndarray) -> np.ndarray:
        return self.inner.logits(params, self.standardise(x))

    def loss_and_grad(self, params: np.ndarray, x: np.ndarray, y: np.ndarray, kernels: Kernels | None = None) -> tuple[float, np.ndarray]:
        return self.inner.loss_and_grad(params, self.standardise(x), y, kernels)

    def evaluate(self, params: np.ndarray, x: np.ndarray, y: np.ndarray, batch: int = 1000) -> tuple[float, float]:
        return self.inner.evaluate(params, self.standardise(x), y, batch)


def fold(model: Standardised, params: np.ndarray) -> np.ndarray:
    """Parameters of ``model.inner`` (an MLP) that give the same logits on raw features.

    ``((x - m) / s) @ W + b == x @ (W / s[:, None]) + (b - (m / s) @ W)``.
    """
    if not isinstance(model.inner, MLP):
        raise ValueError("only an MLP's first layer can absorb the standardisation")
    out = np.array(params, dtype=np.float32, copy=True)
    v, w = model.inner.views(out), model.inner.views(params)
    inv = model.inv_std.astype(np.float64)
    w0 = w["w0"].astype(np.float64)
    v["w0"][...] = w0 * inv[:, None]
    v["b0"][...] = w["b0"] - (model.mean * inv) @ w0
    return out
