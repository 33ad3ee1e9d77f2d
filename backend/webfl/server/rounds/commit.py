"""The global model and the pipeline that advances it, all or nothing.

A commit: aggregate -> server optimizer -> sanity checks -> evaluate on the held-out
split -> one store transaction (round record, checkpoint, every component's state) ->
only then advance the downlink chain, adopt the model and announce it: one ``model_notice``
carrying the status to every volunteer, paced (``announce``; the model itself travels with
each task, see ``tasks``). An aggregate that
is non-finite or explodes, or a model that evaluates to NaN, is refused before anything
is applied; a transaction that fails leaves the live model, the chain and the
components exactly as the store has them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

import numpy as np

from ...core.aggregation import Aggregator
from ...core.data import Dataset, features
from ...core.downlink import ModelChain, model_url
from ...core.evaluation import EvalSums, evaluation_sums
from ...core.models import MLP
from ...core.server_opt import ServerOptimizer
from ...core.tasks import Task
from ..coordinator import Coordinator
from ..crashpoints import crashpoint
from ..privacy.run import DPRule, PrivacyLedger
from ..store import RoundRecord, TaskStore
from .announce import Announcement, Announcer, history_fields
from .config import RunConfig
from .seeds import downlink_rng
from .state import Phase, RoundState

__all__ = ["MAX_PARAM_ABS", "CommitPipeline", "Component", "OptimizerState", "Run"]

log = logging.getLogger("webfl.engine")

#: A parameter beyond this is a diverged (or poisoned) step, not learning: the models
#: here keep weights of order one, and float32 activations overflow long before 1e19.
MAX_PARAM_ABS = 1e6


class Component(Protocol):
    """Something a run must carry across a crash: its state goes into every checkpoint.

    ``state()`` holds JSON values and NumPy arrays; ``load_state(state())`` restores it.
    """

    def state(self) -> dict: ...

    def load_state(self, state: dict) -> None: ...


class OptimizerState:
    """The server optimizer as a ``Component``."""

    def __init__(self, opt: ServerOptimizer, size: int) -> None:
        self.opt, self.size = opt, size

    def state(self) -> dict:
        vector = self.opt.state()
        out: dict = {"spec": self.opt.spec, "steps": self.opt.steps}
        if vector is not None:
            out["vector"] = vector.copy()  # a copy: the optimizer updates its own in place
        return out

    def load_state(self, state: dict) -> None:
        self.opt.load_state(state.get("vector"), self.size, int(state["steps"]))


class Run:
    """One run: its settings, rule, optimizer and components, and how many rounds it committed.

    A dp run also has its ``privacy`` ledger (the accountant), a component like the rest;
    ``past_privacy`` are the accountant states of the task's earlier runs (its total).
    """

    def __init__(
        self, run_id: int, config: RunConfig, rule: Aggregator, opt: ServerOptimizer, size: int, rounds_done: int = 0,
        past_privacy: list[dict] | None = None,
    ) -> None:
        self.id, self.config, self.rule, self.opt = run_id, config, rule, opt
        # The rule learns across rounds (norm histories, the adaptive clip): resuming without
        # it would reopen the window in which an adaptive bound is still on its prior.
        self.components: dict[str, Component] = {"server_opt": OptimizerState(opt, size), "rule": rule}
        self.privacy: PrivacyLedger | None = None
        if config.dp is not None:
            assert isinstance(rule, DPRule), "a dp run folds into its DP release (RunConfig.rule)"
            self.privacy = self.components["privacy"] = PrivacyLedger(config.dp, rule, past_privacy)
        self.rounds_done = rounds_done

    @property
    def finished(self) -> bool:
        """All rounds committed, or (dp) the next one would exceed ``max_epsilon``: asked before each round."""
        return self.rounds_done >= self.config.rounds or (self.privacy is not None and self.privacy.exhausted() is not None)

    @property
    def clip(self) -> float | None:
        """The clip norm the next task carries (dp runs), else ``None``."""
        return None if self.privacy is None else self.privacy.rule.clip


class CommitPipeline:
    """Owns the global model (``params``, ``model_version``, ``history``) and its downlink chain."""

    def __init__(
        self, task: Task, model: MLP, store: TaskStore, coordinator: Coordinator, phase: Phase, test: Dataset | None, seed: int,
        status_fields: Callable[[], dict], recipients: Callable[[], list[str]],
        committed: Callable[[int], None] = lambda index: None, busy: Callable[[], bool] = lambda: False,
    ) -> None:
        """``status_fields``: the status but its history, announced with every commit;
        ``recipients``: the ids of the volunteers connected now; ``committed(index)``: called
        with each new history entry's index once it is announced (federated evaluation starts there);
        ``busy()``: a round is in flight, so announcements hold back (``announce``)."""
        self.task, self.model, self.store, self._coordinator, self._phase, self._seed = task, model, store, coordinator, phase, seed
        #: A cluster leader's fencing token, carried by every commit (None: one process, no fence).
        self.fence: int | None = None
        self.status_fields = status_fields
        self.committed = committed
        self._test = None if test is None else (features(test.x), test.y)
        checkpoint = store.latest_checkpoint()
        if checkpoint is None:
            self.model_version, self.params = 0, model.init(seed)
            store.save_checkpoint(0, self.params)
        else:
            self.model_version, self.params = checkpoint
        self.history = store.history()
        self.chain = ModelChain(self.params, self.model_version)
        told = len(self.history)  # nobody is connected yet; a joining volunteer gets it all
        self.announcer = Announcer(coordinator, recipients, self.count_bytes_down, lambda since, upto: history_fields(self.history, since, upto), told,
                                   busy)

    @property
    def evaluates_on_server(self) -> bool:
        """The server holds data of its own for this task (MNIST's held-out digits)."""
        return self._test is not None

    async def commit(
        self, run: Run, aggregator: Aggregator, started: float, bytes_up: int, bytes_down: int, funnel: dict | None = None
    ) -> RoundRecord | None:
        """Commit ``aggregator``'s round (``funnel`` is stored with it); ``None`` if the aggregate was refused (nothing changed)."""
        round_ = self.model_version + 1
        self._phase.to(RoundState.AGGREGATING)
        crashpoint("aggregating", round_)
        participants = aggregator.count
        # Taken before ``finish``: a dp release moves the adaptive clip, which a refused
        # round (never released) must not keep.
        before = {name: c.state() for name, c in run.components.items()}
        delta = await asyncio.to_thread(aggregator.finish)
        try:
            params = await asyncio.to_thread(run.opt.step, self.params, delta)
            sums = await asyncio.to_thread(self._evaluate, params)
            loss, accuracy = (None, None) if sums is None else (sums.loss, sums.accuracy)
            if (refusal := _refusal(delta, params, loss)) is not None:
                _restore(run, before)
                log.error("round %d refused: %s; the model stays at version %d", round_, refusal, self.model_version)
                return None
            # One release, one charge, stored in the transaction below with the model.
            privacy = run.privacy.charge() if run.privacy is not None else None
            self._phase.to(RoundState.BROADCASTING)
            step = self.chain.prepare(params, round_, run.config.downlink, downlink_rng(self._seed, round_))
            record = RoundRecord(
                round_, run.id, round_, accuracy, loss, participants, bytes_up, bytes_down, time.monotonic() - started, time.time(),
                eval_source=None if self._test is None else "server", funnel=funnel, privacy=privacy,
                class_accuracy=None if sums is None else sums.per_class_accuracy() or None,
            )
            states = {name: c.state() for name, c in run.components.items()}
            stopped = await _uninterrupted(asyncio.to_thread(self.store.commit_round, record, params, states, self.fence))
        except BaseException:
            _restore(run, before)
            raise
        # Committed: the live model follows at once, with no await in between.
        self.chain.advance(step)
        self.params, self.model_version = params, round_
        run.rounds_done += 1
        self.history.append(record)
        self.announce()
        self.committed(len(self.history) - 1)
        log.info("round %d committed: %d update(s), accuracy %s, loss %s", round_, participants, accuracy, loss)
        if stopped:
            raise asyncio.CancelledError
        return record

    async def count_bytes_down(self, index: int, nbytes: int) -> None:
        """Add ``nbytes`` sent after the commit of history entry ``index`` (notices, models)."""
        record = self.history[index]
        record = self.history[index] = replace(record, bytes_down=record.bytes_down + nbytes)
        await asyncio.to_thread(self.store.set_bytes_down, record.round, record.bytes_down)

    def announce(self, commit: bool = True) -> None:
        """Tell every volunteer, paced, of a ``commit`` (its ``model_notice``, in its round's
        bytes_down), or of the status now (a run's start or end)."""
        fields = {**self.status_fields(), **self.notice_fields()} if commit else self.status_fields()
        kind = "model_notice" if commit else "status"
        self.announcer.announce(Announcement(self.model_version, len(self.history), fields, kind))

    def notice_fields(self) -> dict:
        """What every volunteer hears of a commit: the version, its digest and where to fetch it."""
        return {"model_version": self.chain.version, "digest": self.chain.digest, "url": model_url(self.chain.digest)}

    def _evaluate(self, params: np.ndarray) -> EvalSums | None:
        """Loss, accuracy and per-class counts on the server's held-out data; None without any."""
        if self._test is None:
            return None
        with np.errstate(all="ignore"):  # overflow shows up as a non-finite loss, refused above
            # Batches of 1,000, as ``model.evaluate``: the same sums to the last bit.
            return evaluation_sums(self.model, params, *self._test, self.task.num_classes, batch=1000)


def _refusal(delta: np.ndarray, params: np.ndarray, loss: float | None) -> str | None:
    if not np.isfinite(delta).all():
        return "the aggregate holds NaN or Inf"
    if not np.isfinite(params).all() or float(np.abs(params).max()) > MAX_PARAM_ABS:
        return f"the step would move a parameter beyond {MAX_PARAM_ABS:g} (an exploding aggregate)"
    if loss is not None and not math.isfinite(loss):
        return f"the new model evaluates to a loss of {loss}"
    return None


def _restore(run: Run, states: dict[str, dict]) -> None:
    for name, state in states.items():
        run.components[name].load_state(state)


async def _uninterrupted(aw) -> bool:
    """Await ``aw`` to its end even if the run is stopped meanwhile; True if it was.

    A transaction that commits in its thread must be followed by the live model, so the
    caller adopts the commit first and only then honours the stop."""
    fut = asyncio.ensure_future(aw)
    cancelled = False
    while True:
        try:
            await asyncio.shield(fut)
            break
        except asyncio.CancelledError:
            if fut.cancelled():
                raise
            cancelled = True
    return cancelled
