"""The volunteer session as a sans-I/O state machine.

``Volunteer`` consumes frames from the server and produces frames to send; it never
touches a socket. The Python simulator drives it over ``websockets`` and the browser's
Web Worker drives the very same object over the page's WebSocket.

States::

    CONNECTING --welcome--> IDLE --task--> TRAINING --train()--> SUBMITTED
        ^                    ^  \\                                  |
        |                    |   pause() -> PAUSED -resume()-> IDLE |
        |                    +-------------accept/reject------------+
    hello() (on every (re)connect)                      close() -> CLOSED

    IDLE --task with secagg--> KEYING --sa_inbox--> TRAINING (SecAgg rounds; reject -> IDLE)

Training that diverges (a non-finite delta) goes TRAINING -> IDLE: ``train()`` raises
``TrainingDiverged`` whose ``frames`` (a fresh ``ready``) the driver sends; nothing is
uploaded for that round and the server's deadline or quorum closes it.

Every volunteer keeps a seeded holdout of its examples (the task's ``holdout``
fraction), never trained on: each newer model that reaches it while it is not training
is evaluated there and reported as ``eval`` sums (federated evaluation).

Biased codecs (top-k) encode through an ``ErrorFeedback`` kept per (codec spec, model
size): what top-k drops is added to the next delta. It survives reconnects (the
object lives on) and, via ``residual_state()``/``load_residual_state()``, page reloads
in the browser (IndexedDB). A new spec or model size starts from a zero residual.

A secure-aggregation round's task carries ``secagg`` (the round's public parameters,
``core/secagg/wire.py``): the volunteer advertises its keys at once and waits in KEYING
for the roster (it answers with sealed shares) and its inbox of neighbours' shares, then
trains; ``train()`` returns the quantized, masked ``sa_masked`` frame instead of an
``update``; ``sa_unmask`` (who survived) is answered with ``sa_reveal`` in any state. The
cryptography is the runtime's (``secagg.runtime``): natively ``cryptography`` answers at
once; with ``defer_crypto`` (the browser) a stage stops at ``crypto_request`` until the
driver brings WebCrypto's answers to ``crypto_answer``, which returns the frames to send.
A volunteer with neither sits such rounds out.
A frame that breaks the SecAgg round ends it for this volunteer (IDLE again, ``ready``).

A differentially private run's task carries ``clip``: the delta's L2 norm is clipped to
it before the codec (``core.privacy.l2_clip``) and the update reports ``clipped``, the
bit adaptive clipping counts.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass
from enum import Enum

import numpy as np

from .. import __version__
from .codecs import CODECS, ErrorFeedback, get_codec
from .data import Dataset, features
from .downlink import apply_model, digest
from .evaluation import evaluation_sums, holdout_split
from .stats import feature_stats
from .protocol import HISTORY_KEPT, RUN_ENDS, Message, ProtocolError, decode, encode
from .secagg import Quantizer, SecAggClient, SecAggError
from .secagg.runtime import CryptoRequest, SecAggVolunteer, Steps, VolunteerCrypto, run
from .secagg.wire import id_rows, keys_message, read_id_rows, read_roster, read_setup, read_survivors, reveal_message
from .tasks import Task
from .training import Progress, Step, TrainConfig, run_steps, train_steps

__all__ = ["Job", "SessionState", "TrainingDiverged", "Volunteer"]

log = logging.getLogger("webfl.volunteer")

#: Frames shown ahead and awaiting their turn that a volunteer remembers (a hash each);
#: the worker's inbox rarely holds more than a few.
SHOWN_AHEAD_KEPT = 256


class SessionState(str, Enum):
    CONNECTING = "connecting"
    IDLE = "idle"
    KEYING = "keying"  # a secure-aggregation round: keys and shares before training
    TRAINING = "training"
    SUBMITTED = "submitted"
    PAUSED = "paused"
    CLOSED = "closed"


class TrainingDiverged(RuntimeError):
    """Local training produced NaN/Inf; the volunteer is IDLE again and sends ``frames``."""

    def __init__(self, round_: int, frames: list[bytes]) -> None:
        super().__init__(f"local training diverged in round {round_} (non-finite weights); no update sent")
        self.round = round_
        self.frames = frames


def _biased(spec: str) -> bool:
    return "topk" in get_codec(spec).stages


@dataclass(frozen=True)
class Job:
    """A round this volunteer was selected for."""

    round: int
    model_version: int
    config: TrainConfig
    codec: str
    deadline_s: float
    #: The task's session token, echoed in the update.
    token: str = ""
    #: DP runs: clip the delta's L2 norm to this before the codec.
    clip: float | None = None
    #: SecAgg rounds: the session id (the round's SecAgg state is the volunteer's ``_secagg``).
    session: int | None = None


@dataclass
class _SecAggRound:
    """This volunteer's part of one SecAgg round: its stages, quantizer and the shares it opened."""

    round: int
    session: int
    index: int
    n: int
    quantizer: Quantizer
    stages: SecAggVolunteer
    opened: bool = False  # the neighbours' shares are in: ready to mask


