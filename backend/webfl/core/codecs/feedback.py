"""Volunteer-side error feedback for biased codecs."""

from __future__ import annotations

import numpy as np

from .base import Codec, Encoded

__all__ = ["ErrorFeedback"]


class ErrorFeedback:
    """Volunteer-side error feedback (Seide et al. 2014; Stich et al. 2018).

    What a biased codec such as top-k drops this round is added to the next round's
    delta, so nothing is lost, only delayed. The residual never leaves the volunteer;
    ``state``/``load_state`` let the browser keep it (e.g. in IndexedDB). Harmless,
    if pointless, with unbiased codecs.
    """

    def __init__(self, codec: Codec, size: int) -> None:
        self.codec = codec
        self.residual = np.zeros(size, np.float32)

    def encode(self, delta: np.ndarray, rng: np.random.Generator) -> Encoded:
        target = self.residual + np.asarray(delta, dtype=np.float32)
        enc = self.codec.encode(target, rng)
        self.residual = target - self.codec.decode(enc, target.size)
        return enc

    def state(self) -> np.ndarray:
        return self.residual.copy()

    def load_state(self, residual: np.ndarray) -> None:
        residual = np.asarray(residual)
        if residual.shape != self.residual.shape or not np.isfinite(residual).all():
            raise ValueError(f"residual must be {self.residual.size} finite values, got shape {residual.shape}")
        self.residual = residual.astype(np.float32)
