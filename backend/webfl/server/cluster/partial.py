"""Partial aggregates: a follower folds its volunteers' updates of a shared round itself.

A sync round whose rule merges (``rounds.shares``) is shared. The leader (``LeaderHub``)
stores the round's facts under ``webfl:round:<token>:<task>`` before any task goes out.
A follower (``FollowerShares``) that gets an ``update`` for that round reads them once,
vets the update with the leader's own checks (a ``TaskBook`` of the round's selection:
round, selection, one update each, model version, task token, codec, example count; then
``validation.fold``: dtype, shape, finiteness), folds it into its share (one FedAvg sum,
O(model size)) and answers ``accept`` or ``reject`` itself. It closes the share once, on
the relay stream of the leader's term (so after the frames it relayed before): when all
its selected volunteers answered or left, or when the leader asks at the round's close.
Neither an ask (pub/sub delivers at most once) nor a shipment (Redis may refuse it) may
lose the share, so the closed share is kept: the leader asks again until it has it, the
follower sends the same bytes again at every ask and retries a shipment Redis refused,
and the leader merges one share per member and round, refusing the copies.
A round whose rule does not merge (``RoundFacts.folded`` false: a buffered rule, a norm
bound, clipping, dp) is vetted here the same way but not folded: ``validation.decodes``
stands for the fold (the norm bound's history lives on the leader). What fails is
answered here; what passes goes to the leader as it was sent, in batches (``Vetted``,
``batches``), with the round's edge refusals for its funnel. The leader folds each with
its own ``submit`` (``take_vetted``), so its verdict (the norm bound, the rule's memory
bound) is final and it answers the volunteer.
An update of any other round is relayed as before, and the leader judges it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from redis.asyncio import Redis
from redis.exceptions import RedisError

from ...core.aggregation import FedAvg
from ...core.codecs import Codec, get_codec
from ...core.protocol import Message, ProtocolError, decode, encode
from ..engine import RoundEngine
from ..rounds.funnel import capped_weight
from ..rounds.shares import RoundFacts, Share, ShareError, Vetted
from ..rounds.tasks import TaskBook
from ..rounds.validation import Verdict, decodes, fold, payload
from ..sockets import answer_update
from .batches import Batches
from .bus import RedisCoordinator, member_channel, pack
from .lease import Holder
from .relay import Kind, Relay

__all__ = ["FollowerShares", "LeaderHub", "facts_key", "take_vetted"]

log = logging.getLogger("webfl.cluster")

#: How long a round's facts outlive its deadline in Redis.
FACTS_SLACK_S = 60.0
#: Pause before a follower sends again a share whose shipment Redis refused.
RESHIP_S = 0.5


def facts_key(term: Holder, task: str) -> str:
    return f"webfl:round:{term.token}:{task}"


class LeaderHub:
    """The leader's side (``rounds.shares.ShareHub``): publish a round's facts, ask for its shares."""

    def __init__(self, redis: Redis, term: Holder, coordinator: RedisCoordinator) -> None:
        self.redis, self.term, self.coordinator = redis, term, coordinator

    async def open(self, facts: RoundFacts) -> None:
        ttl = facts.deadline - time.time() + FACTS_SLACK_S
        try:
            await self.redis.set(facts_key(self.term, facts.task), facts.to_json(), px=int(ttl * 1000))
        except RedisError as exc:  # followers find no facts and relay every update: the round still runs
            log.warning("round %d of %s: facts not published (%s); followers relay its updates", facts.round, facts.task, exc)

    async def ask(self, task: str, round_: int, volunteers: set[str]) -> set[str]:
        homes = self.coordinator.homes
        members = {homes[v] for v in volunteers if v in homes}
        for member in members:
            try:
                await self.redis.publish(member_channel(member), pack({"flush": task, "round": round_}))
            except RedisError as exc:  # still waited for: the round's close asks again
                log.warning("round %d of %s: could not ask %s for its share (%s)", round_, task, member, exc)
        return {v for v in volunteers if homes.get(v) in members}

    def home_of(self, volunteer: str) -> str | None:
        return self.coordinator.homes.get(volunteer)


@dataclass
class _Share:
    """A follower's share of one open round of one task."""

    facts: RoundFacts
    term: Holder
    book: TaskBook
    codec: Codec
    rule: FedAvg | None  # None: a round the leader folds (not ``facts.folded``)
    batches: Batches[tuple[str, bytes | str]] | None  # that round's vetted updates (frames) and edge refusals (kinds)
    accepted: dict[str, tuple[int, int]] = field(default_factory=dict)
    reported: set[str] = field(default_factory=set)
    rejected: Counter[str] = field(default_factory=Counter)
    closed: bytes | None = None  # the share's wire form once closed: the same bytes at every ask
    retrying: bool = False  # a refused shipment is being sent again


