"""Buffered asynchronous aggregation (FedBuff, Nguyen et al. 2022): no round barrier.

Every ready volunteer (up to ``ceil(clients_per_round * over_selection)`` at a time)
is given a task on the current model as soon as it is ready; a volunteer that
finishes gets the next task at once. Accepted updates go into a buffer (the run's
aggregator); every ``buffer_size`` of them the server commits, exactly like a
synchronous round (``RoundEngine._commit``), and the commit becomes a round in the
history. An update trained on model ``v`` arriving when the model is at ``V`` is
``V - v`` versions stale; it weighs ``num_examples * (1 + staleness) ** -a`` and is
rejected beyond ``max_staleness``.

States (``RoundEngine.state``)::

    TRAINING --buffer holds buffer_size updates--> AGGREGATING --> BROADCASTING --+
       ^   (dispatch tasks to ready volunteers;                                    |
       |    updates arriving meanwhile wait in ``_pending``)                       |
       +-----------------------------------------------------------------------------+

A task expires after ``deadline_s`` (its volunteer vanished or is too slow): the slot
goes to someone else and a late update is rejected.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass

import numpy as np

from ..core.aggregation import Aggregator
from ..core.codecs import Encoded
from ..core.protocol import Message
from .crashpoints import crashpoint
from .engine import PeerState, RoundEngine, RoundState, RunConfig, Verdict, add_update

__all__ = ["FedBuff", "staleness_weight"]

log = logging.getLogger("webfl.fedbuff")


def staleness_weight(staleness: int, exponent: float = 0.5) -> float:
    """The discount of an update ``staleness`` model versions old: ``(1 + s) ** -a``."""
    return float((1.0 + staleness) ** -exponent)


@dataclass
class _Assignment:
    round: int
    model_version: int
    expires: float  # loop time


@dataclass
class _Pending:
    peer_id: str
    codec: str
    enc: Encoded
    weight: float
    nbytes: int


class FedBuff:
    def __init__(self, engine: RoundEngine, config: RunConfig, aggregator: Aggregator, run_id: int) -> None:
        self.engine, self.config, self.aggregator, self.run_id = engine, config, aggregator, run_id
        self.concurrency = math.ceil(config.clients_per_round * config.over_selection)
        self.assigned: dict[str, _Assignment] = {}
        self._pending: list[_Pending] = []  # accepted while a commit is in progress
        self._collecting = False
        self._bytes_up = self._bytes_down = 0
        self._tasks_sent = 0
        self.accepted = self.rejected_stale = 0
        self.staleness_sum = 0

    def describe(self) -> dict:
        return {
            "buffer": self.aggregator.count if self._collecting else 0,
            "buffer_size": self.config.buffer_size,
            "in_flight": len(self.assigned),
            "accepted": self.accepted,
            "rejected_stale": self.rejected_stale,
            "mean_staleness": self.staleness_sum / self.accepted if self.accepted else 0.0,
        }

    # -- updates --------------------------------------------------------------------

    def submit(self, peer_id: str, msg: Message, nbytes: int) -> Verdict:
        engine, config = self.engine, self.config
        job = self.assigned.get(peer_id)
        if job is None:
            return Verdict(False, "no task outstanding for this volunteer (expired or never given)", "not_selected")
        if msg["round"] != job.round or msg["model_version"] != job.model_version:
            return Verdict(False, f"update for round {msg['round']}/model {msg['model_version']} does not match the task (round {job.round}, model {job.model_version})", "round")
        # Refused here, the task stays open (as a sync round's selection does): a valid
        # update may still answer it, and a forged one cannot cancel it.
        if refused := engine.check_update(peer_id, msg, config.codec):
            return refused
        staleness = engine.model_version - job.model_version
        if staleness > config.max_staleness:
            self._release(peer_id)
            self.rejected_stale += 1
            return Verdict(False, f"update is {staleness} model versions stale (at most {config.max_staleness} accepted)", "stale")
        item = _Pending(peer_id, msg["codec"], Encoded(msg["codec_params"], msg.arrays), msg["num_examples"] * staleness_weight(staleness, config.staleness_exponent), nbytes)
        if not self._collecting or self.aggregator.count >= config.buffer_size:
            # The buffer is full or being committed: keep the update for the next one
            # (bounded by concurrency), so every commit holds exactly buffer_size.
            self._pending.append(item)
        elif refused := self._fold(item):
            return refused
        self._release(peer_id)
        self.accepted += 1
        self.staleness_sum += staleness
        log.info("fedbuff: update from %s accepted (staleness %d, weight %.1f)", peer_id, staleness, item.weight)
        crashpoint("training", engine.model_version + 1)
        return Verdict(True)

    def _release(self, peer_id: str) -> None:
        """The task is answered: its slot is free for the next ready volunteer."""
        del self.assigned[peer_id]
        self.engine._changed.set()

    def _fold(self, item: _Pending) -> Verdict | None:
        refused = add_update(self.aggregator, item.codec, item.enc, item.weight)
        if refused is None:
            self._bytes_up += item.nbytes
        return refused

    # -- the loop ---------------------------------------------------------------------

    async def run(self) -> None:
        engine, config = self.engine, self.config
        engine._fedbuff = self
        try:
            while engine.run_rounds_done < config.rounds:
                started = time.monotonic()
                self.aggregator.begin(engine.model.size, config.buffer_size + self.concurrency)
                self._collecting = True
                pending, self._pending = self._pending, []
                for item in pending:
                    if self.aggregator.count >= config.buffer_size:
                        self._pending.append(item)
                    elif refused := self._fold(item):
                        # Already accepted, so the volunteer is not told; the count shows it.
                        engine.rejections.add(refused.kind or "malformed")
                        log.warning("fedbuff: buffered update from %s dropped: %s", item.peer_id, refused.reason)
                engine._to(RoundState.TRAINING)
                while self.aggregator.count < config.buffer_size:
                    await self._dispatch()
                    await engine._wait_change(1.0)
                self._collecting = False
                await engine._commit(self.aggregator, self.run_id, started, self._bytes_up, self._bytes_down)
                self._bytes_up = self._bytes_down = 0
                engine.run_rounds_done += 1
        finally:
            self._collecting = False
            if self.aggregator.count:
                self.aggregator.abort()
            engine._fedbuff = None

    async def _dispatch(self) -> None:
        """Expire overdue tasks, give every free slot to a ready volunteer, steer the rest."""
        engine, config = self.engine, self.config
        now = asyncio.get_running_loop().time()
        for peer_id, job in list(self.assigned.items()):
            if peer_id not in engine.peers or now > job.expires:
                del self.assigned[peer_id]
        engine._wake_waiting()
        ready = sorted(p.id for p in engine.peers.values() if p.state is PeerState.READY)
        free = max(0, self.concurrency - len(self.assigned))
        for peer_id in ready[:free]:
            round_ = engine.model_version + 1
            self._tasks_sent += 1
            seed = int(np.random.default_rng([engine.seed, round_, self._tasks_sent]).integers(2**31))
            if sent := await engine.send_task(peer_id, config, seed):
                self._bytes_down += sent
                self.assigned[peer_id] = _Assignment(round_, engine.model_version, now + config.deadline_s)
        await engine._steer(ready[free:], self.concurrency, config, "all training slots are taken")
