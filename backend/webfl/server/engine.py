"""The round engine: an explicit state machine over federated rounds.

::

    IDLE --start()--> SELECTING --enough ready volunteers--> TRAINING
      ^                  ^                                      |
      |                  +--- too few updates by deadline ------+ (abandoned: model unchanged, retried)
      |                                                         v
      +---- last round / stop() ---- BROADCASTING <------- AGGREGATING

Updates are folded into the round's aggregator as they arrive and then dropped;
a commit steps the run's server optimizer with the aggregate, evaluates on the
held-out split, stores the round, checkpoint and optimizer state in one
transaction, and only then broadcasts the new model to every connected volunteer.

``"mode": "fedbuff"`` runs replace the round loop with ``fedbuff.FedBuff`` (no round
barrier); both modes share ``_commit``. A run interrupted by a crash is resumed at
start-up (``resume``) from its stored config and its count of committed rounds.
Surplus ready volunteers get a ``wait`` (pace steering, see ``pacing``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from dataclasses import dataclass, field, fields, replace
from enum import Enum

import numpy as np

from ..core.aggregation import Aggregator, get_aggregator
from ..core.codecs import CodecError, Encoded, get_codec
from ..core.data import Dataset, features
from ..core.downlink import ModelChain, parse_downlink
from ..core.protocol import Message, encode
from ..core.server_opt import ServerOptimizer, get_server_opt
from ..core.tasks import Task
from . import pacing
from .coordinator import Coordinator, RoundInfo
from .crashpoints import crashpoint
from .security import TaskTokens
from .store import RoundRecord, Store
from .validation import Rejections, classify_update_error, parse_norm_bound

__all__ = ["PeerState", "RoundEngine", "RoundState", "RunActive", "RunConfig", "Verdict"]

log = logging.getLogger("webfl.engine")

MAX_EXAMPLES_PER_UPDATE = 10_000_000


class RoundState(str, Enum):
    IDLE = "idle"
    SELECTING = "selecting"
    TRAINING = "training"
    AGGREGATING = "aggregating"
    BROADCASTING = "broadcasting"


class PeerState(str, Enum):
    """The server's view of one connected volunteer."""

    CONNECTED = "connected"  # said hello; no model or no data yet
    READY = "ready"  # can be selected
    TRAINING = "training"  # selected; busy until it reports ready again
    PAUSED = "paused"
    WAITING = "waiting"  # told to come back later (pace steering); ready again at wait_until


class RunActive(RuntimeError):
    """A run is already in progress."""


