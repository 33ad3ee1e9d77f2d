"""Who trains next: the ready volunteers that can use the run's codec, how many to pick,
and pace steering for the rest (``wait``, see ``server/pacing.py``). Both run modes pick
through here, so they agree on the codec check and on ``ceil(clients_per_round * over_selection)``."""

from __future__ import annotations

import asyncio
import logging
import math
import random
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ...core.codecs import Codec
from ...core.protocol import Message, encode
from .. import pacing
from ..coordinator import Coordinator
from .config import RunConfig
from .peers import Peer, PeerState, Peers
from .seeds import selection_rng
from .state import Phase

__all__ = ["Cohort", "Selection", "Waiting", "poisson", "steers", "target"]

log = logging.getLogger("webfl.engine")


def target(config: RunConfig) -> int:
    """How many volunteers train at once: selected per sync round, in flight under FedBuff."""
    return math.ceil(config.clients_per_round * config.over_selection)


def steers(config: RunConfig) -> bool:
    """Whether surplus ready volunteers are told to come back later (``max_wait_s`` above 0)."""
    return config.max_wait_s > 0


@dataclass(frozen=True)
class Cohort:
    """A sync round's pick, and the pool it was picked from (the funnel's first two steps)."""

    selected: list[str]
    connected: int
    ready: int


@dataclass(frozen=True)
class Waiting:
    """What a sync round's selection waits for, for the operator's hint."""

    ready: int  # eligible: ready and able to use the run's codec
    wanted: int  # target(config)
    needed: int  # min_updates: fewer never start a round
    other_codec: int  # ready, but cannot decode the run's codec
    starts_at: float | None  # loop time it starts with fewer than wanted (enough are ready)

    def to_dict(self, now: float) -> dict:
        return {
            "ready": self.ready, "wanted": self.wanted, "needed": self.needed, "other_codec": self.other_codec,
            "starts_in_s": None if self.starts_at is None else max(0.0, self.starts_at - now),
        }

    def hint(self, now: float) -> str:
        if self.starts_at is None:
            text = f"{self.ready} of {self.needed} needed are ready"
            if self.wanted > self.needed:
                text += f" (a round takes up to {self.wanted})"
        else:
            text = f"{self.ready} of {self.wanted} wanted are ready; starting with {self.ready} in {max(0.0, self.starts_at - now):.1f} s"
        if self.other_codec:
            text += f"; {self.other_codec} more ready cannot decode the run's codec"
        return text


def poisson(ready: Sequence[str], q: float) -> list[str]:
    """Each of ``ready`` independently with probability ``q``: the sampling DP amplification assumes.

    The coins come from the OS (``secrets``), never the run's seed: who was drawn must not
    be predictable from it, or the amplification is gone. The count drawn varies, and may
    be below ``min_updates`` (the round is then abandoned and redrawn, see docs/privacy.md).
    """
    coins = _system_random.random
    return sorted(p for p in ready if coins() < q)


_system_random = secrets.SystemRandom()


class Selection:
    def __init__(self, peers: Peers, phase: Phase, coordinator: Coordinator, seed: int, durations: Callable[[], Sequence[float]]) -> None:
        self._peers, self._phase, self._coordinator, self._seed = peers, phase, coordinator, seed
        self._durations = durations  # of the committed rounds, for pace steering
        self._pace_rng = random.Random(seed)
        self.waits_sent = 0
        #: While a sync round waits for volunteers: for what (``None`` otherwise).
        self.waiting: Waiting | None = None

    def eligible(self, codec: Codec) -> list[str]:
        """Ready volunteers (after waking those whose wait is over) that can decode ``codec``."""
        self._peers.wake(asyncio.get_running_loop().time())
        if all(codecs.issuperset(codec.stages) for codecs in self._peers.codec_sets()):
            return self._peers.in_state(PeerState.READY)  # the usual case: no volunteer to check one by one
        usable = []
        for peer in self._peers.of_state(PeerState.READY):
            if peer.codecs.issuperset(codec.stages):
                usable.append(peer.id)
            else:
                self._refuse(peer, codec)
        return usable

    def _refuse(self, peer: Peer, codec: Codec) -> None:
        """Log once per volunteer and codec that it lacks a stage of ``codec``."""
        if codec.spec not in peer.refused_codecs:
            peer.refused_codecs.add(codec.spec)
            log.info("volunteer %s not selectable: codec %s needs %s, it supports %s", peer.id, codec.spec, ", ".join(codec.stages), ", ".join(sorted(peer.codecs)))

    async def select(self, config: RunConfig, model_version: int, rounds_committed: int) -> Cohort:
        """A sync round's cohort: wait up to ``select_timeout_s`` for ``target`` eligible
        volunteers (never fewer than ``min_updates``), pick at random, steer the surplus.

        With dp ``sampling: "poisson"`` the pool waited for is the ``population`` and each
        eligible volunteer is then drawn independently with probability ``q`` (``poisson``).
        """
        coin_flips = config.dp is not None and config.dp.sampling_rate is not None
        want = config.dp.population if coin_flips else target(config)  # type: ignore[union-attr]
        loop = asyncio.get_running_loop()
        since = loop.time()
        try:
            while True:
                ready = self.eligible(config.codec)
                waited = loop.time() - since
                enough = len(ready) >= config.min_updates
                if len(ready) >= want or (enough and waited >= config.select_timeout_s):
                    break
                other = self._peers.count(PeerState.READY) - len(ready)
                self.waiting = Waiting(len(ready), want, config.min_updates, other, since + config.select_timeout_s if enough else None)
                await self._phase.wait_change(config.select_timeout_s - waited if enough else 1.0)
        finally:
            self.waiting = None
        if coin_flips:
            selected = poisson(ready, config.dp.sampling_rate)  # type: ignore[union-attr]
        else:
            rng = selection_rng(self._seed, model_version, rounds_committed)
            # Drawn by index: the same draw as from ``ready`` itself, without making a NumPy
            # array of 10,000 id strings every round.
            selected = sorted(ready[i] for i in rng.choice(len(ready), size=min(want, len(ready)), replace=False))
        cohort = Cohort(selected, len(self._peers), self._peers.count(PeerState.READY))
        if steers(config):
            await self.steer(sorted(set(ready) - set(selected)), want, config, "not selected for this round")
        return cohort

    async def steer(self, peer_ids: list[str], needed: int, config: RunConfig, reason: str) -> None:
        """Tell ``peer_ids`` (ready, surplus) to come back later, sized to the load."""
        if not steers(config) or not peer_ids:
            return
        ready = self._peers.count(PeerState.READY) + self._peers.count(PeerState.WAITING)
        round_s = pacing.round_duration(list(self._durations()), min(config.deadline_s, 10.0))
        now = asyncio.get_running_loop().time()
        for peer_id in peer_ids:
            t = pacing.retry_after(ready, needed, round_s, config.max_wait_s, self._pace_rng)
            if await self._coordinator.publish(encode(Message("wait", {"retry_after_s": t, "reason": reason})), to=[peer_id]):
                self._peers.wait(peer_id, now + t)
                self.waits_sent += 1
        log.info("pace steering: %d volunteer(s) told to come back later (%s)", len(peer_ids), reason)
