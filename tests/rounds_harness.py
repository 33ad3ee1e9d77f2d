"""An in-process round engine for fast tests: a real ``RoundEngine`` on a tmp SQLite store,
an in-memory coordinator that records every frame, and hand-driven volunteers that call
the engine's public API (what ``sockets.py`` calls) under asyncio."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from webfl.core.codecs import Encoded, get_codec
from webfl.core.data import Dataset
from webfl.core.protocol import Message, decode
from webfl.core.tasks import get_task
from webfl.server.coordinator import Coordinator, Subscription
from webfl.server.engine import RoundEngine
from webfl.server.storage import PostgresURL
from webfl.server.store import Store

TASK = get_task("mnist", "softmax")  # 7,850 parameters: quick to aggregate and evaluate


class RecordingCoordinator(Coordinator):
    """Frames are appended to per-volunteer inboxes; a volunteer not joined receives nothing."""

    def __init__(self) -> None:
        self.inbox: dict[str, list[Message]] = {}

    def subscribe(self, volunteer_id: str) -> Subscription:
        raise NotImplementedError("the harness reads inboxes directly")

    async def publish(self, frame: bytes, to: Iterable[str] | None = None) -> int:
        targets = list(self.inbox) if to is None else [v for v in to if v in self.inbox]
        msg = decode(frame)
        for v in targets:
            self.inbox[v].append(msg)
        return len(targets)


def held_out(n: int = 64, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    return Dataset(rng.integers(0, 256, (n, TASK.num_features), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8))


def make_engine(tmp_path: Path, seed: int = 0, target: Path | PostgresURL | None = None) -> tuple[RoundEngine, RecordingCoordinator]:
    """``target``: where the store is (``conftest.store_target``); the SQLite file in ``tmp_path`` unless given."""
    coordinator = RecordingCoordinator()
    store = Store(target or tmp_path / "webfl.sqlite3")
    return RoundEngine(TASK, store, coordinator, held_out(), seed), coordinator


class Volunteer:
    """A volunteer the test drives: joins, reports ready, reads tasks, sends updates."""

    def __init__(self, engine: RoundEngine, coordinator: RecordingCoordinator, peer_id: str, codecs=("none",)) -> None:
        self.engine, self.coordinator, self.id = engine, coordinator, peer_id
        coordinator.inbox[peer_id] = []
        engine.connect(peer_id, "test", "127.0.0.1", list(codecs))
        # What sockets.py sends after welcome: a fresh volunteer gets the full model.
        self.inbox.extend(decode(f) for f in engine.welcome_frames(peer_id, None, None))

    @property
    def inbox(self) -> list[Message]:
        return self.coordinator.inbox[self.id]

    def of(self, kind: str) -> list[Message]:
        return [m for m in self.inbox if m.type == kind]

    def ready(self, n: int = 100) -> None:
        self.engine.ready(self.id, n)

    def task(self) -> Message | None:
        tasks = self.of("task")
        return tasks[-1] if tasks else None

    async def update(self, delta: np.ndarray, n: int = 100, task: Message | None = None, codec: str = "none", **overrides):
        task = task or self.task()
        assert task is not None, f"{self.id} holds no task"
        delta = np.asarray(delta, np.float32)
        # "none" goes raw, as the socket tests send it, so NaN or a wrong size reaches the server.
        enc = Encoded({}, (delta,)) if codec == "none" else get_codec(codec).encode(delta, np.random.default_rng(0))
        fields = dict(round=task["round"], model_version=task["model_version"], num_examples=n, loss=1.0, accuracy=0.5,
                      codec=codec, codec_params=enc.params, token=task["token"])
        return await self.engine.submit(self.id, Message("update", {**fields, **overrides}, enc.arrays), 1000)

    def leave(self) -> None:
        self.engine.disconnect(self.id)
        del self.coordinator.inbox[self.id]


async def until(predicate, timeout: float = 5.0, what: str = "condition") -> None:
    """Yield to the engine until ``predicate()`` holds (no fixed sleeps)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def small(seed: int, scale: float = 0.01) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, scale, TASK.build_model().size).astype(np.float32)


def make_engine_with(
    tmp_path: Path, *ready: str, codecs=("none",), seed: int = 0, target: Path | PostgresURL | None = None
) -> tuple[RoundEngine, RecordingCoordinator, list[Volunteer]]:
    """:func:`make_engine` with the volunteers ``ready`` joined, then each ready for a task, in that order."""
    engine, coordinator = make_engine(tmp_path, seed, target)
    volunteers = [Volunteer(engine, coordinator, peer_id, codecs) for peer_id in ready]
    for v in volunteers:
        v.ready()
    return engine, coordinator, volunteers
