"""Top-k sparsification: the largest-magnitude entries, their indices and values."""

from __future__ import annotations

import numpy as np

from .base import Codec, Encoded, check_finite
from .index import bitmap_indices, varint_encode, varint_indices
from .values import ValueStage

__all__ = ["TopK"]


class TopK(Codec):
    """The k = round(fraction * n) largest-magnitude entries (at least one).

    Biased: pair it with ``ErrorFeedback`` on the volunteer. Indices are sent as
    a bitmap or as varint gaps, whichever is smaller; the values by a value stage.
    """

    def __init__(self, fraction: float, values: ValueStage) -> None:
        self.fraction = fraction
        self.values = values
        self.stages = ("topk", *values.stages)
        self.spec = "+".join((f"topk:{fraction!r}", *values.stages))

    def k(self, n: int) -> int:
        return min(n, max(1, round(self.fraction * n)))

    def _encode(self, x, rng):
        n, k = x.size, self.k(x.size)
        idx = np.sort(np.argpartition(np.abs(x), n - k)[n - k :])
        varint = varint_encode(idx)
        if varint.size <= -(-n // 8):
            index, head = {"index": "varint", "index_bytes": varint.size}, varint
        else:
            mask = np.zeros(n, bool)
            mask[idx] = True
            index, head = {"index": "bitmap"}, np.packbits(mask, bitorder="little")
        params, arrays = self.values.encode(x[idx], rng)
        return {**index, **params}, [head, *arrays]

    def _layout(self, p, size):
        k = self.k(size)
        if p.choice("index", ("varint", "bitmap")) == "varint":
            head = ("|u1", (p.int("index_bytes", k, 5 * k),))
        else:
            head = ("|u1", (-(-size // 8),))
        return [head, *self.values.layout(p, k)]

    def _parts(self, enc: Encoded, size: int) -> tuple[np.ndarray, np.ndarray]:
        """The validated indices (strictly increasing) and their finite values."""
        p, arrays = self._open(enc, size)
        k = self.k(size)
        read = varint_indices if p["index"] == "varint" else bitmap_indices
        idx = read(arrays[0], k, size)
        with np.errstate(over="ignore", invalid="ignore"):
            return idx, check_finite(self.values.decode(p, arrays[1:], k))

    def decode(self, enc, size):
        idx, values = self._parts(enc, size)
        dense = np.zeros(size, np.float32)
        dense[idx] = values
        return dense

    def accumulate(self, acc, weight, enc):
        idx, values = self._parts(enc, acc.shape[0])
        acc[idx] += np.float64(weight) * values  # indices are unique, so no add.at
