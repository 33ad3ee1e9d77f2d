"""The server's side of one SecAgg+ round's arithmetic: fold masked uploads, then unmask the sum.

The server holds the round's public keys and which shares it delivered to whom (it
routed them), folds each survivor's masked vector into a ``MaskedSum`` as it arrives and
drops it, and at the end rebuilds from the survivors' revealed shares each survivor's
self seed and each dropped neighbour's masking key. It never sees one update unmasked:
a survivor's self mask hides it until the sum is complete.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Collection, Mapping

import numpy as np

from .client import PublicKeys, Reveal
from .crypto import KeyAgreement
from .errors import SecAggError
from .masking import MaskedSum, pair_seed
from .packing import unpack_bits
from .setup import RoundSetup
from .shamir import combine

__all__ = ["Unmasker", "UnmaskerState"]

log = logging.getLogger(__name__)


class UnmaskerState(enum.Enum):
    COLLECTING = "collecting"  # masked uploads are folded in
    UNMASKING = "unmasking"  # the survivors are fixed; waiting for enough reveals
    DONE = "done"


class Unmasker:
    """Sum of the survivors' quantized levels from their masked uploads and revealed shares.

    ``delivered[u]`` is the set of volunteers whose sealed shares the server handed to u
    (so the neighbours u masked with); it must be symmetric between survivors, or their
    pair masks would not cancel.
    """

    def __init__(self, setup: RoundSetup, agreement: KeyAgreement, keys: Mapping[int, PublicKeys], delivered: Mapping[int, Collection[int]]) -> None:
        self.setup = setup
        self.agreement = agreement
        self.keys = dict(keys)
        self.delivered = {u: frozenset(vs) for u, vs in delivered.items()}
        for u, vs in self.delivered.items():
            if u not in self.keys or not vs <= set(setup.graph.neighbours(u)) or not vs <= set(self.keys):
                raise SecAggError(f"shares delivered to volunteer {u} come from non-neighbours or unknown keys")
        self.sum = MaskedSum(setup.size, setup.bits)
        self.survivors: set[int] = set()
        self.state = UnmaskerState.COLLECTING

    def add(self, u: int, packed: bytes) -> None:
        """Fold u's bit-packed masked vector into the sum; refused unless u got shares and is new."""
        if self.state is not UnmaskerState.COLLECTING:
            raise SecAggError(f"the upload stage is over (the unmasking is {self.state.value})")
        if u not in self.delivered or len(self.delivered[u]) < self.setup.threshold:
            raise SecAggError(f"volunteer {u} did not receive enough shares to mask with")
        if u in self.survivors:
            raise SecAggError(f"volunteer {u} already uploaded its masked vector")
        try:
            vector = unpack_bits(packed, self.setup.bits, self.setup.size)
        except ValueError as exc:
            raise SecAggError(f"volunteer {u}'s masked vector: {exc}") from None
        self.sum.add(vector)
        self.survivors.add(u)

    def close(self) -> frozenset[int]:
        """End the upload stage: the survivors, whom the server asks for their reveals."""
        self._advance(UnmaskerState.COLLECTING, UnmaskerState.UNMASKING)
        return frozenset(self.survivors)

    def _advance(self, expected: UnmaskerState, to: UnmaskerState) -> None:
        if self.state is not expected:
            raise SecAggError(f"the round's unmasking is {self.state.value}, not {expected.value}")
        log.debug("secagg round %d: %s -> %s", self.setup.round_id, self.state.value, to.value)
        self.state = to

    def finish(self, reveals: Mapping[int, Reveal]) -> np.ndarray:
        """The sum (uint32, mod 2^bits) of the survivors' quantized levels.

        Raises SecAggError when too few survivors answered to rebuild a secret, or when a
        reveal is inconsistent (a share it cannot hold, a key that is not the advertised one);
        the sum is then left as it was, so it can be called again with more reveals.
        """
        if self.state is not UnmaskerState.UNMASKING:
            raise SecAggError(f"the round's unmasking is {self.state.value}, not unmasking")
        alive = self.survivors
        for u, v in ((u, v) for u in alive for v in self.delivered[u] & alive):
            if u not in self.delivered[v]:
                raise SecAggError(f"shares went {v} -> {u} but not {u} -> {v}: their pair masks do not cancel")
        dropped = {v for u in alive for v in self.delivered[u]} - alive
        for w, reveal in reveals.items():
            if w not in alive:
                raise SecAggError(f"volunteer {w} revealed shares but did not upload a masked vector")
            held = self.delivered[w]
            if not set(reveal.self_seeds) <= held & alive or not set(reveal.secret_keys) <= held & dropped:
                raise SecAggError(f"volunteer {w} revealed shares it cannot hold or should not reveal")
        # Rebuild every secret and derive every seed before touching the sum: a refusal
        # leaves it as it was, so the round can wait for more reveals and try again.
        self_seeds = [self._rebuild(u, "self_seeds", reveals)[0] for u in sorted(alive)]
        pair_seeds = []
        for v in sorted(dropped):
            (private,) = self._rebuild(v, "secret_keys", reveals)
            if self.agreement.public(private) != self.keys[v].masking:
                raise SecAggError(f"the masking key rebuilt for dropped volunteer {v} is not the one it advertised")
            for u in sorted(w for w in alive if v in self.delivered[w]):
                try:
                    secret = self.agreement.agree(private, self.keys[u].masking)
                except ValueError as exc:
                    raise SecAggError(f"volunteer {u}'s masking key is unusable: {exc}") from None
                pair_seeds.append((u, v, pair_seed(secret, self.setup.round_id, u, v)))
        for seed in self_seeds:
            self.sum.remove_self_mask(seed)
        for u, v, seed in pair_seeds:
            self.sum.remove_pair_mask(u, v, seed)
        self._advance(UnmaskerState.UNMASKING, UnmaskerState.DONE)
        log.info("secagg round %d unmasked: %d survivors, %d dropped neighbours rebuilt", self.setup.round_id, len(alive), len(dropped))
        return self.sum.total

    def _rebuild(self, owner: int, kind: str, reveals: Mapping[int, Reveal]) -> list[bytes]:
        holders = sorted(w for w, r in reveals.items() if owner in getattr(r, kind))
        what = "self seed" if kind == "self_seeds" else "masking key"
        if len(holders) < self.setup.threshold:
            raise SecAggError(
                f"volunteer {owner}'s {what}: {len(holders)} shares revealed, {self.setup.threshold} needed"
                " (too many volunteers dropped during unmasking)"
            )
        try:
            shares = np.stack([np.frombuffer(getattr(reveals[w], kind)[owner], np.uint8) for w in holders])[:, None, :]
        except ValueError:
            raise SecAggError(f"a share of volunteer {owner}'s {what} has the wrong length") from None
        return combine([w + 1 for w in holders], shares, self.setup.threshold)
