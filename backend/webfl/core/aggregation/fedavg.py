"""FedAvg: the example-weighted mean of the updates, streamed (McMahan et al. 2017).

Its round state is a weighted sum, so a round can be folded in pieces: another process
(a cluster follower) folds its share of the updates into a rule of its own and ships
``partial()``; the rule that commits adds it with ``merge``. Finishing then gives what
one rule folding every update would (up to float64 rounding of the sum's order).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..codecs import Codec, Encoded
from .base import Aggregator

__all__ = ["FedAvg", "PartialSum"]


@dataclass(frozen=True)
class PartialSum:
    """A share of a streaming round folded elsewhere: the weighted sum, its updates, their weight."""

    sum: np.ndarray  # float64, the model's size
    count: int
    total_weight: float


class FedAvg(Aggregator):
    """The example-weighted mean of the deltas (McMahan et al. 2017), streamed.

    One float64 accumulator of the model's size, however many updates arrive. Without a
    ``NormBound`` it uses ``codec.accumulate`` (no dense copy for sparse codecs), which
    validates before it adds; with one it must decode to measure the norm.
    """

    name = "fedavg"

    @property
    def mergeable(self) -> bool:
        """The round's state is the weighted sum alone: ``partial``/``merge`` lose nothing.

        Not with a norm bound: its history (the adaptive median, the checkpointed norms)
        grows with every ``add`` and would miss the updates folded elsewhere.
        """
        return self.bound is None

    def partial(self) -> PartialSum:
        """This round's share as it stands (a copy); the round stays open."""
        if not self._open:
            raise ValueError(f"{self.name}: no round in progress; call begin() first")
        return PartialSum(self._sum.copy(), self.count, self.total_weight)

    def merge(self, part: PartialSum) -> None:
        """Add a share folded elsewhere; ``ValueError`` (the rule unchanged) if it does not fit this round.

        The share comes from another process: checked like an update before it touches the sum.
        """
        if not self._open:
            raise ValueError(f"{self.name}: no round in progress; call begin() first")
        if not self.mergeable:
            raise ValueError(f"{self.spec} with a norm bound cannot merge partial sums")
        s = part.sum
        if not isinstance(s, np.ndarray) or s.dtype != np.float64 or s.shape != (self.size,):
            raise ValueError(f"a partial sum must be {self.size} float64 values")
        if not isinstance(part.count, int) or part.count < 1:
            raise ValueError(f"a partial sum must hold at least one update, got {part.count!r}")
        if self.max_updates is not None and self.count + part.count > self.max_updates:
            raise ValueError(f"{self.name}: {part.count} more update(s) exceed the round's {self.max_updates}")
        w = float(part.total_weight)
        if not (math.isfinite(w) and w > 0):
            raise ValueError(f"a partial sum's weight must be a positive number, got {part.total_weight!r}")
        if not np.isfinite(s).all():
            raise ValueError("a partial sum holds NaN or Inf")
        np.add(self._sum, s, out=self._sum)
        self.count += part.count
        self.total_weight += w

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
