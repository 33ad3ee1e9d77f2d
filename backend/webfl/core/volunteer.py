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

A differentially private run's task carries ``clip``: the delta's L2 norm is clipped to
it before the codec (``core.privacy.l2_clip``) and the update reports ``clipped``, the
bit adaptive clipping counts.
"""

from __future__ import annotations

import logging
import math
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
from .protocol import RUN_ENDS, Message, ProtocolError, decode, encode
from .tasks import Task
from .training import Progress, Step, TrainConfig, run_steps, train_steps

__all__ = ["Job", "SessionState", "TrainingDiverged", "Volunteer"]

log = logging.getLogger("webfl.volunteer")


class SessionState(str, Enum):
    CONNECTING = "connecting"
    IDLE = "idle"
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


class Volunteer:
    def __init__(
        self,
        data: Dataset | None = None,
        agent: str = "python",
        on_transition: Callable[[SessionState, SessionState], None] | None = None,
        task_name: str | None = None,
        holdout_seed: int = 0,
    ) -> None:
        """``task_name``: the task to train (None: the server's default); ``holdout_seed``
        picks which examples are kept for evaluation (the same every session)."""
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
        self.history: list = []
        self.run_progress: list[int] | None = None  # [rounds committed, rounds planned] of the run
        self.run_ended: str | None = None  # why the run ended (protocol.RUN_ENDS), None while it runs
        self.privacy: dict | None = None  # the run's DP guarantee as the server states it (status frame)
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
        return handler(msg)

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
        self.job = Job(
            msg["round"], msg["model_version"], TrainConfig.from_dict(msg["config"]), msg["codec"], float(msg["deadline_s"]),
            msg["token"], None if clip is None else float(clip),
        )
        self._to(SessionState.TRAINING)
        return []

    def _on_accept(self, msg: Message) -> list[bytes]:
        self.last_verdict = {"round": msg["round"], "accepted": True}
        return self._back_to_idle()

    def _on_reject(self, msg: Message) -> list[bytes]:
        self.last_verdict = {"round": msg.fields.get("round"), "accepted": False, "reason": msg["reason"]}
        log.warning("volunteer %s: update rejected: %s", self.volunteer_id, msg["reason"])
        return self._back_to_idle()

    def _back_to_idle(self) -> list[bytes]:
        if self.state in (SessionState.SUBMITTED, SessionState.TRAINING):
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
        self.history = msg["history"]
        run = msg.fields.get("run")
        # Only shown, never acted on; anything but two counts is ignored.
        ok = isinstance(run, list) and len(run) == 2 and all(type(n) is int and 0 <= n <= 1_000_000 for n in run)
        self.run_progress = run if ok else None
        ended = msg.fields.get("ended")
        self.run_ended = ended if ended in RUN_ENDS else None
        self.privacy = _privacy(msg.fields.get("privacy"))
        return []

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
        # Its own stream: the same seed also drives the training shuffle.
        rng = np.random.default_rng([job.config.seed, 1])
        if _biased(job.codec):
            enc = self._error_feedback(job.codec, delta.size).encode(delta, rng)
        else:
            enc = get_codec(job.codec).encode(delta, rng)
        self.last_metrics = {"round": job.round, "loss": result.loss, "accuracy": result.accuracy}
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
