"""The SecAgg+ neighbour graph: a Harary graph on a ring, relabelled by a public seed.

Bell et al. (2020) replace SecAgg's complete graph with a random k-regular one: each
volunteer masks with and shares its secrets among k ~ log n neighbours only. The server
draws the seed and publishes it, so every party rebuilds the same graph. Volunteer ids
are 0..n-1 (the cohort's order); the permutation comes from the SHAKE-256 PRG, so it is
the same in every runtime and in every NumPy version.
"""

from __future__ import annotations

import math

import numpy as np

from .prg import expand

__all__ = ["NeighbourGraph", "default_degree"]


def default_degree(n: int) -> int:
    """About log2 n neighbours (at least 2, at most n - 1): SecAgg+'s choice of k."""
    return min(n - 1, max(2, math.ceil(math.log2(max(n, 2)))))


class NeighbourGraph:
    """A symmetric graph on ``n`` volunteers where each has ``k`` neighbours (k + 1 for one if n, k odd).

    Ring position i links to positions i +- 1 .. i +- k//2; an odd k adds the chord to the
    opposite position (for odd n one volunteer gets two chords). k is capped at n - 1,
    where the graph is complete.
    """

    def __init__(self, n: int, k: int, seed: bytes) -> None:
        if n < 2:
            raise ValueError(f"a neighbour graph needs at least 2 volunteers, not {n}")
        if k < 1:
            raise ValueError(f"each volunteer needs at least 1 neighbour, not {k}")
        self.n, self.seed = n, bytes(seed)
        self.k = min(k, n - 1)
        # A random relabelling of ring positions: position -> volunteer id.
        self.order = np.argsort(expand(seed, b"graph", n, 32), kind="stable")
        pos = np.arange(n)
        edges = [np.stack([pos, (pos + d) % n], axis=1) for d in range(1, self.k // 2 + 1)]
        if self.k == n - 1:
            edges = [np.stack(np.triu_indices(n, 1), axis=1)]
        elif self.k % 2:
            half = pos[: -(-n // 2)]
            edges.append(np.stack([half, half + n // 2], axis=1))
        adjacency = np.zeros((n, n), bool)
        ring = self.order[np.concatenate(edges)]
        adjacency[ring[:, 0], ring[:, 1]] = adjacency[ring[:, 1], ring[:, 0]] = True
        self.adjacency = adjacency

    def neighbours(self, u: int) -> tuple[int, ...]:
        """The ids of ``u``'s neighbours, ascending."""
        if not 0 <= u < self.n:
            raise ValueError(f"volunteer {u} is not in a cohort of {self.n}")
        return tuple(int(v) for v in np.flatnonzero(self.adjacency[u]))

    def degrees(self) -> np.ndarray:
        return self.adjacency.sum(axis=1)
