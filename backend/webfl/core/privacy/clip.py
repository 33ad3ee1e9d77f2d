"""L2 clipping of one update: the per-volunteer sensitivity bound of DP-FedAvg."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["l2_clip"]


def l2_clip(delta: np.ndarray, bound: float) -> tuple[np.ndarray, float]:
    """``delta`` scaled by ``min(1, bound / ||delta||)`` and its norm before clipping.

    The norm is taken in float64 so a float32 vector of 200k entries does not lose the
    digits that decide whether it is over the bound. ``delta`` is not modified.
    """
    if not (math.isfinite(bound) and bound > 0):
        raise ValueError(f"clip bound must be a positive number, got {bound!r}")
    norm = float(np.linalg.norm(delta.astype(np.float64, copy=False)))
    if not math.isfinite(norm):
        raise ValueError("cannot clip a non-finite update")
    if norm <= bound:
        return delta.copy(), norm
    return (delta * (bound / norm)).astype(delta.dtype, copy=False), norm