class FollowerShares:
    """A follower's shares, one per task (its current round), for the leader's term it saw."""

    def __init__(self, redis: Redis, member: str, relay: Relay, coordinator: RedisCoordinator, engines: Callable[[str], RoundEngine],
                 holds: Callable[[str], bool], count_refusal: Callable[[str, str], None]) -> None:
        self.redis, self.member, self.relay, self.coordinator = redis, member, relay, coordinator
        self._engines, self._holds, self._count_refusal = engines, holds, count_refusal
        self._shares: dict[str, _Share] = {}
        self._lock = asyncio.Lock()  # one reader of a round's facts at a time
        self._retries: set[asyncio.Task] = set()

    def reset(self) -> None:
        """The leader changed: its rounds are over (the new one re-runs them)."""
        self._shares.clear()
        for retry in self._retries:
            retry.cancel()

    async def update(self, term: Holder, task: str, peer_id: str, msg: Message, data: bytes) -> bool:
        """Vet, fold and answer an update of the task's shared round here (or vet it and ship
        it to the leader, for a round the leader folds); False: relay it instead."""
        share = await self._share(term, task, msg["round"])
        if share is None:
            return False
        if share.batches is not None:
            await self._vet(share, peer_id, msg, data)
            return True
        facts, nbytes = share.facts, len(data)
        if peer_id in facts.selected:
            share.reported.add(peer_id)
        verdict = self._verdict(share, peer_id, msg, nbytes)
        if not verdict.accepted:
            kind = verdict.kind or "malformed"
            share.rejected[kind] += 1
            self._count_refusal(task, kind)
        reply = Message("accept", {"round": facts.round}) if verdict.accepted else Message(
            "reject", {"reason": verdict.reason, "round": msg["round"]})
        await self.coordinator.publish(encode(reply), to=[peer_id])
        if verdict.accepted and share.closed is None and not self._pending(share):
            await self._ship(share)
        return True

    async def left(self, peer_id: str) -> None:
        """A volunteer's socket closed: a share may have nobody left to wait for."""
        for share in list(self._shares.values()):
            if share.rule is not None and peer_id in share.facts.selected and share.closed is None and not self._pending(share):
                await self._ship(share)

    async def flush(self, term: Holder, task: str, round_: int) -> None:
        """The leader asks for the round's share (an empty one if no update came here); it asks
        again until the share is in, so a share already shipped goes again, the same bytes."""
        share = await self._share(term, task, round_)
        if share is not None and share.rule is not None:
            await self._ship(share)

    # -- inside ----------------------------------------------------------------------------

    async def _share(self, term: Holder, task: str, round_: int) -> _Share | None:
        share = self._shares.get(task)
        if share is not None and share.term == term and share.facts.round == round_:
            return share
        async with self._lock:
            share = self._shares.get(task)
            if share is not None and share.term == term and share.facts.round == round_:
                return share
            try:
                raw = await self.redis.get(facts_key(term, task))
                facts = None if raw is None else RoundFacts.from_json(raw)
            except (RedisError, ShareError) as exc:
                log.warning("round facts of %s: %s; relaying its updates", task, exc)
                return None
            if facts is None or facts.round != round_ or facts.task != task:
                return None  # not a shared round, or another one: the leader judges
            engine = self._engines(task)
            book = TaskBook(engine.peers, engine.coordinator, engine.tokens, engine.commits.chain)
            for v in facts.selected:
                book.expect(v, facts.round, facts.model_version)
            rule, batches = None, None
            if facts.folded:
                rule = FedAvg()
                rule.begin(facts.size, len(facts.selected))
            else:
                batches = Batches(lambda entries: self._ship_vetted(term, facts, entries))
            share = self._shares[task] = _Share(facts, term, book, get_codec(facts.codec), rule, batches)
            return share

    async def _vet(self, share: _Share, peer_id: str, msg: Message, data: bytes) -> None:
        """A round the leader folds: refuse here what the leader would (all but its norm bound), ship the rest."""
        job = share.book.vet(peer_id, msg, share.codec)
        refused = job if isinstance(job, Verdict) else decodes(share.codec, payload(msg), share.facts.size)
        if refused is None:
            await share.batches.put((peer_id, data))  # the leader answers: its verdict is final
            return
        kind = refused.kind or "malformed"
        self._count_refusal(share.facts.task, kind)
        await self.coordinator.publish(encode(Message("reject", {"reason": refused.reason, "round": msg["round"]})), to=[peer_id])
        await share.batches.put((peer_id, kind))

    async def _ship_vetted(self, term: Holder, facts: RoundFacts, entries: list[tuple[str, bytes | str]]) -> None:
        updates = tuple((v, x) for v, x in entries if isinstance(x, bytes))
        refused = tuple((v, x) for v, x in entries if isinstance(x, str))
        await self.relay.send(term, Kind.VETTED, facts.task, data=Vetted(facts.round, updates, refused).encode())

    def _verdict(self, share: _Share, peer_id: str, msg: Message, nbytes: int) -> Verdict:
        job = share.book.vet(peer_id, msg, share.codec)
        if isinstance(job, Verdict):
            return job
        if refused := fold(share.rule, share.codec, payload(msg), capped_weight(msg["num_examples"], share.facts.max_examples)):
            return refused  # the task stays open, as on the leader
        share.book.answered(peer_id)
        share.accepted[peer_id] = (msg["num_examples"], nbytes)
        return Verdict(True)

    def _pending(self, share: _Share) -> set[str]:
        """The round's selected volunteers whose sockets are here and that have not answered."""
        return {v for v in share.facts.selected if self._holds(v) and v not in share.accepted}

    async def _ship(self, share: _Share) -> None:
        """Close the share (once) and send it on the leader's stream; a refused send is retried."""
        if share.closed is None:
            share.book.close()  # later updates of the round: "round is not open", as on the leader after its close
            facts = share.facts
            partial = share.rule.partial() if share.rule.count else None
            share.rule.abort()
            share.closed = Share(self.member, facts.task, facts.round, partial, dict(share.accepted), frozenset(share.reported),
                                 frozenset(self._pending(share)), dict(share.rejected)).encode()
        if not await self._send(share) and not share.retrying:
            share.retrying = True
            retry = asyncio.create_task(self._resend(share))
            self._retries.add(retry)
            retry.add_done_callback(self._retries.discard)

    async def _send(self, share: _Share) -> bool:
        facts = share.facts
        try:
            await self.relay.send(share.term, Kind.SHARE, facts.task, data=share.closed)
        except RedisError as exc:
            log.error("round %d of %s: the share of %d update(s) could not be shipped (%s); sending it again",
                      facts.round, facts.task, len(share.accepted), exc)
            return False
        log.info("round %d of %s: shipped a share of %d update(s)", facts.round, facts.task, len(share.accepted))
        return True

    async def _resend(self, share: _Share) -> None:
        """Send a share Redis refused again, while it is this task's current one and its round open."""
        while self._shares.get(share.facts.task) is share and time.time() < share.facts.deadline:
            await asyncio.sleep(RESHIP_S)
            if await self._send(share):
                return


