"""A volunteer's side of one SecAgg+ round, sans-I/O: each stage turns what the server
forwarded into what the volunteer sends back.

Stages (Bell et al. 2020, after Bonawitz et al. 2017): ADVERTISE two X25519 public keys
(one for the share channel, one for pair masks); SHARE the self seed b_u and the masking
key, Shamir-split among the neighbours that advertised, each share sealed for its
receiver; MASK the quantized update with the self mask and a pair mask per neighbour
whose shares arrived; UNMASK by revealing, for each such neighbour, the share of its self
seed if it survived or of its masking key if it dropped: never both, since the stage
runs once. Any other order is refused.
"""

from __future__ import annotations

import enum
import logging
import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import numpy as np

from .crypto import KEY_BYTES, KeyAgreement, ShareCipher
from .errors import SecAggError
from .masking import mask, pair_seed
from .packing import pack_bits
from .prg import SEED_BYTES
from .setup import RoundSetup
from .shamir import split
from .shares import SharePair, channel_key, open_shares, seal_shares

__all__ = ["ClientStage", "PublicKeys", "Reveal", "SecAggClient"]

log = logging.getLogger(__name__)


class ClientStage(enum.Enum):
    ADVERTISE = "advertise"
    SHARE = "share"
    MASK = "mask"
    UNMASK = "unmask"
    DONE = "done"


@dataclass(frozen=True)
class PublicKeys:
    channel: bytes
    masking: bytes

    def __post_init__(self) -> None:
        if len(self.channel) != KEY_BYTES or len(self.masking) != KEY_BYTES:
            raise SecAggError(f"a public key has {KEY_BYTES} bytes")


@dataclass(frozen=True)
class Reveal:
    """What a survivor hands back in UNMASK: shares it holds, by the neighbour they belong to."""

    self_seeds: dict[int, bytes] = field(default_factory=dict)
    secret_keys: dict[int, bytes] = field(default_factory=dict)


class SecAggClient:
    def __init__(self, me: int, setup: RoundSetup, agreement: KeyAgreement, cipher: ShareCipher) -> None:
        self.me = me
        self.setup = setup
        self.neighbours = frozenset(setup.graph.neighbours(me))
        self.agreement = agreement
        self.cipher = cipher
        self.stage = ClientStage.ADVERTISE
        self._roster: dict[int, PublicKeys] = {}
        self._held: dict[int, SharePair] = {}

    def _advance(self, expected: ClientStage, to: ClientStage) -> None:
        if self.stage is not expected:
            raise SecAggError(f"volunteer {self.me} is at stage {self.stage.value}, not {expected.value}")
        log.debug("secagg volunteer %d: %s -> %s", self.me, self.stage.value, to.value)
        self.stage = to

    def advertise(self) -> PublicKeys:
        self._advance(ClientStage.ADVERTISE, ClientStage.SHARE)
        self._channel_private, channel = self.agreement.generate()
        self._masking_private, masking = self.agreement.generate()
        self._self_seed = os.urandom(SEED_BYTES)
        self.keys = PublicKeys(channel, masking)
        return self.keys

    def share(self, roster: Mapping[int, PublicKeys]) -> dict[int, bytes]:
        """Sealed shares by receiver, for the neighbours in ``roster`` (those that advertised)."""
        self._advance(ClientStage.SHARE, ClientStage.MASK)
        if not set(roster) <= self.neighbours:
            raise SecAggError(f"the roster names volunteers that are not neighbours of {self.me}")
        if len(roster) < self.setup.threshold:
            raise SecAggError(f"{len(roster)} neighbours advertised keys, fewer than the threshold {self.setup.threshold}")
        seen = [k.channel for k in roster.values()] + [k.masking for k in roster.values()] + [self.keys.channel, self.keys.masking]
        if len(set(seen)) != len(seen):
            raise SecAggError("the roster repeats a public key")
        self._roster = dict(roster)
        receivers = sorted(roster)
        shares = split([self._self_seed, self._masking_private], [v + 1 for v in receivers], self.setup.threshold)
        out = {}
        for v, (seed_share, key_share) in zip(receivers, shares):
            key = self._channel_key(v)
            out[v] = seal_shares(self.cipher, key, self.setup.round_id, self.me, v, SharePair(seed_share.tobytes(), key_share.tobytes()))
        return out

    def _channel_key(self, v: int) -> bytes:
        try:
            secret = self.agreement.agree(self._channel_private, self._roster[v].channel)
        except ValueError as exc:
            raise SecAggError(f"volunteer {v}'s channel key is unusable: {exc}") from None
        return channel_key(secret, self.setup.round_id, self.me, v)

    def mask(self, levels: np.ndarray, inbox: Mapping[int, bytes]) -> bytes:
        """The masked update, bit-packed at the round's modulus bits, from the shares delivered to us."""
        self._advance(ClientStage.MASK, ClientStage.UNMASK)
        if not set(inbox) <= set(self._roster):
            raise SecAggError(f"shares arrived from volunteers that did not advertise to {self.me}")
        if len(inbox) < self.setup.threshold:
            raise SecAggError(f"{len(inbox)} neighbours shared their secrets, fewer than the threshold {self.setup.threshold}")
        levels = np.asarray(levels)
        if levels.shape != (self.setup.size,):
            raise SecAggError(f"the quantized update must have {self.setup.size} values")
        rid = self.setup.round_id
        self._held = {v: open_shares(self.cipher, self._channel_key(v), sealed, rid, v, self.me) for v, sealed in inbox.items()}
        seeds = {}
        for v in self._held:
            try:
                secret = self.agreement.agree(self._masking_private, self._roster[v].masking)
            except ValueError as exc:
                raise SecAggError(f"volunteer {v}'s masking key is unusable: {exc}") from None
            seeds[v] = pair_seed(secret, rid, self.me, v)
        return pack_bits(mask(levels, self.setup.bits, self.me, self._self_seed, seeds), self.setup.bits)

    def unmask(self, survivors: Collection[int]) -> Reveal:
        """Shares for the server: self seeds of surviving neighbours, masking keys of dropped ones."""
        self._advance(ClientStage.UNMASK, ClientStage.DONE)
        alive = set(survivors)
        if self.me not in alive:
            raise SecAggError(f"volunteer {self.me} is asked to unmask but not listed as a survivor")
        return Reveal(
            {v: p.self_seed for v, p in self._held.items() if v in alive},
            {v: p.secret_key for v, p in self._held.items() if v not in alive},
        )
