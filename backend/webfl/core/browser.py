"""The browser's side of a volunteer session: a thin layer over ``Volunteer`` for the Web Worker.

The worker (``web/static/worker.js``) owns the WebSocket and the files; everything that
touches numbers or frames happens here, in Python, so the JavaScript only moves bytes.
Values crossing to JavaScript are plain: ``bytes`` frames and JSON strings, never
proxies of Python objects that the worker would have to remember to destroy.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from .. import __version__
from .data import Dataset, parse_csv
from .downlink import digest
from .predict import personalise, predict
from .tasks import Kind, Task
from .training import run_steps
from .volunteer import SessionState, TrainingDiverged, Volunteer

__all__ = ["PREDICTIONS_SHOWN", "BrowserSession", "version"]

log = logging.getLogger("webfl.browser")

T = TypeVar("T")

#: Rows of predictions sent to the page (all rows are predicted; the page says how many).
PREDICTIONS_SHOWN = 200


def version() -> str:
    """The core's version, which the page compares with the server's before joining."""
    return __version__


def _plain(obj):
    # A JS object arrives as a JsProxy with ``to_py`` (nested dicts and lists); tests pass dicts.
    return obj.to_py() if hasattr(obj, "to_py") else obj


def _as_bytes(frame) -> bytes:
    # A JS Uint8Array/ArrayBuffer arrives as a JsProxy with ``to_bytes``; tests pass bytes.
    return frame.to_bytes() if hasattr(frame, "to_bytes") else bytes(frame)


@dataclass(frozen=True)
class _KeptModel:
    task: Task
    params: np.ndarray
    version: int


@dataclass(frozen=True)
class _Personal:
    task: Task
    params: np.ndarray
    summary: dict  # Personalised.to_dict(): base_version, holdout, global_accuracy, personal_accuracy


@dataclass(frozen=True)
class _Pending:
    """An update sent (or about to be) whose verdict has not come back yet."""

    volunteer: str
    resume: str
    round: int
    frame: bytes


class BrowserSession:
    """One tab's volunteer, plus what only a browser needs.

    - Data comes later than the connection: a demo volunteer learns its shard's URL from
      ``welcome``, and a volunteer with a CSV parses it once the task's schema is known.
    - A ``wait`` (the server has enough volunteers) is the driver's to honour, as in
      ``webfl.simulate``: disconnect, come back after ``take_wait()`` seconds.
    - Pausing survives reconnects: ``Volunteer.hello()`` starts every connection afresh,
      so a paused tab re-pauses right after ``welcome`` instead of announcing ``ready``.
    - An update outlives its connection and the page: the worker keeps ``pending_record()``
      and ``pending_frame()`` in IndexedDB until the verdict, and hands them back with
      ``restore_pending()`` after a reload. When ``welcome`` confirms the same volunteer
      id (the server honoured ``hello.resume``), ``receive`` re-sends the frame; the
      server accepts it if its round is still open and this id has not submitted yet,
      else rejects it, and either verdict ends it. A new id means the server did not
      let us resume: no round can take the frame any more, so it is dropped.
    """

    def __init__(self, agent: str, task: dict | None = None) -> None:
        """``task``: the definition of the task this tab trains (the page's); None: the server's default."""
        self.task = None if task is None else Task.from_json(_plain(task))
        # SecAgg's cryptography is WebCrypto's, which is asynchronous: handed to the worker.
        self.volunteer = Volunteer(agent=agent, task_name=None if self.task is None else self.task.name, defer_crypto=True)
        self.want_paused = False
        self.data_source: dict | None = None  # {"kind": "demo"|"csv", ...} once data is set
        self.rounds_accepted: list[int] = []
        self.pending: _Pending | None = None
        self._steps = None  # the running job's batches (start_training .. train_batch)
        self._stop = False  # a frame read ahead (notice) ended the running job
        self._update = b""
        #: The last global model kept on this device (IndexedDB), for when no server gave one.
        self._kept: _KeptModel | None = None
        #: The volunteer's personal fine-tune of a global model (never uploaded).
        self._personal: _Personal | None = None
        self._record_of: tuple[np.ndarray, Task, str] | None = None  # model_record() of these parameters and task

    # -- connection ------------------------------------------------------------

    def hello(self) -> bytes:
        return self.volunteer.hello()

    def receive(self, frame) -> list[bytes]:
        v = self.volunteer
        connecting, verdict = v.state is SessionState.CONNECTING, v.last_verdict
        out = v.receive(_as_bytes(frame))
        resend = self._after_welcome() if connecting and v.state is not SessionState.CONNECTING else []
        if v.last_verdict is not verdict:
            self._on_verdict(v.last_verdict)
        if self.want_paused and v.state is SessionState.IDLE:
            # Drop the ``ready`` that welcome/accept just produced: we are not available.
            out = v.pause()
        return resend + out

    # -- secure aggregation: the worker answers with WebCrypto (worker/secagg.js) -----

    def crypto_request(self) -> str:
        """JSON ``{op, items}`` of the cryptography a SecAgg stage waits for (each item a list
        of hex byte strings, see ``secagg.runtime.OPS``); "" when none waits."""
        request = self.volunteer.crypto_request
        if request is None:
            return ""
        return json.dumps({"op": request.op, "items": [[b.hex() for b in item] for item in request.items]})

    def crypto_answer(self, answers) -> list[bytes]:
        """WebCrypto's answers (hex strings, "" where it failed), in order; the frames to send."""
        return self.volunteer.crypto_answer([bytes.fromhex(a) for a in _plain(answers)])

    def secagg_round(self) -> bool:
        """This tab is in a secure-aggregation round (the page says so)."""
        return self.volunteer.secagg_seat is not None

    def _after_welcome(self) -> list[bytes]:
        pending = self.pending
        if pending is None:
            return []
        if pending.volunteer != self.volunteer.volunteer_id:
            log.info("round %d: the server gave a new volunteer id; the pending update is dropped", pending.round)
            self.pending = None
            return []
        log.info("round %d: re-sending the pending update", pending.round)
        self.volunteer.bytes_up += len(pending.frame)
        return [pending.frame]

    def _on_verdict(self, verdict: dict) -> None:
        if verdict.get("accepted") and verdict["round"] not in self.rounds_accepted:
            self.rounds_accepted.append(verdict["round"])
        if self.pending is not None and verdict.get("round") == self.pending.round:
            self.pending = None

    def closed(self) -> None:
        self.volunteer.close()

    def take_wait(self) -> float | None:
        """Seconds the server asked us to stay away (pace steering), once; else None."""
        return self.volunteer.take_wait()

    @property
    def state(self) -> str:
        return self.volunteer.state.value

    def needs_data(self) -> bool:
        return self.volunteer.task is not None and self.volunteer.num_examples == 0

    def shard_url(self) -> str | None:
        shard = self.volunteer.shard
        return None if not shard else shard.get("url")

    # -- data ----------------------------------------------------------------------

    def use_shard(self, npz) -> list[bytes]:
        """The demo shard: a ``.npz`` with ``x`` (uint8 features) and ``y`` (labels)."""
        with np.load(io.BytesIO(_as_bytes(npz)), allow_pickle=False) as f:
            data = Dataset(f["x"], f["y"])
        self.data_source = {"kind": "demo", "shard": self.volunteer.shard, "examples": len(data)}
        return self._set_data(data)

    def use_csv(self, text: str, num_features: int, num_classes: int, name: str = "") -> list[bytes]:
        """The volunteer's own file; ``ValueError`` carries a message for the page.

        A tabular task's CSV is read by its header (``Task.parse_csv``); an image task's
        as label-then-pixels rows (``parse_csv``)."""
        if self.task is not None and self.task.kind is Kind.TABULAR:
            data = self.task.parse_csv(text)
        else:
            data = parse_csv(text, num_features, num_classes)
        self.data_source = {"kind": "csv", "name": name, "examples": len(data)}
        return self._set_data(data)

    def use_images(self, pixels, labels, name: str = "", skipped=()) -> list[bytes]:
        """Labelled images the worker decoded: ``uint8`` bytes ``(n, height, width, channels)``, one label byte each.

        ``skipped``: names of the files the browser could not decode, shown with the data."""
        task = self._image_task()
        y = np.frombuffer(_as_bytes(labels), dtype=np.uint8)
        data = task.images(_pixels(pixels, len(y), task), y)
        self.data_source = {"kind": "images", "name": name, "examples": len(data), "skipped": [str(n) for n in _plain(skipped)]}
        return self._set_data(data)

    def _image_task(self) -> Task:
        if self.task is None or self.task.kind is not Kind.IMAGE:
            raise ValueError("this task does not take images")
        return self.task

    def _set_data(self, data: Dataset) -> list[bytes]:
        out = self.volunteer.set_data(data)
        return [] if self.want_paused else out

    # -- control -------------------------------------------------------------------

    def pause(self) -> list[bytes]:
        self.want_paused = True
        return self.volunteer.pause()

    def resume(self) -> list[bytes]:
        self.want_paused = False
        return self.volunteer.resume()

    def should_train(self) -> bool:
        return self.volunteer.state is SessionState.TRAINING

    def train(self, progress: Callable[[int, int, int, int, float], None] | None = None) -> bytes:
        """Train for the current job; ``progress(epoch, epochs, batch, batches, loss)``."""
        return run_steps(self._training(), progress)

    def start_training(self) -> None:
        """Begin the current job, to be run by :meth:`train_batch` one batch per call."""
        self._steps = self._training()
        self._update = b""
        self._stop = False

    def notice(self, frame) -> bool:
        """Read a frame that arrived while a job trains, ahead of its turn (the worker still
        hands it to ``receive`` in order): one that ends the job (the run ended, or the
        round refused us) stops the training at the next :meth:`train_batch`, so a stop
        reaches the page within a batch instead of after the whole local training. A status
        is shown at once too (:meth:`Volunteer.read_ahead`)."""
        ends = self.volunteer.read_ahead(_as_bytes(frame))
        if self._steps is not None and not self._stop:
            self._stop = ends
        return self._stop

    def train_batch(self) -> str:
        """Run one batch: JSON ``{epoch, epochs, batch, batches, loss}``, or "" once the update
        is ready or the job stopped (``notice``; then no update is made).

        The worker returns to its event loop between calls, so pause, leave and the
        CPU-use setting's rests take effect within one batch.
        """
        if self._steps is None:
            raise RuntimeError("no training started")
        if self._stop:
            self._steps.close()
            self._steps, self._stop = None, False
            out = self.volunteer.abandon_job()
            if self.want_paused and self.volunteer.state is SessionState.IDLE:
                out = self.volunteer.pause()  # as in receive: not available, so no ``ready``
            self._update = out[0] if out else b""
            return ""
        try:
            epoch, epochs, batch, batches, loss = next(self._steps)
        except StopIteration as done:
            self._steps, self._update = None, done.value
            return ""
        return json.dumps({"epoch": epoch, "epochs": epochs, "batch": batch, "batches": batches, "loss": loss})

    def take_update(self) -> bytes:
        """The frame the finished job produced: an ``update``; ``ready`` if it diverged or was
        stopped (``notice``); ``pause`` or b"" (nothing to send) if stopped while paused."""
        update, self._update = self._update, b""
        return update

    def _training(self) -> Generator[tuple[int, int, int, int, float], None, bytes]:
        job = self.volunteer.job
        epochs = job.config.epochs if job else 0
        steps = self.volunteer.training()
        try:
            while True:
                try:
                    epoch, batch, batches, loss = next(steps)
                except StopIteration as done:
                    update = done.value
                    break
                yield epoch, epochs, batch, batches, float(loss)
        except TrainingDiverged as exc:
            # The volunteer is IDLE again; its ``ready`` goes out in place of an update
            # and the snapshot's last_metrics says {"diverged": true}.
            (ready,) = exc.frames
            return ready
        v = self.volunteer
        assert job is not None and v.volunteer_id is not None
        self.pending = _Pending(v.volunteer_id, v.resume_token or "", job.round, update)
        return update

    # -- the model on this device: predictions, the kept model, personalisation ----

    def _global(self) -> _KeptModel | None:
        """The model predictions use: the server's latest, else the one kept on the device."""
        v = self.volunteer
        if v.params is not None and v.task is not None:
            return _KeptModel(v.task, v.params, v.model_version)
        return self._kept

    def _predictor(self, which: str) -> tuple[Task, np.ndarray]:
        if which == "personal":
            if self._personal is None:
                raise ValueError("there is no personal model on this device yet: press Personalise first")
            return self._personal.task, self._personal.params
        model = self._global()
        if model is None:
            raise ValueError("there is no model on this device yet: wait for the server to send one")
        return model.task, model.params

    def predict_csv(self, text, which: str = "global") -> str:
        """Predictions on a CSV of the task's feature columns (a label column is ignored), as JSON."""
        task, params = self._predictor(which)
        x = task.parse_unlabelled_csv(text)
        return json.dumps(predict(task.build_model(), params, x).to_dict(task.classes, PREDICTIONS_SHOWN))

    def predict_images(self, pixels, count: int, which: str = "global") -> str:
        """Predictions on decoded ``uint8`` images ``(count, height, width, channels)``, as JSON."""
        task, params = self._predictor(which)
        if task.kind is not Kind.IMAGE:
            raise ValueError("this task does not take images")
        x = task.images(_pixels(pixels, int(count), task))
        return json.dumps(predict(task.build_model(), params, x).to_dict(task.classes, PREDICTIONS_SHOWN))

    def model_record(self) -> str:
        """JSON ``{version, digest, definition}`` of the server's latest model, to keep; "" if none."""
        v = self.volunteer
        if v.params is None or v.task is None:
            return ""
        # Asked after every frame: hash a model once, not on every status frame. A new
        # definition (its scaling fixed) keeps the parameters but changes the record.
        kept = self._record_of
        if kept is None or kept[0] is not v.params or kept[1] is not v.task:
            record = json.dumps({"version": v.model_version, "digest": digest(v.params), "definition": v.task.to_json()})
            kept = self._record_of = (v.params, v.task, record)
        return kept[2]

    def model_bytes(self) -> bytes:
        params = self.volunteer.params
        return b"" if params is None else params.astype("<f4").tobytes()

    def load_model(self, record: str, data) -> bool:
        """Hold a kept model for predictions; False (nothing changes) unless it is this task's, whole."""
        kept = self._read_record(record, data, "version", int)
        if kept is None:
            return False
        self._kept = _KeptModel(*kept)
        return True

    def _read_record(self, record: str, data, key: str, read: Callable[[object], T]) -> tuple[Task, np.ndarray, T] | None:
        """A kept model's task, parameters and ``read(meta[key])``, from its JSON ``record``
        (``model_record``/``personal_record``) and its bytes; None unless it is this task's
        model, whole and matching its digest."""
        try:
            meta = json.loads(record)
            task = Task.from_json(meta["definition"])
            expected_digest, extra = meta["digest"], read(meta[key])
        except (ValueError, KeyError, TypeError):
            return None
        if self.task is not None and (task.name != self.task.name or task.model != self.task.model):
            return None
        raw = _as_bytes(data)
        if len(raw) != 4 * task.build_model().size:
            return None
        params = np.frombuffer(raw, "<f4").astype(np.float32)
        return (task, params, extra) if digest(params) == expected_digest else None

    def personalise(self) -> str:
        """Fine-tune the global model on this volunteer's training split (never uploaded); JSON summary."""
        model = self._global()
        if model is None:
            raise ValueError("there is no global model on this device yet: wait for the server to send one")
        train, holdout = self.volunteer.local_split()
        result = personalise(model.task, model.params, model.version, train, holdout, seed=self.volunteer.holdout_seed)
        self._personal = _Personal(model.task, result.params, result.to_dict())
        return json.dumps(result.to_dict())

    def personal_record(self) -> str:
        """JSON ``{summary, digest, definition}`` of the personal model, to keep; "" if none."""
        p = self._personal
        if p is None:
            return ""
        return json.dumps({"summary": p.summary, "digest": digest(p.params), "definition": p.task.to_json()})

    def personal_bytes(self) -> bytes:
        return b"" if self._personal is None else self._personal.params.astype("<f4").tobytes()

    def load_personal(self, record: str, data) -> bool:
        """Restore a kept personal model; False (nothing changes) unless it is this task's, whole."""
        kept = self._read_record(record, data, "summary", dict)
        if kept is None:
            return False
        self._personal = _Personal(*kept)
        return True

    def pending_record(self) -> str:
        """JSON ``{volunteer, resume, round}`` of the update awaiting its verdict; "" if none."""
        p = self.pending
        return "" if p is None else json.dumps({"volunteer": p.volunteer, "resume": p.resume, "round": p.round})

    def pending_frame(self) -> bytes:
        return b"" if self.pending is None else self.pending.frame

    def restore_pending(self, volunteer: str, resume: str, round_: int, frame) -> bool:
        """After a reload: hold a stored update and ask the server for its volunteer id back.

        False (nothing changes) once this session has a connection of its own.
        """
        v = self.volunteer
        if v.volunteer_id is not None or not volunteer or not resume:
            return False
        v.volunteer_id, v.resume_token = volunteer, resume
        self.pending = _Pending(volunteer, resume, int(round_), _as_bytes(frame))
        return True

    # -- error-feedback residual (the worker keeps it in IndexedDB) --------------

    def residual_spec(self) -> str:
        """The codec spec of the residual to persist; "" when there is none."""
        state = self.volunteer.residual_state()
        return "" if state is None else state[0]

    def residual_bytes(self) -> bytes:
        """The residual as little-endian float32 bytes (b"" when there is none)."""
        state = self.volunteer.residual_state()
        return b"" if state is None else state[1].astype("<f4").tobytes()

    def load_residual(self, spec: str, data) -> bool:
        """Restore a persisted residual; False (and nothing changes) if it does not fit."""
        raw = _as_bytes(data)
        size = None if self.volunteer.task is None else self.volunteer.task.build_model().size
        if len(raw) % 4 or (size is not None and len(raw) != 4 * size):
            return False
        try:
            self.volunteer.load_residual_state(spec, np.frombuffer(raw, "<f4"))
        except ValueError:
            return False
        return True

    def snapshot(self) -> str:
        """What the page shows, as a JSON string (one copy across the worker boundary)."""
        snap = self.volunteer.snapshot()
        snap["paused"] = self.want_paused
        snap["data"] = self.data_source
        snap["rounds_accepted"] = self.rounds_accepted
        snap["residual"] = self.residual_spec() or None
        snap["pending_round"] = None if self.pending is None else self.pending.round
        model = self._global()
        snap["predictor"] = None if model is None else {"version": model.version, "kept": model is self._kept}
        snap["personal"] = None if self._personal is None else self._personal.summary
        snap["secagg"] = self.secagg_round()
        return json.dumps(snap)


def _pixels(data, count: int, task: Task) -> np.ndarray:
    """``count`` images of the task's shape from raw ``uint8`` bytes, or a ValueError."""
    raw = np.frombuffer(_as_bytes(data), dtype=np.uint8)
    shape = (task.height, task.width, task.channels)
    if count < 1 or raw.size != count * int(np.prod(shape)):
        raise ValueError(f"expected {count} images of {shape[1]}x{shape[0]}x{shape[2]} bytes, got {raw.size} bytes")
    return raw.reshape(count, *shape)
