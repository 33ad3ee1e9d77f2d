"""A volunteer's side of one SecAgg+ round, sans-I/O: each stage turns what the server
forwarded, and what the runtime's cryptography returned, into what the volunteer sends.

Stages (Bell et al. 2020, after Bonawitz et al. 2017): ADVERTISE two X25519 public keys
(one for the share channel, one for pair masks); SHARE the self seed b_u and the masking
key, Shamir-split among the neighbours that advertised, each share framed for its
receiver (the runtime seals it); MASK the quantized update with the self mask and a pair
mask per neighbour whose share arrived; UNMASK by revealing, for each such neighbour, the
share of its self seed if it survived or of its masking key if it dropped: never both,
since the stage runs once. Any other order is refused.

The runtime (WebCrypto in the browser's worker, ``native.NativeVolunteer`` in Python)
makes the key pairs, computes the X25519 secrets with each neighbour, and seals and opens
the frames; the core derives every key and seed from those secrets and checks every frame.
"""

from __future__ import annotations

import enum
import logging
import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import numpy as np

from .crypto import KEY_BYTES, check_secret
from .errors import SecAggError
from .masking import mask, pair_seed
from .packing import pack_bits
from .prg import SEED_BYTES
from .setup import RoundSetup
from .shamir import split
from .shares import SharePair, channel_key, frame, header, read

__all__ = ["ClientStage", "Outgoing", "PublicKeys", "Reveal", "SecAggClient"]

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
class Outgoing:
    """A share frame for one receiver: the runtime seals ``plaintext`` with AES-256-GCM under ``key``, ``aad`` as associated data."""

    key: bytes
    aad: bytes
    plaintext: bytes


@dataclass(frozen=True)
class Reveal:
    """What a survivor hands back in UNMASK: shares it holds, by the neighbour they belong to."""

    self_seeds: dict[int, bytes] = field(default_factory=dict)
    secret_keys: dict[int, bytes] = field(default_factory=dict)


class SecAggClient:
    def __init__(self, me: int, setup: RoundSetup) -> None:
        self.me = me
        self.setup = setup
        self.neighbours = frozenset(setup.graph.neighbours(me))
        self.stage = ClientStage.ADVERTISE
        self._roster: dict[int, PublicKeys] = {}
        self._channel_keys: dict[int, bytes] = {}
        self._held: dict[int, SharePair] = {}

    def _expect(self, stage: ClientStage) -> None:
        if self.stage is not stage:
            raise SecAggError(f"volunteer {self.me} is at stage {self.stage.value}, not {stage.value}")

    def _move(self, to: ClientStage) -> None:
        """Enter ``to`` once the stage's input has passed every check: a refused one changes nothing."""
        log.debug("secagg volunteer %d: %s -> %s", self.me, self.stage.value, to.value)
        self.stage = to

    def advertise(self, keys: PublicKeys, masking_private: bytes) -> None:
        """Begin with the runtime's two fresh key pairs; only the masking private key enters the
        core, since it is Shamir-shared. The self seed is drawn here, from the OS."""
        self._expect(ClientStage.ADVERTISE)
        if len(masking_private) != KEY_BYTES:
            raise SecAggError(f"a private key has {KEY_BYTES} bytes")
        self.keys = keys
        self._masking_private = masking_private
        self._self_seed = os.urandom(SEED_BYTES)
        self._move(ClientStage.SHARE)

    def share(self, roster: Mapping[int, PublicKeys], channel_secrets: Mapping[int, bytes]) -> dict[int, Outgoing]:
        """Share frames by receiver, for the neighbours in ``roster`` (those that advertised), given
        the X25519 secret of our channel key with each one's."""
        self._expect(ClientStage.SHARE)
        if not set(roster) <= self.neighbours:
            raise SecAggError(f"the roster names volunteers that are not neighbours of {self.me}")
        if len(roster) < self.setup.threshold:
            raise SecAggError(f"{len(roster)} neighbours advertised keys, fewer than the threshold {self.setup.threshold}")
        seen = [k.channel for k in roster.values()] + [k.masking for k in roster.values()] + [self.keys.channel, self.keys.masking]
        if len(set(seen)) != len(seen):
            raise SecAggError("the roster repeats a public key")
        if set(channel_secrets) != set(roster):
            raise SecAggError("a channel secret is needed for each neighbour in the roster, and no other")
        rid = self.setup.round_id
        keys = {v: channel_key(check_secret(s, f"volunteer {v}"), rid, self.me, v) for v, s in channel_secrets.items()}
        receivers = sorted(roster)
        shares = split([self._self_seed, self._masking_private], [v + 1 for v in receivers], self.setup.threshold)
        self._roster, self._channel_keys = dict(roster), keys
        self._move(ClientStage.MASK)
        return {
            v: Outgoing(keys[v], header(rid, self.me, v), frame(rid, self.me, v, SharePair(s.tobytes(), k.tobytes())))
            for v, (s, k) in zip(receivers, shares)
        }

    def opening(self, sender: int) -> tuple[bytes, bytes]:
        """The key and associated data to decrypt ``sender``'s share frame with."""
        if sender not in self._channel_keys:
            raise SecAggError(f"volunteer {sender} is not in the roster of {self.me}")
        return self._channel_keys[sender], header(self.setup.round_id, sender, self.me)

    def mask(self, levels: np.ndarray, opened: Mapping[int, bytes], masking_secrets: Mapping[int, bytes]) -> bytes:
        """The masked update, bit-packed at the round's modulus bits, from the decrypted frames the
        server delivered and the X25519 secret of our masking key with each sender's."""
        self._expect(ClientStage.MASK)
        if not set(opened) <= set(self._roster):
            raise SecAggError(f"shares arrived from volunteers that did not advertise to {self.me}")
        if len(opened) < self.setup.threshold:
            raise SecAggError(f"{len(opened)} neighbours shared their secrets, fewer than the threshold {self.setup.threshold}")
        if set(masking_secrets) != set(opened):
            raise SecAggError("a masking secret is needed for each neighbour whose share arrived, and no other")
        levels = np.asarray(levels)
        if levels.dtype != np.uint32 or levels.shape != (self.setup.size,):
            raise SecAggError(f"the quantized update must be {self.setup.size} uint32 levels")
        rid = self.setup.round_id
        held = {v: read(plaintext, rid, v, self.me) for v, plaintext in opened.items()}
        seeds = {v: pair_seed(check_secret(s, f"volunteer {v}"), rid, self.me, v) for v, s in masking_secrets.items()}
        packed = pack_bits(mask(levels, self.setup.bits, self.me, self._self_seed, seeds), self.setup.bits)
        self._held = held
        self._move(ClientStage.UNMASK)
        return packed

    def unmask(self, survivors: Collection[int]) -> Reveal:
        """Shares for the server: self seeds of surviving neighbours, masking keys of dropped ones."""
        self._expect(ClientStage.UNMASK)
        alive = set(survivors)
        if self.me not in alive:
            raise SecAggError(f"volunteer {self.me} is asked to unmask but not listed as a survivor")
        self._move(ClientStage.DONE)
        return Reveal(
            {v: p.self_seed for v, p in self._held.items() if v in alive},
            {v: p.secret_key for v, p in self._held.items() if v not in alive},
        )
