"""Aggregation rules: how a round's accepted updates become one model delta.

A rule sees a round as three steps: ``begin`` with the model size, ``add`` once per
accepted update (already validated by its codec), and ``finish`` for the delta to
apply. Streaming rules keep O(model size) memory whatever the number of updates.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from .codecs import Codec, Encoded

__all__ = ["Aggregator", "FedAvg", "get_aggregator", "AGGREGATORS"]


class Aggregator(ABC):
    name: str

    def __init__(self) -> None:
        self.count = 0
        self.total_weight = 0.0

    def begin(self, size: int) -> None:
        self.size = size
        self.count = 0
        self.total_weight = 0.0

    @abstractmethod
    def add(self, codec: Codec, enc: Encoded, weight: float) -> None:
        """Fold in one update; raises ``CodecError`` (leaving state untouched) if it is malformed."""

    @abstractmethod
    def finish(self) -> np.ndarray:
        """The aggregate float32 delta of the updates added since ``begin``."""


class FedAvg(Aggregator):
    """The example-weighted mean of the deltas (McMahan et al. 2017), streamed.

    One float64 accumulator of the model's size, however many updates arrive.
    """

    name = "fedavg"

    def begin(self, size: int) -> None:
        super().begin(size)
        self._sum = np.zeros(size, dtype=np.float64)

    def add(self, codec: Codec, enc: Encoded, weight: float) -> None:
        if not weight > 0:
            raise ValueError("update weight must be positive")
        codec.accumulate(self._sum, weight, enc)
        self.count += 1
        self.total_weight += weight

    def finish(self) -> np.ndarray:
        if not self.count:
            raise ValueError("no updates to aggregate")
        return (self._sum / self.total_weight).astype(np.float32)


AGGREGATORS: dict[str, type[Aggregator]] = {"fedavg": FedAvg}


def get_aggregator(name: str) -> Aggregator:
    try:
        return AGGREGATORS[name]()
    except KeyError:
        raise ValueError(f"unknown aggregator {name!r}; known: {', '.join(AGGREGATORS)}") from None
