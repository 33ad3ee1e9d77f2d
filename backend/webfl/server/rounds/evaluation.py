"""Federated evaluation: the sums volunteers report on a committed model, folded into
that round's history entry.

After a commit, volunteers that are not training evaluate the new model on their own
holdout and send ``eval``. Since only the selected get a model with their task (the
rest hear of it by ``model_notice``), ``EvaluationCohort`` sends it to up to
``EVAL_COHORT`` ready volunteers that lack it (Flower's ``configure_evaluate``): the
bytes stay proportional to that cohort, not to everyone connected. They send ``eval`` (``core.evaluation.EvalSums``, never rows). Round r's entry
then holds the example-weighted accuracy and loss over every report for model r, with
``eval_examples``, ``eval_volunteers``, ``eval_source: "federated"`` and ``class_accuracy``
(per class, for tasks of up to 20 classes; null for a class no holdout had). Reports for an
older model still count while its round is one of the last ``RECENT_ROUNDS``; past that,
and for a round the server evaluated on its own data, they are refused.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import replace

from ...core.evaluation import EvalSums
from ...core.protocol import Message
from ..coordinator import Coordinator
from ..store import TaskStore
from .commit import CommitPipeline
from .peers import Peer, Peers, PeerState

__all__ = ["EVAL_COHORT", "RECENT_ROUNDS", "EvaluationCohort", "FederatedEvaluation"]

log = logging.getLogger("webfl.engine")

#: How many of the latest rounds still take reports (memory: one ``EvalSums`` each).
RECENT_ROUNDS = 8

#: Reports arriving within this long are written to the store in one transaction
#: (thousands of volunteers report within a second of each commit).
FLUSH_S = 0.5

#: Ready volunteers sent each committed model for evaluation: the estimate's spread
#: shrinks with their holdouts' total size, the bytes grow with their number.
EVAL_COHORT = 20


class EvaluationCohort:
    """Sends a committed model to a few ready volunteers that do not hold it yet, so that
    they evaluate it on their holdouts (their ``eval`` reports go to ``FederatedEvaluation``)."""

    def __init__(
        self, peers: Peers, catch_up: Callable[[Peer], list[bytes]], coordinator: Coordinator,
        count_bytes: Callable[[int, int], Awaitable[None]], size: int = EVAL_COHORT,
    ) -> None:
        """``catch_up(peer)``: the frames that bring ``peer`` to the current model (``TaskBook``);
        ``count_bytes(index, nbytes)``: adds them to that commit's ``bytes_down``."""
        self._peers, self._catch_up, self._coordinator, self._count_bytes, self.size = peers, catch_up, coordinator, count_bytes, size
        self._sending: set[asyncio.Task] = set()
        self._current: tuple[int, int] | None = None  # (history index, model version) being evaluated
        self._sent = 0  # volunteers sent that model so far

    def send(self, index: int, version: int) -> None:
        """Start sending model ``version`` (history entry ``index``) in the background."""
        self._current, self._sent = (index, version), 0
        lacking = [p for p in self._peers if p.state is PeerState.READY and p.model_version != version]
        # Who evaluates is no secret and needs no seed: any ready volunteer's holdout will do.
        self._start(random.sample(lacking, min(self.size, len(lacking))))

    def offer(self, peer: Peer) -> None:
        """``peer`` just became ready: a volunteer that trained the round (busy at its
        commit) evaluates its model too, while the cohort has room."""
        if self._current is not None and peer.model_version != self._current[1] and self._sent < self.size:
            self._start([peer])

    def _start(self, peers: list[Peer]) -> None:
        assert self._current is not None
        self._sent += len(peers)
        task = asyncio.create_task(self._send(self._current[0], peers), name="evaluate")
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, index: int, peers: list[Peer]) -> None:
        nbytes = 0
        for peer in peers:
            for frame in self._catch_up(peer):
                if not await self._coordinator.publish(frame, to=[peer.id]):
                    break
                nbytes += len(frame)
        await self._count_bytes(index, nbytes)

    async def close(self) -> None:
        for task in list(self._sending):
            task.cancel()
        if self._sending:
            await asyncio.wait(list(self._sending))


class FederatedEvaluation:
    def __init__(self, commits: CommitPipeline, store: TaskStore, num_classes: int) -> None:
        self._commits, self._store, self._num_classes = commits, store, num_classes
        self._sums: dict[int, EvalSums] = {}
        self._reported: dict[int, set[str]] = {}
        self._dirty: set[int] = set()
        self._flush: asyncio.TimerHandle | None = None

    def sums(self, round_: int) -> EvalSums | None:
        """What the volunteers reported so far on round ``round_``'s model (per class too)."""
        return self._sums.get(round_)

    def report(self, peer_id: str, msg: Message) -> str | None:
        """Fold one ``eval`` report in; the reason it was refused, or None."""
        version = msg["model_version"]
        recent = self._commits.history[-RECENT_ROUNDS:]
        index = next((i for i, r in enumerate(recent) if r.model_version == version), None)
        if index is None:
            return f"model {version} is not one of the last {RECENT_ROUNDS} committed models"
        record = recent[index]
        if record.eval_source == "server":
            return f"round {record.round} is evaluated on the server's own data"
        if peer_id in self._reported.get(record.round, ()):
            return f"a second report on model {version}"
        if record.round not in self._sums and record.eval_examples:
            return f"round {record.round}'s evaluation was closed by a restart"
        try:
            sums = EvalSums.from_dict(msg["sums"], self._num_classes)
        except ValueError as exc:
            return f"evaluation sums: {exc}"
        if sums.examples == 0:
            return "an evaluation of no examples"
        self._reported.setdefault(record.round, set()).add(peer_id)
        total = self._sums[record.round] = self._sums[record.round] + sums if record.round in self._sums else sums
        updated = replace(
            record,
            accuracy=total.accuracy,
            loss=total.loss,
            eval_source="federated",
            eval_examples=total.examples,
            eval_volunteers=len(self._reported[record.round]),
            class_accuracy=total.per_class_accuracy() or None,  # no per-class sums beyond MAX_PER_CLASS classes
        )
        history = self._commits.history
        history[len(history) - len(recent) + index] = updated
        self._forget(min(r.round for r in recent))
        self._dirty.add(record.round)
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(FLUSH_S, self.flush)
        return None

    def flush(self) -> None:
        """Write the rounds whose evaluation changed since the last flush (one transaction)."""
        if self._flush is not None:
            self._flush.cancel()  # called directly (at shutdown): the timer has nothing left
            self._flush = None
        records = [r for r in self._commits.history[-RECENT_ROUNDS:] if r.round in self._dirty]
        self._dirty.clear()
        if records:
            self._store.set_evaluations(records)

    def _forget(self, oldest: int) -> None:
        for round_ in [r for r in self._sums if r < oldest]:
            del self._sums[round_], self._reported[round_]
