"""Rules that need every update of a round at once, in one preallocated float32 matrix.

They state their memory bound (``memory_bytes``) and ``begin`` refuses a round that would
exceed ``memory_limit``.
"""

from __future__ import annotations

import numpy as np

from ..codecs import Codec, Encoded
from .base import SLACK_BYTES, Aggregator

__all__ = ["BLOCK_BYTES", "Buffered", "column_blocks"]

# Float64 working blocks of the buffering rules stay under this many bytes.
BLOCK_BYTES = 16 * 2**20


class Buffered(Aggregator):
    """A rule that needs every update of the round at once: one (max_updates, size) float32 matrix.

    ``memory_bytes(d, n)`` = 4nd (buffer) + 8n (weights) + 12d (float64 result and its
    float32 copy) + 1 MiB (NumPy's small buffers); Multi-Krum adds its Gram work.
    For the 2NN (d = 199,210) that is 77 MiB per 100 updates: 512 MiB holds ~670.
    """

    buffered = True

    @classmethod
    def memory_bytes(cls, size: int, max_updates: int | None = None) -> int:
        """Peak bytes of a round of ``max_updates`` updates of ``size`` (see the class)."""
        if max_updates is None:
            raise ValueError(f"{cls.name} buffers the round's updates: begin() needs max_updates")
        return 4 * max_updates * size + 8 * max_updates + cls._scratch_bytes(size, max_updates) + SLACK_BYTES

    @classmethod
    def _scratch_bytes(cls, size: int, max_updates: int) -> int:
        return 12 * size  # a float64 result and its float32 copy

    def _start(self) -> None:
        # np.empty: the OS commits pages as rows are written, so a thin round stays cheap.
        self._buf = np.empty((self.max_updates, self.size), dtype=np.float32)
        self._weights = np.empty(self.max_updates, dtype=np.float64)

    def _release(self) -> None:
        self._buf = self._weights = None

    def _add(self, codec: Codec, enc: Encoded, weight: float) -> float | None:
        u, norm = self._decode(codec, enc)
        # Row ``count`` is not part of the state until count moves past it, so a failure
        # before this line leaves nothing behind.
        self._buf[self.count] = u
        self._weights[self.count] = weight
        return norm


def block_width(size: int, rows: int) -> int:
    """Columns per float64 working block of ``rows`` rows: about ``BLOCK_BYTES``."""
    return min(size, max(1024, BLOCK_BYTES // (8 * max(rows, 1))))


def column_blocks(size: int, rows: int) -> list[slice]:
    width = block_width(size, rows)
    return [slice(i, min(i + width, size)) for i in range(0, size, width)]
