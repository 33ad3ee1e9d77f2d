"""Buffered asynchronous aggregation (FedBuff, Nguyen et al. 2022): no round barrier.

Every eligible ready volunteer (up to ``ceil(clients_per_round * over_selection)`` at a
time) is given a task on the current model as soon as it is ready; a volunteer that
finishes gets the next task at once. Accepted updates go into a buffer (the run's rule);
every ``buffer_size`` of them the server commits exactly like a synchronous round, and
the commit becomes a round in the history. An update trained on model ``v`` arriving
when the model is at ``V`` is ``V - v`` versions stale; it weighs
``min(num_examples, max_examples) * (1 + staleness) ** -a`` and is rejected beyond
``max_staleness``. Each buffer has its cohort funnel (``rounds/funnel.py``), stored with
its commit; an update accepted while a buffer commits is counted in the next one.

States (``RoundState``)::

    TRAINING --buffer holds buffer_size updates--> AGGREGATING --> BROADCASTING --+
       ^   (dispatch tasks to ready volunteers;                                    |
       |    updates arriving meanwhile wait for the next buffer)                   |
       +-----------------------------------------------------------------------------+

A task expires after ``deadline_s`` (its volunteer vanished or is too slow): the slot
goes to someone else and a late update is rejected.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from ...core.codecs import Encoded
from ...core.protocol import Message
from ..crashpoints import crashpoint
from ..store import AbandonedRound
from .config import RunConfig
from .funnel import Funnel
from .mode import RunMode
from .peers import PeerState
from .seeds import task_seed
from .selection import target
from .state import RoundState
from .validation import ACCEPTED, Verdict, fold, payload

__all__ = ["FedBuff", "staleness_weight"]

log = logging.getLogger("webfl.fedbuff")

#: How often the dispatcher looks again without a change (expired tasks, waits over).
POLL_S = 1.0


def staleness_weight(staleness: int, exponent: float = 0.5) -> float:
    """The discount of an update ``staleness`` model versions old: ``(1 + s) ** -a``."""
    return float((1.0 + staleness) ** -exponent)


@dataclass
class _Pending:
    peer_id: str
    enc: Encoded
    weight: float
    nbytes: int
    num_examples: int
    clipped: bool | None = None  # dp runs: the sender's report


class FedBuff(RunMode):
    name = "fedbuff"

    def __init__(self, services, run) -> None:
        super().__init__(services, run)
        self.concurrency = target(self.config)
        self._pending: list[_Pending] = []  # accepted while the buffer is full or being committed
        self._collecting = False
        self._bytes_up = self._bytes_down = 0
        self._tasks_sent = 0
        self.accepted = self.rejected_stale = 0
        self.staleness_sum = 0
        self._funnel = Funnel(0, 0, self.config.max_examples)  # the buffer being filled
        self._keys: dict[str, tuple[str, int]] = {}  # volunteer -> its latest task's funnel key
        # dp runs: volunteers with an update in the buffer; at most one each per commit, or
        # one volunteer could move a release by more than the clip norm.
        self._in_buffer: set[str] = set()

    @staticmethod
    def max_updates(config: RunConfig) -> int:
        return config.buffer_size

    @staticmethod
    def cohort(config: RunConfig) -> tuple[int, int]:
        return config.buffer_size, config.buffer_size  # every commit is one full buffer

    def describe(self) -> dict:
        return {
            "buffer": self.run.rule.count if self._collecting else 0,
            "buffer_size": self.config.buffer_size,
            "in_flight": len(self.services.tasks),
            "accepted": self.accepted,
            "rejected_stale": self.rejected_stale,
            "mean_staleness": self.staleness_sum / self.accepted if self.accepted else 0.0,
            "funnel": self._funnel.to_dict(),
        }

    # -- updates --------------------------------------------------------------------

    def submit(self, peer_id: str, msg: Message, nbytes: int) -> Verdict:
        if self.services.tasks.holds(peer_id) and peer_id in self._keys:
            self._funnel.report(self._keys[peer_id])
        verdict = self._verdict(peer_id, msg, nbytes)
        if not verdict.accepted:
            self._funnel.reject(verdict.kind or "malformed")
        return verdict

    def _verdict(self, peer_id: str, msg: Message, nbytes: int) -> Verdict:
        s, config = self.services, self.config
        # Refused here, the task stays open (as a sync round's selection does): a valid
        # update may still answer it, and a forged one cannot cancel it.
        job = s.tasks.vet(peer_id, msg, config.codec)
        if isinstance(job, Verdict):
            return job
        staleness = s.commits.model_version - job.model_version
        if staleness > config.max_staleness:
            s.tasks.answered(peer_id)
            self.rejected_stale += 1
            return Verdict(False, f"update is {staleness} model versions stale (at most {config.max_staleness} accepted)", "stale")
        weight = config.weight(msg["num_examples"], staleness_weight(staleness, config.staleness_exponent))
        item = _Pending(peer_id, payload(msg), weight, nbytes, msg["num_examples"], msg.fields.get("clipped"))
        if not self._collecting or self.run.rule.count >= config.buffer_size or self._once(peer_id):
            # The buffer is full or being committed: keep the update for the next one
            # (bounded by concurrency), so every commit holds exactly buffer_size.
            self._pending.append(item)
        elif refused := self._fold(item):
            return refused
        s.tasks.answered(peer_id)
        s.phase.changed()  # a slot is free for the next ready volunteer
        self.accepted += 1
        self.staleness_sum += staleness
        log.info("fedbuff: update from %s accepted (staleness %d, weight %.1f)", peer_id, staleness, item.weight)
        crashpoint("training", s.commits.model_version + 1)
        return ACCEPTED

    def _once(self, peer_id: str) -> bool:
        """dp runs: ``peer_id`` already has an update in this buffer (the next one takes it)."""
        return self.config.dp is not None and peer_id in self._in_buffer

    def _holding(self) -> set[str]:
        """dp runs: volunteers with an update buffered or pending; they get no new task until
        it is committed, which bounds the pending list to one update per volunteer."""
        if self.config.dp is None:
            return set()
        return self._in_buffer | {item.peer_id for item in self._pending}

    def _fold(self, item: _Pending) -> Verdict | None:
        refused = fold(self.run.rule, self.config.codec, item.enc, item.weight, item.clipped)
        if refused is None:
            self._bytes_up += item.nbytes
            self._funnel.accept(item.num_examples)
            self._in_buffer.add(item.peer_id)
        return refused

    # -- the loop ---------------------------------------------------------------------

    async def drive(self) -> None:
        s, config, rule = self.services, self.config, self.run.rule
        try:
            while not self.run.finished:
                started = time.monotonic()
                rule.begin(s.commits.model.size, config.buffer_size + self.concurrency)
                self._funnel = Funnel(len(s.peers), s.peers.count(PeerState.READY), config.max_examples)
                # Keys of tasks no longer held are done with: a long run sees many volunteers.
                self._keys = {p: key for p, key in self._keys.items() if s.tasks.holds(p)}
                self._collecting = True
                self._in_buffer = set()
                pending, self._pending = self._pending, []
                for item in pending:
                    if rule.count >= config.buffer_size or self._once(item.peer_id):
                        self._pending.append(item)
                    elif refused := self._fold(item):
                        # Already accepted, so the volunteer is not told; the count shows it.
                        s.rejections.add(refused.kind or "malformed")
                        self._funnel.reject(refused.kind or "malformed")
                        log.warning("fedbuff: buffered update from %s dropped: %s", item.peer_id, refused.reason)
                s.phase.to(RoundState.TRAINING)
                while rule.count < config.buffer_size:
                    await self._dispatch()
                    await s.phase.wait_change(POLL_S)
                self._collecting = False
                self._funnel.close(self._keys[p] for p in s.tasks.outstanding() if p in self._keys and self._training(p))
                began = time.monotonic()
                if await s.commits.commit(self.run, rule, started, self._bytes_up, self._bytes_down, self._funnel.to_dict()) is not None:
                    s.stats.commit_took(time.monotonic() - began)
                    self._bytes_up = self._bytes_down = 0
                else:
                    version = s.commits.model_version
                    record = AbandonedRound(version + 1, self.run.id, version, "refused_aggregate", self._funnel.to_dict(), time.monotonic() - started, time.time())
                    await asyncio.to_thread(s.commits.store.abandon_round, record)
                # Stale tasks stay answerable; rounds without a task left close.
                s.tasks.close(keep=s.commits.model_version + 1)
        finally:
            self._collecting = False
            if rule.count:
                rule.abort()
            s.tasks.close()

    def _training(self, peer_id: str) -> bool:
        peer = self.services.peers.get(peer_id)
        return peer is not None and peer.state is PeerState.TRAINING

    async def _dispatch(self) -> None:
        """Expire overdue tasks, give every free slot to an eligible volunteer, steer the rest."""
        s, config = self.services, self.config
        now = asyncio.get_running_loop().time()
        s.tasks.expire(now)
        holding = self._holding()
        ready = [p for p in s.selection.eligible(config.codec) if p not in holding]
        free = max(0, self.concurrency - len(s.tasks))
        version = s.commits.model_version
        for peer_id in ready[:free]:
            self._tasks_sent += 1
            seed = task_seed(s.seed, version + 1, self._tasks_sent)
            sent = await s.tasks.send(peer_id, config, version + 1, version, seed, now + config.deadline_s, self.run.clip)
            self._bytes_down += sent
            self._keys[peer_id] = key = (peer_id, self._tasks_sent)
            self._funnel.task_sent(key, sent > 0)
        await s.selection.steer(ready[free:], self.concurrency, config, "all training slots are taken")