class Volunteer:
    def __init__(
        self,
        data: Dataset | None = None,
        agent: str = "python",
        on_transition: Callable[[SessionState, SessionState], None] | None = None,
        task_name: str | None = None,
        holdout_seed: int = 0,
        secagg_crypto: VolunteerCrypto | None = None,
        defer_crypto: bool = False,
    ) -> None:
        """``task_name``: the task to train (None: the server's default); ``holdout_seed``
        picks which examples are kept for evaluation (the same every session);
        ``secagg_crypto``: the runtime's cryptography for SecAgg rounds (None: ``cryptography``
        if installed); ``defer_crypto``: hand SecAgg's cryptography to the driver instead
        (``crypto_request``/``crypto_answer``: the browser's asynchronous WebCrypto)."""
        self.secagg_crypto, self.defer_crypto = secagg_crypto, defer_crypto
        self._secagg: _SecAggRound | None = None
        #: The cryptography a SecAgg stage waits for (``defer_crypto``), and what resumes it.
        self.crypto_request: CryptoRequest | None = None
        self._crypto_job: tuple[Steps, Callable[[object], list[bytes]]] | None = None
        self.agent, self.task_name, self.holdout_seed = agent, task_name, holdout_seed
        self.state = SessionState.CLOSED
        self.on_transition = on_transition
        self.volunteer_id: str | None = None
        #: welcome's credential for keeping ``volunteer_id`` on the next connection.
        self.resume_token: str | None = None
        self.task: Task | None = None
        #: Report ``eval`` sums on new models (welcome says whether the server wants them).
        self.evaluates = True
        self.shard: dict | None = None
        self.params: np.ndarray | None = None
        self.model_version = -1
        self.job: Job | None = None
        #: ``[round, accuracy]`` of the last ``HISTORY_KEPT`` commits, the first being the
        #: server's history entry ``_history_from`` (incremental notices extend it).
        self.history: list = []
        self._history_from = 0
        self.run_progress: list[int] | None = None  # [rounds committed, rounds planned] of the run
        self.run_ended: str | None = None  # why the run ended (protocol.RUN_ENDS), None while it runs
        self.privacy: dict | None = None  # the run's DP guarantee as the server states it (status frame)
        #: Hashes of the status-carrying frames ``read_ahead`` showed, oldest first, not yet
        #: received in their turn; ``_showing_again``: the frame being received is one.
        self._shown_ahead: deque[int] = deque(maxlen=SHOWN_AHEAD_KEPT)
        self._showing_again = False
        self.last_verdict: dict | None = None
        self.last_metrics: dict | None = None
        self.bytes_up = 0
        self.bytes_down = 0
        #: Set by a ``wait`` (pace steering): the server asks us to come back in this
        #: many seconds. The driver honours it (``take_wait``): it disconnects, sleeps
        #: and reconnects. A driver that ignores it still works: the server makes the
        #: volunteer selectable again when the time is up.
        self.retry_after_s: float | None = None
        #: The newest committed version the server announced (``model_notice``): the model
        #: itself comes with our next task, so ``model_version`` may lag behind it.
        self.latest_version = -1
        self._data: Dataset | None = None
        self._x: np.ndarray | None = None
        #: Indices into the data: trained on, and kept for evaluation (once the task is known).
        self._train_idx: np.ndarray | None = None
        self._holdout_idx: np.ndarray | None = None
        self._feedback: ErrorFeedback | None = None
        if data is not None:
            self._set_dataset(data)

    # -- state -------------------------------------------------------------

    def _to(self, new: SessionState) -> None:
        old, self.state = self.state, new
        if old is not new:
            log.info("volunteer %s: %s -> %s", self.volunteer_id or "?", old.value, new.value)
            if self.on_transition is not None:
                self.on_transition(old, new)

    @property
    def num_examples(self) -> int:
        """The examples trained on (the holdout is not)."""
        if self._data is None:
            return 0
        return len(self._data) if self._train_idx is None else len(self._train_idx)

    @property
    def holdout_examples(self) -> int:
        return 0 if self._holdout_idx is None else len(self._holdout_idx)

    def local_split(self) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
        """``((x, y) trained on, (x, y) held out)`` as model inputs: what a personal fine-tune
        (``core.predict.personalise``) trains and compares on, on this device only."""
        if self._data is None or self._x is None or self._train_idx is None or self._holdout_idx is None:
            raise ValueError("no local data yet (or the task is not known yet)")
        y = self._data.y
        return (self._x[self._train_idx], y[self._train_idx]), (self._x[self._holdout_idx], y[self._holdout_idx])

    def snapshot(self) -> dict:
        """Everything a UI shows, as plain data."""
        return {
            "state": self.state.value,
            "volunteer": self.volunteer_id,
            "task": None if self.task is None else self.task.to_dict(),
            "model_version": self.model_version,
            "latest_version": max(self.latest_version, self.model_version),
            "round": None if self.job is None else self.job.round,
            "num_examples": self.num_examples,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "history": self.history,
            "run": self.run_progress,
            "run_ended": self.run_ended,
            "privacy": self.privacy,
            "last_verdict": self.last_verdict,
            "last_metrics": self.last_metrics,
        }

    # -- frames out ----------------------------------------------------------

    def _send(self, message: Message) -> bytes:
        frame = encode(message)
        self.bytes_up += len(frame)
        return frame

    def hello(self) -> bytes:
        """The first frame on every (re)connection."""
        self.job = None
        self._to(SessionState.CONNECTING)
        fields = {"version": __version__, "codecs": sorted(CODECS), "agent": self.agent}
        if self.params is not None:
            # Lets the server send only what changed since (see webfl.core.downlink).
            fields |= {"model_version": self.model_version, "model_digest": digest(self.params)}
        if self.volunteer_id and self.resume_token:
            fields["resume"] = {"volunteer": self.volunteer_id, "token": self.resume_token}
        if self.task_name is not None:
            fields["task"] = self.task_name
        return self._send(Message("hello", fields))

    def _ready(self) -> list[bytes]:
        """Tell the server we can be selected, once we have a model and data."""
        if self.state is SessionState.IDLE and self.params is not None and self._data is not None:
            return [self._send(Message("ready", {"num_examples": self.num_examples}))]
        return []

    def set_data(self, data: Dataset) -> list[bytes]:
        """Use ``data`` as this volunteer's local examples (they never leave this object)."""
        if self.task is not None and data.x.shape[1] != self.task.num_features:
            raise ValueError(f"data has {data.x.shape[1]} features, the task needs {self.task.num_features}")
        self._set_dataset(data)
        return self._statistics() + self._ready()

    def _set_dataset(self, data: Dataset) -> None:
        if len(data) == 0:
            raise ValueError("no examples")
        self._data, self._x = data, features(data.x)
        self._split()

    def _split(self) -> None:
        if self._data is None or self.task is None:
            return
        self._train_idx, self._holdout_idx = holdout_split(len(self._data), self.task.holdout, self.holdout_seed)

    def pause(self) -> list[bytes]:
        if self.state in (SessionState.IDLE, SessionState.SUBMITTED):
            self._to(SessionState.PAUSED)
            return [self._send(Message("pause"))]
        return []

    def resume(self) -> list[bytes]:
        if self.state is SessionState.PAUSED:
            self._to(SessionState.IDLE)
        return self._ready()

    def close(self) -> None:
        self.job = None
        self._to(SessionState.CLOSED)

    # -- frames in -----------------------------------------------------------

    def receive(self, frame: bytes) -> list[bytes]:
        """Handle one server frame; returns frames to send now.

        After a ``task`` frame, ``self.job`` is set and the driver calls ``train()``.
        """
        self.bytes_down += len(frame)
        msg = decode(frame)
        handler = getattr(self, f"_on_{msg.type}", None)
        if handler is None:
            raise ProtocolError(f"a volunteer does not expect {msg.type!r} frames")
        self._showing_again = self._was_shown_ahead(frame)
        try:
            return handler(msg)
        finally:
            self._showing_again = False

    def _was_shown_ahead(self, frame: bytes) -> bool:
        """Whether ``read_ahead`` showed ``frame``'s status already. Frames are read ahead as
        they arrive and received later in the same order, so those shown before it and not
        received (their socket closed meanwhile) are forgotten with it."""
        key = hash(frame)
        if key not in self._shown_ahead:
            return False
        while self._shown_ahead.popleft() != key:
            pass
        return True

    def _on_welcome(self, msg: Message) -> list[bytes]:
        self.volunteer_id = msg["volunteer"]
        self.resume_token = msg.fields.get("resume")
        self.task = Task.from_dict(msg["task"])
        self._split()
        self.shard = msg.fields.get("shard")
        # False where the server evaluates on its own data: a report would only be refused.
        self.evaluates = msg.fields.get("evaluate", True)
        self._to(SessionState.PAUSED if self.state is SessionState.PAUSED else SessionState.IDLE)
        return self._statistics() + self._ready()

    def _on_definition(self, msg: Message) -> list[bytes]:
        """The task's scaling is fixed now: the model standardises its inputs from here on."""
        task = Task.from_dict(msg["task"])
        if self.task is None or task.name != self.task.name:
            raise ProtocolError("a definition for another task")
        self.task = task
        return []

    def _statistics(self) -> list[bytes]:
        """For a task whose scaling is still to be measured: per-feature sums of the rows
        trained on (count, sum, sum of squares), never the rows."""
        if self.task is None or not self.task.needs_statistics or self._x is None or self._train_idx is None:
            return []
        stats = feature_stats(self._x[self._train_idx])
        return [self._send(Message("stats", {"stats": stats.to_dict()}))]

    def _on_model(self, msg: Message) -> list[bytes]:
        if self.task is None:
            raise ProtocolError("model before welcome")
        params = apply_model(self.params, self.model_version, msg, self.task.build_model().size)
        if params is None:
            log.info("volunteer %s: stale model frame for %s ignored (holding %s)", self.volunteer_id, msg["model_version"], self.model_version)
            return []
        was_ready = self.params is not None
        self.params, self.model_version = params, msg["model_version"]
        return self._evaluation() if was_ready else self._ready()

    def _evaluation(self) -> list[bytes]:
        """The ``eval`` report on a newer model, unless training (its holdout never trains)."""
        if not self.evaluates or self.state not in (SessionState.IDLE, SessionState.SUBMITTED) or not self.holdout_examples:
            return []
        assert self.task is not None and self._x is not None and self._data is not None and self.params is not None
        idx = self._holdout_idx
        sums = evaluation_sums(self.task.build_model(), self.params, self._x[idx], self._data.y[idx], self.task.num_classes)
        return [self._send(Message("eval", {"model_version": self.model_version, "sums": sums.to_dict()}))]

    def _on_model_notice(self, msg: Message) -> list[bytes]:
        self.latest_version = max(self.latest_version, msg["model_version"])
        if "history" in msg.fields:  # the commit's status rides along (one frame a commit)
            self._status(msg.fields)
        return []

    def _on_task(self, msg: Message) -> list[bytes]:
        if self.state is not SessionState.IDLE or self.params is None or self._data is None:
            log.info("volunteer %s: ignoring task for round %s in state %s", self.volunteer_id, msg["round"], self.state.value)
            return []
        if msg["model_version"] != self.model_version:
            log.warning("task for model %s but holding %s; skipping", msg["model_version"], self.model_version)
            return []
        clip = msg.fields.get("clip")
        if clip is not None and not clip > 0:
            raise ProtocolError(f"task: clip must be positive, got {clip!r}")
        secagg = msg.fields.get("secagg")
        job = Job(
            msg["round"], msg["model_version"], TrainConfig.from_dict(msg["config"]), msg["codec"], float(msg["deadline_s"]),
            msg["token"], None if clip is None else float(clip), None if secagg is None else secagg.get("session"),
        )
        if secagg is None:
            self.job = job
            self._to(SessionState.TRAINING)
            return []
        return self._secagg_begin(job, secagg)

    # -- secure aggregation ------------------------------------------------------

    def _crypto(self) -> VolunteerCrypto | None:
        """The synchronous cryptography: the injected one, else ``cryptography`` if installed."""
        if self.secagg_crypto is None:
            try:
                from .secagg.native import NativeCrypto  # the server's environment; not the browser's wheel
            except ImportError:
                return None
            self.secagg_crypto = NativeCrypto()
        return self.secagg_crypto

    def _secagg_begin(self, job: Job, fields: dict) -> list[bytes]:
        """ADVERTISE: two fresh key pairs; the job waits in KEYING for the shares."""
        assert self.task is not None
        if not self.defer_crypto and self._crypto() is None:
            log.warning("volunteer %s: no cryptography for secure aggregation; sitting round %d out", self.volunteer_id, job.round)
            return []
        try:
            setup, quantizer, index = read_setup(fields, self.task.build_model().size)
        except SecAggError as exc:
            log.warning("volunteer %s: secure-aggregation task refused: %s", self.volunteer_id, exc)
            return []
        stages = SecAggVolunteer(SecAggClient(index, setup))
        self._secagg = _SecAggRound(job.round, setup.round_id, index, setup.graph.n, quantizer, stages)
        self.job = job
        self._to(SessionState.KEYING)
        return self._crypto_steps(stages.advertise(), lambda keys: [self._send(keys_message(setup.round_id, keys))])

    def _crypto_steps(self, steps: Steps, then: Callable[[object], list[bytes]]) -> list[bytes]:
        """Run a SecAgg stage: its requests answered now, or (``defer_crypto``) by the driver."""
        if self._crypto_job is not None:
            self._crypto_job[0].close()  # a stage of an earlier round still waiting: it is over
        self._crypto_job, self.crypto_request = (steps, then), None
        if not self.defer_crypto:
            crypto = self._crypto()
            assert crypto is not None
            try:
                value = run(steps, crypto)
            except SecAggError as exc:
                self._crypto_job = None
                return self._secagg_failed(exc)
            self._crypto_job = None
            return then(value)
        return self._crypto_next(None)

    def _crypto_next(self, answers: list | None) -> list[bytes]:
        assert self._crypto_job is not None
        steps, then = self._crypto_job
        try:
            request = next(steps) if answers is None else steps.send(answers)
        except StopIteration as done:
            self._crypto_job = self.crypto_request = None
            return then(done.value)
        except SecAggError as exc:
            self._crypto_job = self.crypto_request = None
            return self._secagg_failed(exc)
        self.crypto_request = request
        return []

    def crypto_answer(self, answers: list[bytes]) -> list[bytes]:
        """The driver's answers to ``crypto_request`` (one bytes value per item); the frames to send."""
        if self._crypto_job is None:
            raise RuntimeError("no SecAgg stage is waiting for cryptography")
        return self._crypto_next(list(answers))

    @property
    def secagg_seat(self) -> tuple[int, int, int] | None:
        """(round, this volunteer's index, cohort size) of the SecAgg round it is in, if any."""
        sa = self._secagg
        return None if sa is None else (sa.round, sa.index, sa.n)

    def _secagg_for(self, msg: Message) -> _SecAggRound | None:
        sa = self._secagg
        if sa is None or msg["session"] != sa.session:
            log.info("volunteer %s: %s for another secagg session ignored", self.volunteer_id, msg.type)
            return None
        return sa

    def _secagg_failed(self, exc: SecAggError) -> list[bytes]:
        """A frame broke the round: this volunteer leaves it (the server counts it dropped)."""
        log.warning("volunteer %s: secure aggregation round abandoned: %s", self.volunteer_id, exc)
        self._secagg = None
        if self.state in (SessionState.KEYING, SessionState.TRAINING):
            self.job = None
            self._to(SessionState.IDLE)
            return self._ready()
        return []

    def _on_sa_roster(self, msg: Message) -> list[bytes]:
        """SHARE: seal a share of our secrets for each neighbour in the roster."""
        if (sa := self._secagg_for(msg)) is None:
            return []
        try:
            roster = read_roster(msg, sa.n)
        except SecAggError as exc:
            return self._secagg_failed(exc)
        return self._crypto_steps(sa.stages.share(roster), lambda sealed: [self._send(id_rows("sa_shares", sa.session, sealed))])

    def _on_sa_inbox(self, msg: Message) -> list[bytes]:
        """The neighbours' sealed shares: opened now, then train (the mask needs them)."""
        if (sa := self._secagg_for(msg)) is None or self.state is not SessionState.KEYING:
            return []
        try:
            inbox = read_id_rows(msg, sa.n)
        except SecAggError as exc:
            return self._secagg_failed(exc)

        def train(_: object) -> list[bytes]:
            sa.opened = True
            self._to(SessionState.TRAINING)
            return []

        return self._crypto_steps(sa.stages.accept(inbox), train)

    def _on_sa_unmask(self, msg: Message) -> list[bytes]:
        """UNMASK: reveal each surviving neighbour's self-seed share, each dropped one's key share."""
        if (sa := self._secagg_for(msg)) is None:
            return []
        self._secagg = None  # the round's last stage, whatever comes of it
        try:
            reveal = sa.stages.unmask(read_survivors(msg, sa.n))
        except SecAggError as exc:
            return self._secagg_failed(exc)
        return [self._send(reveal_message(sa.session, reveal))]

    def _masked(self, job: Job, delta: np.ndarray, result) -> bytes:
        """MASK: quantize (rounding drawn from the OS, never the run's seed), mask, pack."""
        sa = self._secagg
        assert sa is not None and sa.opened and job.session == sa.session
        levels = sa.quantizer.quantize(delta, np.random.default_rng())
        packed = sa.stages.masked(levels)
        fields = {"session": sa.session, "round": job.round, "model_version": job.model_version, "num_examples": result.num_examples,
                  "loss": result.loss, "accuracy": result.accuracy, "token": job.token}
        self._to(SessionState.SUBMITTED)
        return self._send(Message("sa_masked", fields, (np.frombuffer(packed, np.uint8),)))

    def _on_accept(self, msg: Message) -> list[bytes]:
        self.last_verdict = {"round": msg["round"], "accepted": True}
        return self._back_to_idle()

    def _on_reject(self, msg: Message) -> list[bytes]:
        self.last_verdict = {"round": msg.fields.get("round"), "accepted": False, "reason": msg["reason"]}
        log.warning("volunteer %s: update rejected: %s", self.volunteer_id, msg["reason"])
        return self._back_to_idle()

    def read_ahead(self, frame: bytes) -> bool:
        """Read ``frame`` ahead of its turn (it waits behind a job, or behind the task that
        starts one), decoded once: a ``status`` (or a commit's ``model_notice`` carrying one)
        is shown at once, so the page says "round 1 of 4" during the job, not after it.
        Returns whether the frame makes the training job pointless: a status saying the run
        ended, or a reject for the job's round. Receiving the frame again in its turn changes
        nothing more; a frame that does not decode is left for ``receive`` to refuse."""
        try:
            msg = decode(frame)
        except ProtocolError:
            return False
        if msg.type == "status" or (msg.type == "model_notice" and "history" in msg.fields):
            self._status(msg.fields)
            self._shown_ahead.append(hash(frame))
        job = self.job
        if job is None or self.state is not SessionState.TRAINING:
            return False
        if msg.type == "status":
            return msg.fields.get("ended") in RUN_ENDS
        return msg.type == "reject" and msg.fields.get("round") == job.round

    def abandon_job(self) -> list[bytes]:
        """Stop the job unfinished, with no update (see ``read_ahead``): IDLE again, and ``ready``."""
        if self.job is not None:
            log.info("volunteer %s: round %d's training stopped, no update sent", self.volunteer_id, self.job.round)
        return self._back_to_idle()

    def _back_to_idle(self) -> list[bytes]:
        if self.state in (SessionState.KEYING, SessionState.TRAINING):
            self._secagg = None  # dropped from a SecAgg round before uploading
        if self.state in (SessionState.SUBMITTED, SessionState.TRAINING, SessionState.KEYING):
            self.job = None
            self._to(SessionState.IDLE)
            return self._ready()
        return []

    def _on_wait(self, msg: Message) -> list[bytes]:
        self.retry_after_s = max(0.0, float(msg["retry_after_s"]))
        log.info("volunteer %s: asked to come back in %.1f s (%s)", self.volunteer_id, self.retry_after_s, msg.fields.get("reason", ""))
        return []

    def take_wait(self) -> float | None:
        """The pending "come back in" delay, if any (cleared once taken)."""
        t, self.retry_after_s = self.retry_after_s, None
        return t

    def _on_status(self, msg: Message) -> list[bytes]:
        self._status(msg.fields)
        return []

    def _status(self, fields: dict) -> None:
        """Take the federation's progress from a ``status`` or a commit's ``model_notice``.

        Not again for a frame ``read_ahead`` showed when it arrived: the frames read ahead
        since (a run's start behind the welcome's status, say) are newer, and this one,
        shown again in its turn, would put the page back to what it said before them."""
        if self._showing_again:
            return
        self._merge_history(fields.get("history", []), fields.get("history_from"))
        self.latest_version = max(self.latest_version, fields.get("model_version", -1))
        run = fields.get("run")
        # Only shown, never acted on; anything but two counts is ignored.
        ok = isinstance(run, list) and len(run) == 2 and all(type(n) is int and 0 <= n <= 1_000_000 for n in run)
        self.run_progress = run if ok else None
        ended = fields.get("ended")
        self.run_ended = ended if ended in RUN_ENDS else None
        self.privacy = _privacy(fields.get("privacy"))

    def _merge_history(self, entries: list, start: int | None) -> None:
        """Entries from index ``start`` of the server's history replace ours from there;
        without ``start`` (or with a gap before it) they are the whole history we keep."""
        held_from = self._history_from
        if start is None or not held_from <= start <= held_from + len(self.history):
            self.history, self._history_from = list(entries), max(start or 0, 0)
        else:
            self.history = self.history[: start - held_from] + list(entries)
        if (extra := len(self.history) - HISTORY_KEPT) > 0:
            self.history, self._history_from = self.history[extra:], self._history_from + extra

    # -- work ------------------------------------------------------------------

    def craft_delta(self, delta: np.ndarray, job: Job) -> np.ndarray:
        """The update to send for this trained ``delta``; honest volunteers send it as is.

        The simulator's attackers (``core.attacks``) override this.
        """
        return delta

    def train(self, progress: Progress | None = None) -> bytes:
        """Train on the local data for the current job; returns the ``update`` frame."""
        return run_steps(self.training(), progress)

    def training(self) -> Generator[Step, None, bytes]:
        """:meth:`train` one batch at a time (see ``training.train_steps``); returns the frame."""
        job = self.job
        if self.state is not SessionState.TRAINING or job is None or self.task is None:
            raise RuntimeError(f"no training job (state {self.state.value})")
        assert self._data is not None and self._x is not None and self.params is not None
        model = self.task.build_model()
        idx = self._train_idx if self._train_idx is not None else slice(None)
        result = yield from train_steps(model, self.params, self._x[idx], self._data.y[idx], job.config)
        delta = result.params - self.params
        if not np.isfinite(delta).all():
            self.last_metrics = {"round": job.round, "loss": result.loss, "accuracy": result.accuracy, "diverged": True}
            self.job = None
            self._to(SessionState.IDLE)
            raise TrainingDiverged(job.round, self._ready())
        clip_field = {}
        if job.clip is not None:
            # Before the codec and error feedback: the bound is on what this volunteer's data did.
            # Imported here: the privacy package is mostly the server's DP machinery, and
            # the browser would otherwise load it at every start for runs that are not private.
            from .privacy import l2_clip

            delta, norm = l2_clip(delta, job.clip)
            clip_field = {"clipped": norm > job.clip}
        delta = self.craft_delta(delta, job)
        self.last_metrics = {"round": job.round, "loss": result.loss, "accuracy": result.accuracy}
        if job.session is not None:
            try:
                return self._masked(job, delta, result)
            except (SecAggError, ValueError) as exc:  # ValueError: a non-finite crafted delta
                frames = self._secagg_failed(SecAggError(str(exc)))
                raise TrainingDiverged(job.round, frames) from None
        # Its own stream: the same seed also drives the training shuffle.
        rng = np.random.default_rng([job.config.seed, 1])
        if _biased(job.codec):
            enc = self._error_feedback(job.codec, delta.size).encode(delta, rng)
        else:
            enc = get_codec(job.codec).encode(delta, rng)
        fields = {
            "round": job.round,
            "model_version": job.model_version,
            "num_examples": result.num_examples,
            "loss": result.loss,
            "accuracy": result.accuracy,
            "codec": job.codec,
            "codec_params": enc.params,
            "token": job.token,
            **clip_field,
        }
        self._to(SessionState.SUBMITTED)
        return self._send(Message("update", fields, enc.arrays))

    # -- error feedback ----------------------------------------------------------------

    def _error_feedback(self, spec: str, size: int) -> ErrorFeedback:
        codec = get_codec(spec)
        fb = self._feedback
        if fb is None or fb.codec.spec != codec.spec or fb.residual.size != size:
            if fb is not None:
                log.info("volunteer %s: codec now %s; error-feedback residual reset", self.volunteer_id, codec.spec)
            fb = self._feedback = ErrorFeedback(codec, size)
        return fb

    def residual_state(self) -> tuple[str, np.ndarray] | None:
        """(codec spec, residual) to persist, or ``None`` when there is none."""
        fb = self._feedback
        return None if fb is None else (fb.codec.spec, fb.state())

    def load_residual_state(self, spec: str, residual: np.ndarray) -> None:
        """Restore a persisted residual; ``ValueError`` if it is not a valid one."""
        residual = np.asarray(residual, dtype=np.float32).reshape(-1)
        fb = ErrorFeedback(get_codec(spec), residual.size)
        fb.load_state(residual)
        self._feedback = fb


def _privacy(value: object) -> dict | None:
    """The status frame's ``privacy`` if well formed (only shown, never acted on), else ``None``."""
    if not isinstance(value, dict):
        return None
    eps, delta, clip, noise = (value.get(k) for k in ("epsilon", "delta", "clip", "noise"))

    def number(x: object) -> bool:
        return type(x) in (int, float) and math.isfinite(x) and x >= 0  # type: ignore[arg-type]

    if not (eps is None or number(eps)) or not number(delta) or not number(clip) or type(noise) is not bool:
        return None
    return {"epsilon": eps, "delta": delta, "clip": clip, "noise": noise}