async def take_vetted(engine: RoundEngine, homes: dict[str, str], member: str, data: bytes, max_frame_bytes: int) -> None:
    """The leader's side of a batch of ``member``'s vetted updates: each folded (and answered)
    with the engine's own ``submit``, as a relayed frame would be; edge refusals go to the round's funnel."""
    batch = Vetted.decode(data, max_frame_bytes)  # a ShareError is a ValueError: the caller logs and drops the batch
    for volunteer, kind in batch.refused:
        if homes.get(volunteer) == member:
            engine.refused_elsewhere(volunteer, batch.round, kind)
    for volunteer, frame in batch.updates:
        if homes.get(volunteer) != member or volunteer not in engine.peers:
            log.warning("relay: a vetted update of %s from %s, which does not hold it; dropped", volunteer, member)
            continue
        try:
            msg = decode(frame, max_frame_bytes)
        except ProtocolError as exc:
            log.warning("relay: a vetted update of %s from %s does not decode (%s); dropped", volunteer, member, exc)
            continue
        if msg.type != "update" or msg["round"] != batch.round:
            log.warning("relay: a vetted %s of round %s from %s in a batch of round %d; dropped", msg.type, msg.fields.get("round"),
                        member, batch.round)
            continue
        verdict = await answer_update(engine, volunteer, msg, len(frame))
        if not verdict.accepted:  # the norm bound, the rule's memory bound, or a round closed meanwhile
            log.warning("relay: a vetted update of %s from %s refused by the leader: %s", volunteer, member, verdict.reason)
