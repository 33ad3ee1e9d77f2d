"""The round engine: the public face of the round, its run lifecycle, and the wiring.

The round is in parts (``server/rounds/``), one concept a module: ``config`` (typed run
settings), ``state`` (``RoundState``), ``peers`` (``PeerState``), ``selection`` (who
trains, pace steering), ``tasks`` (tasks, tokens, does an update match a task),
``validation`` (verdicts), ``commit`` (the global model and its all-or-nothing commit),
``status``, and one module per run mode behind ``mode.RunMode``: ``sync`` (rounds with a
barrier) and ``fedbuff`` (buffered asynchronous). The engine builds those services,
starts, resumes and stops runs, and is what ``sockets`` and ``admin`` call.

A run interrupted by a crash is resumed at start-up (``resume``) from its stored config,
its count of committed rounds and its components' states as of the last commit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

import numpy as np

from ..core.data import Dataset
from ..core.protocol import CLOSE_TRY_LATER, Message, ProtocolError, encode
from ..core.tasks import Task
from .coordinator import Coordinator, TaskChannel
from .rounds.commit import CommitPipeline, Run
from .rounds.config import RunConfig
from .rounds.evaluation import EvaluationCohort, FederatedEvaluation
from .rounds.fedbuff import FedBuff
from .rounds.funnel import RoundStats
from .rounds.statistics import FeatureStatistics
from .rounds.mode import RunMode, Services
from .rounds.peers import Peer, PeerState, Peers
from .rounds.selection import Selection
from .rounds.shares import Share, Sharing
from .rounds.state import Phase, RoundState
from .rounds.status import status, status_fields, status_frame
from .rounds.secagg import SecAggRounds
from .rounds.sync import SyncRounds
from .rounds.tasks import TaskBook
from .rounds.validation import REASONS, Rejections, Verdict
from .security import TaskTokens
from .store import Fenced, RoundRecord, Store

__all__ = ["MODES", "NotLeader", "PeerState", "RoundEngine", "RoundState", "RunActive", "RunConfig", "Verdict"]

log = logging.getLogger("webfl.engine")

MODES: dict[str, type[RunMode]] = {m.name: m for m in (SyncRounds, FedBuff, SecAggRounds)}


def mode_of(config: RunConfig) -> type[RunMode]:
    """The run mode: secure aggregation's stages for a sync run with ``secagg``, else ``config.mode``."""
    return SecAggRounds if config.secagg is not None else MODES[config.mode]


class RunActive(RuntimeError):
    """A run is already in progress."""


class NotLeader(RuntimeError):
    """This cluster member is not the leader: only the leader runs rounds."""


class ClusterView(Protocol):
    def describe(self) -> dict:
        """The status's ``cluster`` field: this member, the leader, every member."""

    def leader_status(self, task: str) -> dict | None:
        """On a follower: the leader's latest status of ``task``, if it published one."""

    async def publish_status(self, engine: RoundEngine) -> None:
        """On the leader: make ``engine``'s status the one every member answers, now."""


#: The states in which a round's own work is under way (``SELECTING`` too, unless it waits).
IN_FLIGHT = frozenset({RoundState.TRAINING, RoundState.AGGREGATING, RoundState.BROADCASTING})


