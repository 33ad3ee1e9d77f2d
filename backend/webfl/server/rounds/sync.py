"""Synchronous rounds (FedAvg, McMahan et al. 2017): select, train, close, commit.

A round selects up to ``ceil(clients_per_round * over_selection)`` eligible volunteers,
gives each a task, and closes at ``clients_per_round`` accepted updates, when no selected
volunteer is still training, or at ``deadline_s``. With ``min_updates`` it commits;
with fewer (or a refused aggregate) it is abandoned, the model unchanged, recorded (with
its funnel) and retried. Surplus ready volunteers are steered away (``wait``) while it
trains. Every update weighs ``min(num_examples, max_examples)`` in the mean.

In a cluster every round's facts go out before its tasks (``shares``). A round whose rule
merges (plain FedAvg) is shared: each follower folds its own volunteers' updates and ships
one share, which ``merge_share`` adds once per member and round. Any other rule's updates
are vetted on the follower and folded here through ``submit``, as a relayed frame is. At the close the leader asks
the members still holding tasks for their shares, again every ``ASK_EVERY_S`` (pub/sub
may lose an ask), and waits up to ``SHARE_WAIT_S``; a member that never ships loses only
its volunteers' updates.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from ...core.aggregation import Aggregator
from ...core.protocol import Message
from ..crashpoints import crashpoint
from ..store import AbandonedRound
from .config import RunConfig
from .funnel import Funnel
from .mode import RunMode
from .peers import PeerState
from .seeds import task_seed
from .selection import steers, target
from .shares import RoundFacts, Share, ShareHub
from .state import RoundState
from .validation import ACCEPTED, Verdict, fold, payload

__all__ = ["SyncRounds"]

log = logging.getLogger("webfl.engine")

#: Pause between an abandoned round and its retry.
RETRY_S = 0.5
#: How long a shared round's close waits for the shares it asked for (a round trip through Redis, normally).
SHARE_WAIT_S = 2.0
#: How often the close asks again for the shares still missing (a copy of a share is refused, so asking is idempotent).
ASK_EVERY_S = 0.4


@dataclass
class _OpenRound:
    round: int
    deadline: float  # loop time
    selected: frozenset[str]
    funnel: Funnel
    model_version: int
    started: float = field(default_factory=time.monotonic)
    received: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    shared: bool = False  # followers fold their volunteers' updates and ship shares
    merged: set[str] = field(default_factory=set)  # members whose share is in
    stragglers: set[str] = field(default_factory=set)  # still training on a member when it shipped


class SyncRounds(RunMode):
    name = "sync"

    def __init__(self, services, run) -> None:
        super().__init__(services, run)
        self._open: _OpenRound | None = None

    @staticmethod
    def max_updates(config: RunConfig) -> int:
        return target(config)

    @staticmethod
    def cohort(config: RunConfig) -> tuple[int, int]:
        return config.clients_per_round, config.min_updates

    async def drive(self) -> None:
        try:
            while not self.run.finished:
                if not await self._round():
                    await asyncio.sleep(RETRY_S)
        finally:
            self._close()

    async def _select(self, longer_by_s: float = 0.0) -> tuple[list[str], _OpenRound]:
        """Select the next round's cohort and open it, its deadline ``longer_by_s`` past the
        run's (a secure-aggregation round adds its stages)."""
        s, config = self.services, self.config
        s.phase.to(RoundState.SELECTING)
        version = s.commits.model_version
        cohort = await s.selection.select(config, version, len(s.commits.history))
        funnel = Funnel(cohort.connected, cohort.ready, config.max_examples)
        deadline = asyncio.get_running_loop().time() + config.deadline_s + longer_by_s
        self._open = _OpenRound(version + 1, deadline, frozenset(cohort.selected), funnel, version)
        return cohort.selected, self._open

    async def _round(self) -> bool:
        """One round; True if it committed, False if it was abandoned."""
        s, config, rule = self.services, self.config, self.run.rule
        selected, open_ = await self._select()
        round_, version, funnel, loop = open_.round, open_.model_version, open_.funnel, asyncio.get_running_loop()
        rule.begin(s.commits.model.size, len(selected))
        s.tasks.open(round_)
        hub = s.sharing.hub
        if hub is not None:
            facts = RoundFacts(s.commits.task.name, round_, version, s.commits.model.size, config.codec.spec, config.max_examples,
                               open_.selected, time.time() + config.deadline_s, folded=rule.mergeable)
            await hub.open(facts)  # before any task: a follower vets the first update with them
            open_.shared = rule.mergeable
            hub = hub if open_.shared else None  # the leader folds every update: no shares to collect
        for i, peer_id in enumerate(selected):
            sent = await s.tasks.send(peer_id, config, round_, version, task_seed(s.seed, round_, i), open_.deadline, self.run.clip)
            open_.bytes_down += sent
            funnel.task_sent(peer_id, sent > 0)
        log.info("round %d: selected %d volunteer(s) of %d connected", round_, len(selected), len(s.peers))
        s.phase.to(RoundState.TRAINING)
        want = target(config)
        while True:
            training = self._training()
            remaining = open_.deadline - loop.time()
            if open_.received >= config.clients_per_round or not training or remaining <= 0:
                break
            # Volunteers ready beyond what the next round selects have nothing to do for a while
            # (listed only when steering is on: this runs at every update and state change).
            if steers(config):
                await s.selection.steer(s.selection.eligible(config.codec)[want:], want, config, "enough volunteers are ready")
            await s.phase.wait_change(remaining)
        if hub is not None:
            await self._collect(hub, open_)
        funnel.close(self._training() | open_.stragglers)
        self._close()
        if rule.count < config.min_updates:
            rule.abort()
            log.warning("round %d abandoned: %d update(s), %d needed; global model unchanged", round_, rule.count, config.min_updates)
            await self._abandon(open_, "too_few_updates")
            return False
        return await self._commit(rule, open_)

    async def _commit(self, rule: Aggregator, open_: _OpenRound) -> bool:
        """Commit the round's aggregate; False (recorded as abandoned) if the pipeline refused it."""
        s = self.services
        began = time.monotonic()
        if await s.commits.commit(self.run, rule, open_.started, open_.bytes_up, open_.bytes_down, open_.funnel.to_dict()) is None:
            await self._abandon(open_, "refused_aggregate")
            return False
        s.stats.commit_took(time.monotonic() - began)
        return True

    async def _collect(self, hub: ShareHub, open_: _OpenRound) -> None:
        """Ask the members still holding tasks of the round for their shares, again every
        ``ASK_EVERY_S`` (an ask or a shipment may be lost), and wait for them a while."""
        loop, task = asyncio.get_running_loop(), self.services.commits.task.name
        waiting = await hub.ask(task, open_.round, self._training())
        end = loop.time() + SHARE_WAIT_S
        ask_at = loop.time() + ASK_EVERY_S
        while (late := waiting & self._training()) and (left := end - loop.time()) > 0:
            if loop.time() >= ask_at:
                log.info("round %d: asking again for the shares of %d volunteer(s)", open_.round, len(late))
                await hub.ask(task, open_.round, late)
                ask_at = loop.time() + ASK_EVERY_S
            await self.services.phase.wait_change(min(left, ask_at - loop.time()))
        if late:
            log.warning("round %d: no share from the member(s) of %d volunteer(s) in time; their updates are lost", open_.round, len(late))

    def merge_share(self, share: Share) -> str | None:
        s, open_ = self.services, self._open
        if open_ is None or not open_.shared or share.round != open_.round:
            return f"round {share.round} is not an open shared round"
        if share.member in open_.merged:
            return f"a second share of round {share.round} from {share.member}"  # a replayed stream entry
        hub, named = s.sharing.hub, set(share.accepted) | share.reported | share.pending
        # A volunteer that answered and then left has no home any more; one homed elsewhere is not this member's.
        if hub is None or any(v not in open_.selected or hub.home_of(v) not in (None, share.member) for v in named):
            return f"the share names volunteer(s) not selected on {share.member}"
        if share.partial is not None:
            try:
                self.run.rule.merge(share.partial)
            except ValueError as exc:
                return str(exc)  # the rule is unchanged
        open_.merged.add(share.member)
        for v in share.reported:
            if v in open_.funnel.trained:
                open_.funnel.report(v)
        for kind, n in share.rejected.items():
            open_.funnel.rejected[kind] += n
        for v, (num_examples, nbytes) in share.accepted.items():
            if s.tasks.holds(v):
                s.tasks.answered(v)
            open_.funnel.accept(num_examples)
            open_.received += 1
            open_.bytes_up += nbytes
        for v in share.pending:
            s.tasks.withdraw(v)  # the member closed its share: nothing more comes for it
        open_.stragglers |= share.pending
        log.info("round %d: a share of %d update(s) from %s merged (%d/%d)", open_.round, len(share.accepted), share.member,
                 open_.received, len(open_.selected))
        if share.accepted:
            crashpoint("training", open_.round)  # as for an update accepted here: the sum lives only in memory
        s.phase.changed()
        return None

    def refused_elsewhere(self, peer_id: str, round_: int, kind: str) -> None:
        open_ = self._open
        if open_ is not None and round_ == open_.round:
            if peer_id in open_.funnel.trained:
                open_.funnel.report(peer_id)
            open_.funnel.reject(kind)

    def _training(self) -> set[str]:
        """Volunteers still training on their task: they may yet answer. Not one that left,
        nor one that came back without it (a reloaded tab, see engine.connect)."""
        s = self.services
        return {p for p in s.tasks.outstanding() if (peer := s.peers.get(p)) and peer.state is PeerState.TRAINING}

    async def _abandon(self, open_: _OpenRound, why: str) -> None:
        s = self.services
        record = AbandonedRound(open_.round, self.run.id, open_.model_version, why, open_.funnel.to_dict(), time.monotonic() - open_.started, time.time())
        await asyncio.to_thread(s.commits.store.abandon_round, record)

    def _close(self) -> None:
        self._open = None
        self.services.tasks.close()

    def submit(self, peer_id: str, msg: Message, nbytes: int) -> Verdict:
        open_ = self._open
        if open_ is not None and msg["round"] == open_.round and peer_id in open_.funnel.trained:
            open_.funnel.report(peer_id)
        verdict = self._verdict(peer_id, msg, nbytes)
        if open_ is not None and not verdict.accepted:
            open_.funnel.reject(verdict.kind or "malformed")
        return verdict

    def _verdict(self, peer_id: str, msg: Message, nbytes: int) -> Verdict:
        s, open_, config = self.services, self._open, self.config
        job = s.tasks.vet(peer_id, msg, config.codec)
        if isinstance(job, Verdict):
            return job
        assert open_ is not None and job.round == open_.round  # the book only holds this round's tasks
        if refused := fold(self.run.rule, config.codec, payload(msg), config.weight(msg["num_examples"]), msg.fields.get("clipped")):
            return refused  # the task stays open: a valid update may still answer it
        self._count(open_, peer_id, msg["num_examples"], nbytes, "update")
        s.phase.changed()
        return ACCEPTED

    def _count(self, open_: _OpenRound, peer_id: str, examples: int, nbytes: int, what: str) -> None:
        """An update is in the round's aggregate: its task is answered, and the funnel and the
        round's counts say so."""
        self.services.tasks.answered(peer_id)
        open_.funnel.accept(examples)
        open_.received += 1
        open_.bytes_up += nbytes
        log.info("round %d: %s %d/%d from %s accepted", open_.round, what, open_.received, len(open_.selected), peer_id)
        crashpoint("training", open_.round)

    def open_round(self) -> dict | None:
        open_ = self._open
        if open_ is None:
            return None
        return {
            "round": open_.round, "selected": len(open_.selected), "received": open_.received, "deadline": open_.deadline,
            "funnel": open_.funnel.to_dict(),
        }
