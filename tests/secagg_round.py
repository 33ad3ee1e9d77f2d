"""One SecAgg+ round driven in process, stage by stage, as the server's plumbing will drive it.

Real X25519 and AES-GCM (``native.NativeVolunteer``), the core's clients and unmasker, every
message passed by hand: for the protocol tests and ``bench/secagg.py``.
"""

from __future__ import annotations

import numpy as np

from webfl.core.secagg import NeighbourGraph, Quantizer, Reveal, RoundSetup, SecAggClient, Unmasker
from webfl.core.secagg.native import NativeVolunteer, X25519Agreement

AGREEMENT = X25519Agreement()


class Round:
    """One round driven stage by stage, as the server's plumbing will: keys, shares, uploads, reveals."""

    def __init__(self, n: int, k: int, t: int, size: int = 500, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.quant = Quantizer.for_cohort(1.0, 8, n)
        self.setup = RoundSetup(41, size, self.quant.bits, t, NeighbourGraph(n, k, self.rng.bytes(32)))
        self.clients = {u: NativeVolunteer(SecAggClient(u, self.setup)) for u in range(n)}
        self.updates = {u: self.rng.normal(0, 0.02, size) for u in range(n)}
        self.levels = {u: self.quant.quantize(x, self.rng) for u, x in self.updates.items()}

    def advertise(self) -> None:
        self.keys = {u: c.advertise() for u, c in self.clients.items()}

    def share(self) -> None:
        self.sealed = {u: c.share({v: self.keys[v] for v in c.client.neighbours}) for u, c in self.clients.items()}
        self.inbox = {u: {v: self.sealed[v][u] for v in c.client.neighbours} for u, c in self.clients.items()}
        self.unmasker = Unmasker(self.setup, AGREEMENT, self.keys, {u: set(box) for u, box in self.inbox.items()})

    def mask(self) -> None:
        self.uploads = {u: c.mask(self.levels[u], self.inbox[u]) for u, c in self.clients.items()}

    def upload(self, dropped: set[int]) -> None:
        for u, packed in self.uploads.items():
            if u not in dropped:
                self.unmasker.add(u, packed)
        self.survivors = self.unmasker.close()

    def reveals(self, silent: set[int] = frozenset()) -> dict[int, Reveal]:
        return {u: self.clients[u].unmask(self.survivors) for u in sorted(self.survivors - silent)}

    def expected(self) -> np.ndarray:
        return np.sum([self.levels[u] for u in self.survivors], axis=0, dtype=np.uint64)

    def run(self, dropped: set[int], silent: set[int] = frozenset()) -> np.ndarray:
        self.advertise()
        self.share()
        self.mask()
        self.upload(dropped)
        return self.unmasker.finish(self.reveals(silent))