@dataclass(frozen=True)
class RunConfig:
    """The settings of one run of rounds (``POST /api/rounds``)."""

    rounds: int = 1
    clients_per_round: int = 10
    local_epochs: int = 2
    batch_size: int = 32
    lr: float = 0.1
    deadline_s: float = 60.0
    min_updates: int = 1
    #: Select this many times ``clients_per_round`` and close the round at
    #: ``clients_per_round`` updates, so stragglers and drop-outs don't hold it up.
    over_selection: float = 1.0
    #: How long to wait for ``clients_per_round * over_selection`` ready volunteers
    #: before starting with fewer (but at least ``min_updates``).
    select_timeout_s: float = 5.0
    codec: str = "none"
    #: How the global model reaches volunteers: none | fp16 | delta:SPEC (core/downlink.py).
    downlink: str = "none"
    aggregator: str = "fedavg"
    #: Reject updates by L2 norm: "none" (or null), "C" (fixed) or "x=K" (K x recent median).
    norm_bound: str = "none"
    #: ``sync`` (rounds with a barrier) or ``fedbuff`` (buffered asynchronous).
    mode: str = "sync"
    #: Server optimizer on the aggregated delta (``core.server_opt``).
    server_opt: str = "fedavg"
    #: FedProx proximal term for the volunteers' local training.
    prox_mu: float = 0.0
    #: FedBuff: commit every ``buffer_size`` accepted updates.
    buffer_size: int = 10
    #: FedBuff: refuse updates more than this many model versions old.
    max_staleness: int = 10
    #: FedBuff: an update ``s`` versions stale weighs ``(1 + s) ** -staleness_exponent``.
    staleness_exponent: float = 0.5
    #: Pace steering: the longest "come back in" delay; 0 turns pace steering off.
    max_wait_s: float = 30.0

    _LIMITS = {
        "rounds": (1, 100_000),
        "clients_per_round": (1, 100_000),
        "local_epochs": (1, 100),
        "batch_size": (1, 10_000),
        "lr": (1e-6, 10.0),
        "deadline_s": (0.1, 86_400.0),
        "min_updates": (1, 100_000),
        "over_selection": (1.0, 10.0),
        "select_timeout_s": (0.0, 86_400.0),
        "prox_mu": (0.0, 100.0),
        "buffer_size": (1, 100_000),
        "max_staleness": (0, 1_000_000),
        "staleness_exponent": (0.0, 10.0),
        "max_wait_s": (0.0, 3_600.0),
    }

    @classmethod
    def from_json(cls, data: object) -> RunConfig:
        """Validate an admin request body; ``ValueError`` says what is wrong."""
        if not isinstance(data, dict):
            raise ValueError("body must be a JSON object")
        known = {f.name: f for f in fields(cls)}
        unknown = data.keys() - known.keys()
        if unknown:
            raise ValueError(f"unknown field(s): {', '.join(sorted(unknown))}")
        values = {}
        if "norm_bound" in data and data["norm_bound"] is None:
            data = {**data, "norm_bound": "none"}
        for name, value in data.items():
            kind = type(getattr(cls, name))
            if kind is str:
                if not isinstance(value, str):
                    raise ValueError(f"{name} must be a string")
            elif isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
                raise ValueError(f"{name} must be {'an integer' if kind is int else 'a number'}")
            else:
                lo, hi = cls._LIMITS[name]
                if not lo <= value <= hi:
                    raise ValueError(f"{name} must be between {lo} and {hi}")
                value = kind(value)
            values[name] = value
        config = cls(**values)
        if config.min_updates > config.clients_per_round:
            raise ValueError("min_updates cannot exceed clients_per_round")
        if config.mode not in ("sync", "fedbuff"):
            raise ValueError("mode must be 'sync' or 'fedbuff'")
        config.rule()
        get_server_opt(config.server_opt)
        return replace(config, codec=get_codec(config.codec).spec, downlink=parse_downlink(config.downlink))

    def rule(self) -> Aggregator:
        """A new aggregation rule for this run, with its norm bound; ``ValueError`` if either is bad."""
        return get_aggregator(self.aggregator, bound=parse_norm_bound(self.norm_bound))

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class Peer:
    id: str
    agent: str
    address: str
    state: PeerState = PeerState.CONNECTED
    num_examples: int = 0
    connected_at: float = field(default_factory=time.time)
    #: Codec stages the volunteer advertised in ``hello``; None: not said (all assumed).
    codecs: frozenset[str] | None = None
    refused_codecs: set[str] = field(default_factory=set, repr=False)  # logged once each
    wait_until: float = 0.0  # loop time, while WAITING


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    reason: str | None = None
    #: Short key of the rejection, counted in ``status()["rejections"]`` (see ``validation.REASONS``).
    kind: str | None = None


def add_update(aggregator: Aggregator, codec: str, enc: Encoded, weight: float) -> Verdict | None:
    """Fold one update into ``aggregator`` (which is unchanged if it refuses); ``None`` if it took it."""
    try:
        aggregator.add(get_codec(codec), enc, weight)
    except (CodecError, ValueError) as exc:
        return Verdict(False, f"invalid update: {exc}", classify_update_error(exc))
    return None


@dataclass
class _OpenRound:
    info: RoundInfo
    aggregator: Aggregator
    started: float
    submitted: set[str] = field(default_factory=set)
    bytes_up: int = 0
    bytes_down: int = 0
    closed: bool = False