class RoundEngine:
    def __init__(self, task: Task, store: Store, coordinator: Coordinator, test: Dataset | None, seed: int = 0) -> None:
        """``test``: the server's held-out data for ``task``, if it has any."""
        self.task, self.seed = task, seed
        self.store = store.scoped(task.name, task.model)
        self.model = task.build_model()
        self.phase = Phase()
        self.peers = Peers(self.phase)
        # Broadcasts reach this task's volunteers only: other tasks may share the connections.
        self.coordinator = coordinator = TaskChannel(coordinator, lambda: [peer.id for peer in self.peers])
        self.rejections = Rejections()
        self.stats = RoundStats()
        self.tokens = TaskTokens(store.secret("task_tokens"))  # shared: any member checks what another issued
        self.commits = CommitPipeline(
            task, self.model, self.store, coordinator, self.phase, test, seed, self.status_fields, lambda: [p.id for p in self.peers],
            committed=self._committed, busy=lambda: self.busy(),
        )
        self.selection = Selection(self.peers, self.phase, coordinator, seed, lambda: [r.duration_s for r in self.commits.history])
        self.tasks = TaskBook(self.peers, coordinator, self.tokens, self.commits.chain)
        self.evaluation = FederatedEvaluation(self.commits, self.store, task.num_classes)
        self.cohort = EvaluationCohort(self.peers, self.tasks.catch_up, coordinator, self.commits.count_bytes_down)
        self.statistics = FeatureStatistics(task.num_features)
        self.services = Services(self.phase, self.peers, self.selection, self.tasks, self.commits, self.rejections, self.stats, seed, coordinator,
                                 Sharing())
        self.run: Run | None = None
        self._ended: str | None = None  # why self.run ended (protocol.RUN_ENDS); None while it runs
        self._mode: RunMode | None = None
        self._runner: asyncio.Task | None = None
        #: The leader-only switch: a cluster follower holds the task but runs nothing.
        self.leading = True
        #: Called with this engine after every commit is announced (the cluster shares the model).
        self.on_commit: list[Callable[[RoundEngine], None]] = []
        #: What ``status()`` says of the cluster (``cluster.member``); None: one process.
        self.cluster: ClusterView | None = None
        self._stepping_down = False
        #: Whether announcements hold back: a round in flight on this process. Its own by
        #: default; a ``TaskSet`` makes it any of its tasks', since they share one event loop.
        self.busy: Callable[[], bool] = self.round_in_flight
        log.info("global model %s/%s at version %d, %d rounds in history", task.name, task.model, self.model_version, len(self.history))

    # -- the global model ---------------------------------------------------------------

    @property
    def state(self) -> RoundState:
        return self.phase.state

    @property
    def params(self) -> np.ndarray:
        return self.commits.params

    @property
    def model_version(self) -> int:
        return self.commits.model_version

    @property
    def history(self) -> list[RoundRecord]:
        return self.commits.history

    @property
    def evaluates_on_server(self) -> bool:
        """Rounds are evaluated on the server's own data: volunteers need not report."""
        return self.commits.evaluates_on_server

    def model_frame(self) -> bytes:
        """A frame that gives any volunteer the model volunteers hold (see core/downlink.py)."""
        return self.commits.chain.full_frame()

    def model_frames_for(self, version: int | None, model_digest: str | None) -> list[bytes]:
        """What a volunteer holding ``version`` needs: a delta chain or the full model."""
        return self.commits.chain.frames_for(version, model_digest)

    def welcome_frames(self, peer_id: str, version: int | None, model_digest: str | None) -> list[bytes]:
        """What the connected ``peer_id``, which says in ``hello`` it holds ``version``, needs
        now; the engine counts it as holding the current model from here on."""
        peer = self.peers.get(peer_id)
        if peer is None:
            raise KeyError(f"volunteer {peer_id} is not connected")
        peer.model_version, peer.model_digest = version, model_digest
        return self.tasks.catch_up(peer)

    # -- volunteers ---------------------------------------------------------------------

    def connect(self, peer_id: str, agent: str, address: str, codecs: list) -> Peer:
        """Register a connection; ``peer_id`` may be a resumed one (see ``sockets``), never a live one.

        A resumed volunteer starts afresh (CONNECTED): it lost its task with the old
        connection, so the open round does not wait for it, though an update it computed
        before is still accepted while its task is open (tasks are kept by volunteer id).
        """
        peer = self.peers.add(peer_id, agent, address, codecs)
        log.info("volunteer %s %s from %s (%s)", peer_id, "resumed" if self.tasks.holds(peer_id) else "connected", address, agent)
        return peer

    def disconnect(self, peer_id: str) -> None:
        self.peers.remove(peer_id)
        self.statistics.forget(peer_id)

    def ready(self, peer_id: str, num_examples: int) -> None:
        self.peers.ready(peer_id, num_examples, asyncio.get_running_loop().time())
        peer = self.peers.get(peer_id)
        if peer is not None and peer.state is PeerState.READY and not self.commits.evaluates_on_server:
            self.cohort.offer(peer)

    def pause(self, peer_id: str) -> None:
        peer = self.peers.get(peer_id)
        if peer is not None:
            self.peers.to(peer, PeerState.PAUSED)

    def count(self, state: PeerState) -> int:
        return self.peers.count(state)

    async def submit(self, peer_id: str, msg: Message, nbytes: int) -> Verdict:
        """The verdict on one ``update`` (folded in if accepted); every rejection is counted once."""
        if self._mode is not None:
            verdict = self._mode.submit(peer_id, msg, nbytes)
        else:
            verdict = self.tasks.match(peer_id, msg)  # no run: no task, so always a rejection
            assert isinstance(verdict, Verdict)
        if not verdict.accepted:
            self.rejections.add(verdict.kind or "malformed")
        return verdict

    def merge_share(self, share: Share) -> str | None:
        """Merge a cluster follower's share of the open round (``rounds.shares``); why it was refused, or None."""
        if self._mode is None:
            return "no run is in progress"
        return self._mode.merge_share(share)

    def refused_elsewhere(self, peer_id: str, round_: int, kind: str) -> None:
        """A cluster follower refused an update of ``peer_id`` at its edge: the open round's funnel counts it."""
        if self._mode is not None:
            self._mode.refused_elsewhere(peer_id, round_, kind if kind in REASONS else "malformed")

    async def secagg(self, peer_id: str, msg: Message, nbytes: int) -> ProtocolError | None:
        """One secure-aggregation frame (``sa_*``); why it is refused (the socket closes with it), or None."""
        if self._mode is None:
            refused = ProtocolError(f"{msg.type}: no run is in progress", CLOSE_TRY_LATER)
        else:
            refused = await self._mode.secagg_frame(peer_id, msg, nbytes)
        if refused is not None:
            self.rejections.add("secagg")
        return refused

    def report_evaluation(self, peer_id: str, msg: Message) -> str | None:
        """Fold in an ``eval`` report on a committed model; the reason it was refused, or None."""
        reason = self.evaluation.report(peer_id, msg)
        if reason is not None:
            self.rejections.add("eval")
            log.info("evaluation report from %s refused: %s", peer_id, reason)
        return reason

    def report_statistics(self, peer_id: str, msg: Message) -> str | None:
        """Keep a volunteer's feature statistics while the task's scaling is unmeasured."""
        reason = "the task's scaling is fixed already" if not self.task.needs_statistics else self.statistics.report(peer_id, msg)
        if reason is not None:
            self.rejections.add("stats")
            log.info("feature statistics from %s refused: %s", peer_id, reason)
        return reason

    async def _measure(self, config: RunConfig) -> None:
        """Before round 1 of a task without scaling: wait for ``clients_per_round``
        volunteers' feature statistics (or, after ``select_timeout_s``, ``min_updates``),
        then fix the scaling, store the definition and send it to the task's volunteers."""
        loop = asyncio.get_running_loop()
        since = loop.time()
        while not (
            len(self.statistics) >= config.clients_per_round
            or (len(self.statistics) >= max(1, config.min_updates) and loop.time() - since >= config.select_timeout_s)
        ):
            await asyncio.sleep(0.1)
        await self.adopt(self.statistics.scaled(self.task))
        log.info("task %s: scaling fixed from %d volunteers' feature statistics", self.task.name, len(self.statistics))

    async def adopt(self, task: Task) -> None:
        """Take ``task`` as this task's definition (same name and model size: its scaling
        was fixed, or the operator changed what the model does not depend on), keep it in
        the store and send it to the task's volunteers."""
        assert task.name == self.task.name and task.model == self.task.model, "a new model needs a new engine"
        self.task = self.commits.task = task
        self.model = self.commits.model = task.build_model()
        self.store.save_definition(task.to_json())
        await self.coordinator.publish(encode(Message("definition", {"task": task.to_dict()})))

    # -- runs ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._runner is not None and not self._runner.done()

    def start(self, config: RunConfig) -> int:
        """Launch a run; ``ValueError`` if its rule could not hold a round in memory, or
        cannot defend rounds of this size (a trimmed mean that trims nothing, Multi-Krum
        with more attackers than a round can outvote)."""
        if not self.leading:
            raise NotLeader("this cluster member is not the leader; only the leader starts runs")
        if self.running:
            raise RunActive(f"run {self.run.id if self.run else '?'} is still in progress; stop it first")
        # One rule object for the whole run: adaptive rules learn from earlier rounds.
        rule = config.rule()
        mode = mode_of(config)
        rule.check_memory(self.model.size, mode.max_updates(config))
        rule.check_cohort(*mode.cohort(config))
        past = self._privacy_states()
        run_id = self.store.start_run(config.to_dict())
        log.info("run %d started: %s", run_id, config.to_dict())
        self._launch(Run(run_id, config, rule, config.optimizer(), self.model.size, past_privacy=past))
        return run_id

    def resume(self) -> int | None:
        """Resume the run a crash or restart interrupted (older ones are marked interrupted).

        It continues from its stored config, its count of committed rounds and the state
        each component had at the last commit; the round that was open is re-run.
        """
        runs = self.store.interrupted_runs()
        for run_id in runs[:-1]:
            self.store.end_run(run_id, "interrupted")
        if not runs:
            return None
        run_id = runs[-1]
        try:
            config = RunConfig.from_json(self.store.run_config(run_id))
            rule = config.rule()
            run = Run(run_id, config, rule, config.optimizer(), self.model.size, self.store.rounds_in_run(run_id), self._privacy_states(before=run_id))
            loaded = set()
            for name, (version, state) in self.store.component_states(run_id).items():
                if name in run.components and version == self.model_version:
                    run.components[name].load_state(state)
                    loaded.add(name)
            if run.privacy is not None and run.rounds_done and "privacy" not in loaded:
                # Starting the accountant afresh would under-count the rounds already released.
                raise ValueError("its privacy accountant is not checkpointed with the last commit, so its epsilon is unknown")
        except (ValueError, KeyError) as exc:
            log.error("run %d cannot be resumed (%s); marked interrupted", run_id, exc)
            self.store.end_run(run_id, "interrupted")
            return None
        log.info("resuming run %d after %d committed round(s) of %d", run_id, run.rounds_done, config.rounds)
        self._launch(run)
        return run_id

    def _privacy_states(self, before: int | None = None) -> list[dict]:
        """The accountant states of this task's earlier runs (before run ``before``): its privacy total."""
        states = []
        for r in self.store.runs():
            if before is None or r["id"] < before:
                stored = self.store.component_states(r["id"]).get("privacy")
                if stored is not None:
                    states.append(stored[1])
        return states

    def _launch(self, run: Run) -> None:
        self.run, self._ended = run, None
        self._runner = asyncio.create_task(self._drive(run), name=f"run-{run.id}")

    async def stop(self) -> bool:
        """Stop the current run; the open round (if any) is abandoned."""
        if not self.running:
            return False
        assert self._runner is not None
        self._runner.cancel()
        # wait(), not ``await runner`` in a try: catching the runner's CancelledError there
        # would also swallow a cancellation of the caller (a cluster member shutting down).
        await asyncio.wait([self._runner])
        return True

    async def step_down(self) -> None:
        """Leave the run to the cluster's next leader: cancel it without recording an end
        (it stays ``running`` in the store, so the next leader resumes it), and stop the
        announcements and evaluations."""
        self.leading, self._stepping_down = False, True
        await self.close()

    async def close(self) -> None:
        """Stop the run, the announcements and the models sent for evaluation (before the store closes)."""
        await self.stop()
        await self.commits.announcer.close()
        await self.cohort.close()

    def round_in_flight(self) -> bool:
        """A round's own work is under way: its cohort and tasks going out, updates due, the
        fold, the commit. Announcements then hold back (``busy``); a selection that waits
        for volunteers to be ready is not such work."""
        state = self.phase.state
        return state in IN_FLIGHT or (state is RoundState.SELECTING and self.selection.waiting is None)

    def _committed(self, index: int) -> None:
        # Without data of its own, the server learns how good the new model is only from
        # the volunteers' holdouts: a few ready ones get it to evaluate.
        if not self.commits.evaluates_on_server:
            self.cohort.send(index, self.commits.model_version)
        for listener in self.on_commit:
            listener(self)

    async def _drive(self, run: Run) -> None:
        status_ = "failed"
        self._mode = mode_of(run.config)(self.services, run)
        try:
            if run.privacy is not None:
                # A dp run's guarantee is stated before any of its tasks: at once, to everyone.
                await self.coordinator.publish(self.status_frame())
            else:
                # Otherwise its start is progress, as a commit is: paced, one notice a
                # volunteer, so that round 1's tasks do not wait behind 10,000 sends.
                self.commits.announce(commit=False)
            if self.task.needs_statistics:
                await self._measure(run.config)
            await self._mode.drive()
            status_ = "completed"
        except asyncio.CancelledError:
            status_ = "stopped"
            raise
        except Fenced as exc:
            # A newer leader owns the run now: this one must not write another thing.
            log.error("run %d: commit refused by the fence (%s); stepping down", run.id, exc)
            self.leading, self._stepping_down = False, True
        except Exception:
            log.exception("run %d failed", run.id)
        finally:
            self._mode = None
            self.phase.to(RoundState.IDLE)
            if self._stepping_down:
                log.info("run %d left to the next leader after %d round(s)", run.id, run.rounds_done)
            else:
                self.store.end_run(run.id, status_)
                # Volunteers see the run's end, and why: one that completed short of its rounds
                # stopped at its privacy budget (Run.finished).
                self._ended = "max_epsilon" if status_ == "completed" and run.rounds_done < run.config.rounds else status_
                # Paced too, one small frame a volunteer (the history since the last notice
                # that reached everyone: none), as a run's start: sent at once, the full status
                # to 10,000 sockets held the loop (``/api/status``) for 0.3-0.5 s. After the
                # last commit's pass, whose status (made at the commit, without the end) would
                # otherwise take over and hide it; the run ends once everyone was told.
                await self.commits.announcer.idle()
                self.commits.announce(commit=False)
                await self.commits.announcer.idle()
                log.info("run %d %s after %d round(s)", run.id, status_, run.rounds_done)

    # -- reporting ----------------------------------------------------------------------

    def status_fields(self) -> dict:
        """The volunteers' status but its history (a commit's notice carries it)."""
        return status_fields(self.phase, self.peers, self.commits, self._mode, self.run, self._ended)

    def status_frame(self) -> bytes:
        return status_frame(self.phase, self.peers, self.commits, self._mode, self.run, self._ended)

    def status(self) -> dict:
        if self.cluster is None:
            return self._status()
        snapshot = None if self.leading else self.cluster.leader_status(self.task.name)
        return {**(snapshot or self._status()), "cluster": self.cluster.describe()}

    def _status(self) -> dict:
        return status(self.task, self.phase, self.peers, self.commits, self.selection, self.rejections, self.stats, self.run, self.running, self._mode)
