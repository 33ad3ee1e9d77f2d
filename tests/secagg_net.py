"""An in-process network for SecAgg rounds: a real ``RoundEngine`` and real learning-core
``Volunteer``s (native X25519/AES-GCM), their frames routed as ``sockets.py`` routes them,
with no sockets. Tests choose who vanishes at which stage and read what the server did."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from webfl import __version__
from webfl.core.codecs import CODECS
from webfl.core.data import Dataset
from webfl.core.protocol import Message, decode, encode
from webfl.core.secagg import Quantizer
from webfl.core.secagg.native import NativeCrypto
from webfl.core.secagg.runtime import answer
from webfl.core.secagg.wire import TYPES
from webfl.core.volunteer import SessionState, Volunteer
from webfl.server.coordinator import Coordinator, Subscription
from webfl.server.engine import RoundEngine, RunConfig
from webfl.server.store import Store

from rounds_harness import TASK, held_out


NATIVE = NativeCrypto()


class Wire(Coordinator):
    """Frames, as bytes, queued per volunteer."""

    def __init__(self) -> None:
        self.inbox: dict[str, list[bytes]] = {}

    def subscribe(self, volunteer_id: str) -> Subscription:
        raise NotImplementedError("the net reads inboxes directly")

    async def publish(self, frame: bytes, to: Iterable[str] | None = None) -> int:
        targets = list(self.inbox) if to is None else [v for v in to if v in self.inbox]
        for v in targets:
            self.inbox[v].append(frame)
        return len(targets)


class Net:
    """``vanish``: volunteer name -> the frame type after which (``sa_masked``: once it is
    sent) or before which (``"train"``: instead of training) it disconnects."""

    def __init__(self, tmp_path: Path, n: int, seed: int = 0, deferred: bool = False,
                 shards: list[Dataset] | None = None, test: Dataset | None = None) -> None:
        """``deferred``: the volunteers hand their cryptography out, as the browser's do, and
        the net answers it (natively) between frames, as the worker does with WebCrypto.
        ``shards``/``test``: real data (the bench); by default random digits."""
        self.wire = Wire()
        self.engine = RoundEngine(TASK, Store(tmp_path / "webfl.sqlite3"), self.wire, held_out() if test is None else test, seed)
        rng = np.random.default_rng(seed)
        #: Bytes and seconds by frame type: sent by volunteers (with the server's handling
        #: time), and received by them (with the volunteer's handling time, crypto included).
        self.up: Counter = Counter()
        self.down: Counter = Counter()
        self.server_s: Counter = Counter()
        self.client_s: Counter = Counter()
        self.volunteers: dict[str, Volunteer] = {}
        self.vanish: dict[str, str] = {}
        self.current: str | None = None  # the volunteer training now
        self.closed: dict[str, str] = {}  # volunteer -> the reason the server closed it
        self.codes: dict[str, int] = {}  # and the close code
        self.uploaded: set[str] = set()  # whose masked upload the server folded in
        #: volunteer -> (frame type, what it sends instead of that frame: a list of frames)
        self.tamper: dict[str, tuple[str, Callable[[Message], list[bytes]]]] = {}
        self.levels: dict[str, np.ndarray] = {}  # each masked upload's quantized levels (a spy on Quantizer)
        for i in range(n):
            data = shards[i] if shards is not None else Dataset(
                rng.integers(0, 256, (60, TASK.num_features), dtype=np.uint8), rng.integers(0, 10, 60, dtype=np.uint8))
            self.join(f"v{i}", Volunteer(data, agent="test", defer_crypto=deferred))

    def join(self, name: str, v: Volunteer) -> None:
        self.volunteers[name] = v
        self.wire.inbox[name] = []
        self.engine.connect(name, "test", "127.0.0.1", sorted(CODECS))  # what a volunteer's hello lists
        welcome = Message("welcome", {"version": __version__, "volunteer": name, "task": self.engine.task.to_dict(), "evaluate": False})
        self.wire.inbox[name] += [encode(welcome), *self.engine.welcome_frames(name, None, None)]

    def leave(self, name: str) -> None:
        self.engine.disconnect(name)
        del self.wire.inbox[name]
        self.volunteers.pop(name).close()

    async def send(self, name: str, frame: bytes) -> None:
        msg = decode(frame)
        kind, change = self.tamper.get(name, (None, None))
        if msg.type == kind:
            del self.tamper[name]
            for forged in change(msg):
                if name in self.volunteers:
                    await self.deliver(name, forged)
            return
        await self.deliver(name, frame)

    async def deliver(self, name: str, frame: bytes) -> None:
        """What ``sockets.py`` does with one frame from ``name``."""
        msg = decode(frame)
        self.up[msg.type] += len(frame)
        began = time.perf_counter()
        try:
            await self._deliver(name, msg, frame)
        finally:
            self.server_s[msg.type] += time.perf_counter() - began

    async def _deliver(self, name: str, msg: Message, frame: bytes) -> None:
        if msg.type == "ready":
            self.engine.ready(name, msg["num_examples"])
        elif msg.type in TYPES:
            refused = await self.engine.secagg(name, msg, len(frame))
            if refused is not None:
                self.closed[name] = refused.reason
                self.codes[name] = refused.code
                self.leave(name)
                return
            if msg.type == "sa_masked":
                self.uploaded.add(name)
        elif msg.type == "update":
            verdict = await self.engine.submit(name, msg, len(frame))
            reply = Message("accept", {"round": msg["round"]}) if verdict.accepted else Message(
                "reject", {"reason": verdict.reason, "round": msg["round"]})
            await self.wire.publish(encode(reply), to=[name])
        if self.vanish.get(name) == msg.type:
            self.leave(name)

    async def step(self) -> None:
        for name in list(self.volunteers):
            v = self.volunteers.get(name)
            while v is not None and name in self.wire.inbox and self.wire.inbox[name]:
                frame = self.wire.inbox[name].pop(0)
                kind = decode(frame).type
                began = time.perf_counter()
                outs = v.receive(frame)
                while v.crypto_request is not None:
                    outs += v.crypto_answer(answer(NATIVE, v.crypto_request))
                self.down[kind] += len(frame)
                self.client_s[kind] += time.perf_counter() - began
                for out in outs:
                    await self.send(name, out)
                v = self.volunteers.get(name)
            if v is not None and v.state is SessionState.TRAINING:
                if self.vanish.get(name) == "train":
                    self.leave(name)
                    continue
                self.current = name
                await self.send(name, v.train())  # (the training dominates: not timed as a stage)

    async def run(self, body: dict, until_rounds: int = 1, timeout: float = 60.0, monkeypatch=None,
                  observe: Callable[[], None] | None = None) -> None:
        """Start a run of ``body`` and pump frames until ``until_rounds`` are committed or
        abandoned; ``observe`` is called between steps (to read the status mid-round)."""
        if monkeypatch is not None:
            self._spy(monkeypatch)
        self.engine.start(RunConfig.from_json(body))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.engine.history) + len(self.abandoned()) < until_rounds:
            assert loop.time() < deadline, "the run did not finish its rounds in time"
            await self.step()
            if observe is not None:
                observe()
            await asyncio.sleep(0.002)
        await self.engine.stop()

    def abandoned(self) -> list:
        return self.engine.store.abandoned_rounds()

    def _spy(self, monkeypatch) -> None:
        """Record the levels each volunteer quantizes to (what the server must sum exactly)."""
        real, net = Quantizer.quantize, self

        def quantize(q, x, rng=None):
            levels = real(q, x, rng)
            net.levels[net.current] = levels
            return levels

        monkeypatch.setattr(Quantizer, "quantize", quantize)
