"""Multi-Krum (Blanchard et al. 2017): the mean of the updates closest to their neighbours."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..specs import Params
from .buffered import Buffered, block_width, column_blocks

__all__ = ["MAX_F", "MultiKrum"]

MAX_F = 10_000  # far beyond any round a buffering rule can hold in memory


class MultiKrum(Buffered):
    """Multi-Krum (Blanchard et al. 2017): average the ``m`` updates closest to their neighbours.

    Each update's score is the sum of its squared distances to its ``n - f - 2`` nearest
    other updates, ``f`` being the number of Byzantine updates to tolerate; the ``m``
    lowest-scoring updates are averaged, weighted by example count. Defaults, taken from
    the count ``n`` at ``finish``: ``f = (n - 3) // 2`` (the most Krum tolerates) and
    ``m = n - f``. Krum needs ``n >= 2f + 3``: 5 updates for the default (so that f >= 1)
    and for an explicit ``f``; ``m`` is capped at ``n - f``. ``selected`` holds the chosen
    update indices (in ``add`` order).

    Memory beyond the buffer: 32n^2 for the (n, n) matrices and 12nw + 8w for one float64
    column block of w ~ 16 MiB / 8n columns (17 MiB more at n = 100 for the 2NN).
    """

    name = "multikrum"

    def __init__(self, f: int | None = None, m: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if f is not None and not 0 <= f <= MAX_F:
            raise ValueError(f"f must be in [0, {MAX_F}], got {f!r}")
        if m is not None and not 1 <= m <= 2 * MAX_F + 3:
            raise ValueError(f"m must be in [1, {2 * MAX_F + 3}], got {m!r}")
        self.f, self.m = f, m
        self.selected: np.ndarray | None = None
        self.scores: np.ndarray | None = None
        self.effective: dict[str, int] | None = None  # f and m of the last finish

    @classmethod
    def from_params(cls, p: Params) -> dict[str, Any]:
        out = {"f": p.integer("f", 0, MAX_F), "m": p.integer("m", 1, 2 * MAX_F + 3)}
        return {k: v for k, v in out.items() if v is not None}

    def params(self) -> dict[str, Any]:
        return {k: v for k, v in (("f", self.f), ("m", self.m)) if v is not None}

    @property
    def min_count(self) -> int:
        if self.f is None:
            return 5
        return 2 * self.f + 3 if self.f else 1

    def _weaker(self) -> str:
        return ", or tolerate fewer Byzantine updates (a smaller f)" if self.f else ""

    @classmethod
    def _scratch_bytes(cls, size: int, max_updates: int) -> int:
        # Gram, distance and temporary (n, n) float64 matrices; per column block a float32
        # gather of the selected rows, its float64 copy and their product; the result.
        width = block_width(size, max_updates)
        return 32 * max_updates**2 + 12 * max_updates * width + 8 * width + 12 * size

    def describe(self) -> dict[str, Any]:
        selected = None if self.selected is None else self.selected.tolist()
        return {**super().describe(), "selected": selected, "effective": self.effective}

    def _finish(self) -> np.ndarray:
        n = self.count
        f = (n - 3) // 2 if self.f is None else self.f
        m = n - f if self.m is None else min(self.m, n - f)
        rows = self._buf[:n]

        # Squared distances from one Gram matrix: d_ij = G_ii + G_jj - 2 G_ij. That form
        # cancels catastrophically when updates are close relative to their norms, so G is
        # accumulated in float64 over column blocks (bounded scratch, float64 BLAS).
        gram = np.zeros((n, n), dtype=np.float64)
        for cols in column_blocks(self.size, n):
            block = rows[:, cols].astype(np.float64)
            gram += block @ block.T
            del block  # freed before the next one is allocated: memory_bytes counts one
        sq = np.diag(gram)
        dist = sq[:, None] + sq[None, :] - 2.0 * gram
        np.maximum(dist, 0.0, out=dist)  # rounding can leave tiny negatives
        np.fill_diagonal(dist, np.inf)  # never one's own neighbour

        k = n - f - 2
        if k >= 1:
            scores = np.partition(dist, k - 1, axis=1)[:, :k].sum(axis=1)
        else:  # n <= 2 with f = 0: nothing to compare, every update is kept
            scores = np.zeros(n)
        selected = np.argsort(scores, kind="stable")[:m]
        self.selected, self.scores, self.effective = np.sort(selected), scores, {"f": f, "m": m}

        coef = self._weights[selected] / self._weights[selected].sum()
        out = np.empty(self.size, dtype=np.float64)
        for cols in column_blocks(self.size, n):  # n, not m: the blocks memory_bytes counts
            out[cols] = coef @ rows[selected, cols].astype(np.float64)
        return out.astype(np.float32)