class RoundEngine:
    def __init__(self, task: Task, store: Store, coordinator: Coordinator, test: Dataset, seed: int = 0) -> None:
        self.task, self.store, self.coordinator = task, store, coordinator
        self.model = task.build_model()
        self._test_x, self._test_y = features(test.x), test.y
        self.seed = seed
        self.peers: dict[str, Peer] = {}
        self.state = RoundState.IDLE
        self.run_id: int | None = None
        self.run_config: RunConfig | None = None
        self.run_rounds_done = 0
        self._open: _OpenRound | None = None
        self._changed = asyncio.Event()
        self._runner: asyncio.Task | None = None
        self._server_opt: ServerOptimizer | None = None
        self._fedbuff = None  # the FedBuff driver while a fedbuff run is on
        self._pace_rng = random.Random(seed)
        self.waits_sent = 0
        self.rejections = Rejections()
        self.tokens = TaskTokens()
        checkpoint = store.latest_checkpoint(task.name, task.model)
        if checkpoint is None:
            self.model_version, self.params = 0, self.model.init(seed)
            store.save_checkpoint(0, task.name, task.model, self.params)
        else:
            self.model_version, self.params = checkpoint
        self.history = store.history()
        self._chain = ModelChain(self.params, self.model_version)
        log.info("global model %s/%s at version %d, %d rounds in history", task.name, task.model, self.model_version, len(self.history))

    # -- state machine ------------------------------------------------------------

    def _to(self, new: RoundState) -> None:
        if new is not self.state:
            log.info("round engine: %s -> %s", self.state.value, new.value)
            self.state = new
            self._changed.set()

    def _peer_to(self, peer: Peer, new: PeerState) -> None:
        if new is not peer.state:
            log.info("volunteer %s: %s -> %s", peer.id, peer.state.value, new.value)
            peer.state = new
            self._changed.set()

    async def _wait_change(self, timeout: float) -> None:
        self._changed.clear()
        try:
            await asyncio.wait_for(self._changed.wait(), max(timeout, 0.0))
        except TimeoutError:
            pass

    # -- volunteers -----------------------------------------------------------------

    def connect(self, peer_id: str, agent: str, address: str, codecs: list | None = None) -> Peer:
        """Register a connection; ``peer_id`` may be a resumed one (see ``sockets``), never a live one.

        A resumed volunteer starts afresh (CONNECTED): it lost its task with the old
        connection, so the open round does not wait for it, though an update it computed
        before is still accepted while the round is open (the round lists it by id).
        """
        if peer_id in self.peers:
            raise ValueError(f"volunteer {peer_id} is already connected")
        advertised = None if codecs is None else frozenset(c for c in codecs if isinstance(c, str))
        peer = self.peers[peer_id] = Peer(peer_id, agent, address, codecs=advertised)
        selected = self._open is not None and peer_id in self._open.info.selected
        log.info("volunteer %s %s from %s (%s)", peer_id, "resumed" if selected else "connected", address, agent)
        self._changed.set()
        return peer

    def disconnect(self, peer_id: str) -> None:
        if self.peers.pop(peer_id, None) is not None:
            log.info("volunteer %s disconnected", peer_id)
            self._changed.set()

    def ready(self, peer_id: str, num_examples: int) -> None:
        peer = self.peers[peer_id]
        peer.num_examples = num_examples
        if peer.state is PeerState.WAITING and asyncio.get_running_loop().time() < peer.wait_until:
            return
        self._peer_to(peer, PeerState.READY)

    def pause(self, peer_id: str) -> None:
        self._peer_to(self.peers[peer_id], PeerState.PAUSED)

    def count(self, state: PeerState) -> int:
        return sum(p.state is state for p in self.peers.values())

    async def submit(self, peer_id: str, msg: Message, nbytes: int) -> Verdict:
        """Validate one ``update`` and fold it into the open round (or FedBuff's buffer).

        Rejections are counted per reason in both run modes.
        """
        if self._fedbuff is not None:
            verdict = self._fedbuff.submit(peer_id, msg, nbytes)
        else:
            verdict = self._submit(peer_id, msg, nbytes)
        if not verdict.accepted:
            self.rejections.add(verdict.kind or "malformed")
        return verdict

    def _submit(self, peer_id: str, msg: Message, nbytes: int) -> Verdict:
        open_ = self._open
        round_ = msg["round"]
        if open_ is None or open_.closed or round_ != open_.info.round:
            current = f"round {open_.info.round} is open" if open_ and not open_.closed else "no round is open"
            return Verdict(False, f"round {round_} is not open for updates ({current})", "round")
        if peer_id not in open_.info.selected:
            return Verdict(False, f"not selected for round {round_}", "not_selected")
        if peer_id in open_.submitted:
            return Verdict(False, f"duplicate update for round {round_}", "duplicate")
        if msg["model_version"] != open_.info.model_version:
            return Verdict(False, f"update is based on model {msg['model_version']}, round {round_} trains model {open_.info.model_version}", "model_version")
        refused = self.check_update(peer_id, msg, open_.info.codec) or add_update(
            open_.aggregator, open_.info.codec, Encoded(msg["codec_params"], msg.arrays), float(msg["num_examples"])
        )
        if refused is not None:
            return refused
        open_.submitted.add(peer_id)
        open_.bytes_up += nbytes
        log.info("round %d: update %d/%d from %s accepted", round_, len(open_.submitted), len(open_.info.selected), peer_id)
        crashpoint("training", round_)
        self._changed.set()
        return Verdict(True)

    def check_update(self, peer_id: str, msg: Message, codec: str) -> Verdict | None:
        """The checks both run modes make on an update for its task; ``None`` if it passes.

        The caller has matched ``round``/``model_version`` to the volunteer's task, so the
        token proves the update answers that task on this very connection.
        """
        if not self.tokens.check(peer_id, msg["round"], msg["model_version"], msg["token"]):
            return Verdict(False, "the session token does not match this connection's task", "token")
        if msg["codec"] != codec:
            return Verdict(False, f"this round uses codec {codec!r}, not {msg['codec']!r}", "codec")
        if not 0 < msg["num_examples"] <= MAX_EXAMPLES_PER_UPDATE:
            return Verdict(False, f"num_examples must be in 1..{MAX_EXAMPLES_PER_UPDATE}", "num_examples")
        return None

    # -- pace steering ------------------------------------------------------------------

    def _wake_waiting(self) -> None:
        now = asyncio.get_running_loop().time()
        for peer in self.peers.values():
            if peer.state is PeerState.WAITING and now >= peer.wait_until:
                self._peer_to(peer, PeerState.READY)

    async def _steer(self, peer_ids: list[str], needed: int, config: RunConfig, reason: str) -> None:
        """Tell ``peer_ids`` (ready, surplus) to come back later, sized to the load."""
        if config.max_wait_s <= 0 or not peer_ids:
            return
        ready = self.count(PeerState.READY) + self.count(PeerState.WAITING)
        round_s = pacing.round_duration([r.duration_s for r in self.history], min(config.deadline_s, 10.0))
        now = asyncio.get_running_loop().time()
        for peer_id in peer_ids:
            t = pacing.retry_after(ready, needed, round_s, config.max_wait_s, self._pace_rng)
            if await self.coordinator.publish(encode(Message("wait", {"retry_after_s": t, "reason": reason})), to=[peer_id]):
                peer = self.peers[peer_id]
                peer.wait_until = now + t
                self._peer_to(peer, PeerState.WAITING)
                self.waits_sent += 1
        log.info("pace steering: %d volunteer(s) told to come back later (%s)", len(peer_ids), reason)

    # -- frames -------------------------------------------------------------------------

    def model_frame(self) -> bytes:
        """A frame that gives any volunteer the model volunteers hold (see core/downlink.py)."""
        return self._chain.full_frame()

    def model_frames_for(self, version: int | None, model_digest: str | None) -> list[bytes]:
        """What a (re)connecting volunteer holding ``version`` needs: a delta chain or the full model."""
        return self._chain.frames_for(version, model_digest)

    def _can_use(self, peer: Peer, codec: str) -> bool:
        needed = get_codec(codec).stages
        if peer.codecs is None or peer.codecs.issuperset(needed):
            return True
        if codec not in peer.refused_codecs:
            peer.refused_codecs.add(codec)
            log.info("volunteer %s not selectable: codec %s needs %s, it supports %s", peer.id, codec, ", ".join(needed), ", ".join(sorted(peer.codecs)))
        return False

    def status_frame(self) -> bytes:
        fields_ = {
            "state": self.state.value,
            "round": self._open.info.round if self._open else self.model_version,
            "model_version": self.model_version,
            "connected": len(self.peers),
            "history": [[r.round, r.accuracy] for r in self.history[-200:]],
            "run": [self.run_rounds_done, self.run_config.rounds] if self.run_config else None,
        }
        return encode(Message("status", fields_))

    # -- runs ----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._runner is not None and not self._runner.done()

    def start(self, config: RunConfig) -> int:
        """Launch a run; ``ValueError`` if its aggregator could not hold a round in memory."""
        if self.running:
            raise RunActive(f"run {self.run_id} is still in progress; stop it first")
        # One rule object for the whole run: adaptive rules learn from earlier rounds.
        aggregator = config.rule()
        aggregator.check_memory(self.model.size, self._max_updates(config))
        run_id = self.store.start_run(config.to_dict())
        log.info("run %d started: %s", run_id, config.to_dict())
        self._launch(config, aggregator, run_id, 0, get_server_opt(config.server_opt))
        return run_id

    @staticmethod
    def _max_updates(config: RunConfig) -> int:
        return config.buffer_size if config.mode == "fedbuff" else math.ceil(config.clients_per_round * config.over_selection)

    def _launch(self, config: RunConfig, aggregator: Aggregator, run_id: int, done: int, opt: ServerOptimizer) -> None:
        self.run_id, self.run_config, self.run_rounds_done, self._server_opt = run_id, config, done, opt
        self._runner = asyncio.create_task(self._run(config, aggregator, run_id), name=f"run-{run_id}")

    def resume(self) -> int | None:
        """Resume the run a crash or restart interrupted (older ones are marked interrupted).

        It continues from its stored config, its count of committed rounds and its
        server optimizer state as of the last commit; the round that was open is re-run.
        """
        runs = self.store.interrupted_runs()
        for run_id in runs[:-1]:
            self.store.end_run(run_id, "interrupted")
        if not runs:
            return None
        run_id = runs[-1]
        try:
            config = RunConfig.from_json(self.store.run_config(run_id))
            aggregator = config.rule()
            opt = get_server_opt(config.server_opt)
            saved = self.store.server_opt_state(run_id)
            if saved is not None and saved[0] == self.model_version:
                opt.load_state(saved[3], self.model.size, saved[2])
        except ValueError as exc:
            log.error("run %d cannot be resumed (%s); marked interrupted", run_id, exc)
            self.store.end_run(run_id, "interrupted")
            return None
        done = self.store.rounds_in_run(run_id)
        log.info("resuming run %d after %d committed round(s) of %d", run_id, done, config.rounds)
        self._launch(config, aggregator, run_id, done, opt)
        return run_id

    async def stop(self) -> bool:
        """Stop the current run; the open round (if any) is abandoned."""
        if not self.running:
            return False
        assert self._runner is not None
        self._runner.cancel()
        try:
            await self._runner
        except asyncio.CancelledError:
            pass
        return True

    async def _run(self, config: RunConfig, aggregator: Aggregator, run_id: int) -> None:
        status = "failed"
        try:
            if config.mode == "fedbuff":
                from .fedbuff import FedBuff

                await FedBuff(self, config, aggregator, run_id).run()
            while self.run_rounds_done < config.rounds:
                if await self._round(config, aggregator, run_id):
                    self.run_rounds_done += 1
                else:
                    await asyncio.sleep(0.5)
            status = "completed"
        except asyncio.CancelledError:
            status = "stopped"
            raise
        except Exception:
            log.exception("run %d failed", run_id)
        finally:
            self._fedbuff = None
            await self._close_round()
            self._to(RoundState.IDLE)
            self.store.end_run(run_id, status)
            await self.coordinator.publish(self.status_frame())  # volunteers see the run's end
            log.info("run %d %s after %d round(s)", run_id, status, self.run_rounds_done)

    async def _select(self, config: RunConfig) -> list[str]:
        target = math.ceil(config.clients_per_round * config.over_selection)
        waited_since = asyncio.get_running_loop().time()
        while True:
            self._wake_waiting()
            ready = sorted(p.id for p in self.peers.values() if p.state is PeerState.READY and self._can_use(p, config.codec))
            waited = asyncio.get_running_loop().time() - waited_since
            if len(ready) >= target or (len(ready) >= config.min_updates and waited >= config.select_timeout_s):
                break
            await self._wait_change(config.select_timeout_s - waited if len(ready) >= config.min_updates else 1.0)
        rng = np.random.default_rng([self.seed, self.model_version, len(self.history)])
        selected = sorted(rng.choice(ready, size=min(target, len(ready)), replace=False).tolist())
        await self._steer(sorted(set(ready) - set(selected)), target, config, "not selected for this round")
        return selected

    async def _round(self, config: RunConfig, aggregator: Aggregator, run_id: int) -> bool:
        """One round; True if it committed, False if it was abandoned."""
        self._to(RoundState.SELECTING)
        selected = await self._select(config)
        loop = asyncio.get_running_loop()
        round_ = self.model_version + 1
        info = RoundInfo(round_, self.model_version, config.codec, loop.time() + config.deadline_s, frozenset(selected))
        aggregator.begin(self.model.size, len(selected))
        open_ = self._open = _OpenRound(info, aggregator, time.monotonic())
        await self.coordinator.set_round(info)
        for i, peer_id in enumerate(selected):
            open_.bytes_down += await self.send_task(peer_id, config, int(np.random.default_rng([self.seed, round_, i]).integers(2**31)))
        log.info("round %d: selected %d volunteer(s) of %d connected", round_, len(selected), len(self.peers))
        self._to(RoundState.TRAINING)
        while True:
            # Only volunteers still training on their task will answer: not one that left,
            # nor one that came back without it (a reloaded tab, see connect()).
            outstanding = {p for p in info.selected - open_.submitted if (peer := self.peers.get(p)) and peer.state is PeerState.TRAINING}
            remaining = info.deadline - loop.time()
            if len(open_.submitted) >= config.clients_per_round or not outstanding or remaining <= 0:
                break
            # Volunteers ready beyond what the next round selects have nothing to do for a while.
            self._wake_waiting()
            ready = sorted(p.id for p in self.peers.values() if p.state is PeerState.READY)
            target = math.ceil(config.clients_per_round * config.over_selection)
            await self._steer(ready[target:], target, config, "enough volunteers are ready")
            await self._wait_change(remaining)
        await self._close_round()
        if aggregator.count < config.min_updates:
            aggregator.abort()
            log.warning("round %d abandoned: %d update(s), %d needed; global model unchanged", round_, aggregator.count, config.min_updates)
            return False
        await self._commit(aggregator, run_id, open_.started, open_.bytes_up, open_.bytes_down)
        return True

    async def send_task(self, peer_id: str, config: RunConfig, seed: int) -> int:
        """Give ``peer_id`` a task on the current model; the frame's size, or 0 if it was not queued."""
        round_ = self.model_version + 1
        task = {
            "round": round_,
            "model_version": self.model_version,
            "deadline_s": config.deadline_s,
            "config": self.train_config(config, seed),
            "codec": config.codec,
            # Bound to this connection, round and model: the update must echo it.
            "token": self.tokens.issue(peer_id, round_, self.model_version),
        }
        frame = encode(Message("task", task))
        if not await self.coordinator.publish(frame, to=[peer_id]):
            return 0
        self._peer_to(self.peers[peer_id], PeerState.TRAINING)
        return len(frame)

    def train_config(self, config: RunConfig, seed: int) -> dict:
        """The ``config`` of a ``task`` message."""
        out = {"epochs": config.local_epochs, "batch_size": config.batch_size, "lr": config.lr, "seed": seed}
        if config.prox_mu:
            out["prox_mu"] = config.prox_mu
        return out

    async def _commit(self, aggregator: Aggregator, run_id: int, started: float, bytes_up: int, bytes_down: int) -> RoundRecord:
        """Aggregate, step the server optimizer, evaluate, store durably, then broadcast.

        Shared by both run modes. Nothing is sent before the transaction commits, so
        no volunteer ever holds a model a crash could take back.
        """
        round_ = self.model_version + 1
        self._to(RoundState.AGGREGATING)
        crashpoint("aggregating", round_)
        participants = aggregator.count
        delta = await asyncio.to_thread(aggregator.finish)
        opt = self._server_opt or get_server_opt("fedavg")
        params = await asyncio.to_thread(opt.step, self.params, delta)
        loss, accuracy = await asyncio.to_thread(self.model.evaluate, params, self._test_x, self._test_y)
        self._to(RoundState.BROADCASTING)
        downlink = self.run_config.downlink if self.run_config else "none"
        frame = self._chain.commit(params, round_, downlink, np.random.default_rng([self.seed, round_, 2]))
        record = RoundRecord(
            round=round_,
            run_id=run_id,
            model_version=round_,
            accuracy=accuracy,
            loss=loss,
            participants=participants,
            bytes_up=bytes_up,
            bytes_down=bytes_down + len(self.peers) * len(frame),
            duration_s=time.monotonic() - started,
            committed_at=time.time(),
        )
        opt_state = (opt.spec, opt.steps, opt.state())
        await asyncio.to_thread(self.store.commit_round, record, self.task.name, self.task.model, params, opt_state)
        self.params, self.model_version = params, round_
        await self.coordinator.publish(frame)
        self.history.append(record)
        await self.coordinator.publish(self.status_frame())
        log.info("round %d committed: %d update(s), accuracy %.4f, loss %.4f", round_, participants, accuracy, loss)
        return record

    async def _close_round(self) -> None:
        if self._open is not None:
            self._open.closed = True
            self._open = None
            await self.coordinator.set_round(None)

    # -- reporting -----------------------------------------------------------------------

    def status(self) -> dict:
        open_ = self._open
        loop = asyncio.get_running_loop()
        return {
            "state": self.state.value,
            "task": self.task.to_dict(),
            "model_version": self.model_version,
            "round": open_.info.round if open_ else None,
            "connected": len(self.peers),
            "volunteers": {s.value: self.count(s) for s in PeerState},
            "run": None
            if self.run_id is None
            else {
                "id": self.run_id,
                "running": self.running,
                "rounds_done": self.run_rounds_done,
                "config": self.run_config.to_dict() if self.run_config else None,
            },
            "waits_sent": self.waits_sent,
            "fedbuff": None if self._fedbuff is None else self._fedbuff.describe(),
            "open_round": None
            if open_ is None
            else {
                "round": open_.info.round,
                "selected": len(open_.info.selected),
                "received": len(open_.submitted),
                "deadline_in_s": max(0.0, open_.info.deadline - loop.time()),
            },
            "rejections": self.rejections.to_dict(),
            "history": [r.to_dict() for r in self.history],
        }
