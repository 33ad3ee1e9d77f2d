"""FedAvg: the example-weighted mean of the updates, streamed (McMahan et al. 2017)."""

from __future__ import annotations

import numpy as np

from ..codecs import Codec, Encoded
from .base import Aggregator

__all__ = ["FedAvg"]


class FedAvg(Aggregator):
    """The example-weighted mean of the deltas (McMahan et al. 2017), streamed.

    One float64 accumulator of the model's size, however many updates arrive. Without a
    ``NormBound`` it uses ``codec.accumulate`` (no dense copy for sparse codecs), which
    validates before it adds; with one it must decode to measure the norm.
    """

    name = "fedavg"

    def _start(self) -> None:
        self._sum = np.zeros(self.size, dtype=np.float64)

    def _release(self) -> None:
        self._sum = None

    def _add(self, codec: Codec, enc: Encoded, weight: float) -> float | None:
        if self.bound is None:
            codec.accumulate(self._sum, weight, enc)
            return None
        u, norm = self._decode(codec, enc)
        self._accumulate(u, weight)
        return norm

    def _accumulate(self, u: np.ndarray, scale: float) -> None:
        # Fused into the float64 accumulator through a float32 temporary: no float64 copy.
        np.add(self._sum, u * np.float32(scale), out=self._sum, casting="unsafe")

    def _finish(self) -> np.ndarray:
        # In place: the accumulator dies with the round, and no second float64 vector.
        return np.divide(self._sum, self.total_weight, out=self._sum).astype(np.float32)
