"""What one SecAgg round fixes for every party: round id, vector length, modulus, threshold, graph."""

from __future__ import annotations

from dataclasses import dataclass

from .graph import NeighbourGraph

__all__ = ["RoundSetup"]


@dataclass(frozen=True)
class RoundSetup:
    """Public parameters of a round, the same at every volunteer and at the server.

    ``threshold`` of a volunteer's neighbours rebuild its secrets; more than half its
    degree is what keeps a server that lies about who dropped from learning both a
    volunteer's self seed and its masking key.
    """

    round_id: int
    size: int
    bits: int
    threshold: int
    graph: NeighbourGraph

    def __post_init__(self) -> None:
        if not 0 <= self.round_id < 2**64:
            raise ValueError("a round id is a 64-bit unsigned integer")
        if self.size < 1:
            raise ValueError("a masked vector has at least one coordinate")
        if not 1 <= self.bits <= 32:
            raise ValueError(f"modulus bits must be in 1..32, not {self.bits}")
        if not 1 <= self.threshold <= self.graph.k:
            raise ValueError(f"the threshold must be in 1..{self.graph.k} (the neighbours each has), not {self.threshold}")
