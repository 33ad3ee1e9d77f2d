"""One process of ``bench/load.py``: many WebSocket volunteers on one event loop.

Each volunteer speaks the real protocol (``hello``, then ``ready`` once it holds the
model) and answers every ``task`` at once with a valid ``update``: a q8 payload encoded
once per process with the core's codec, in a frame that echoes the task's round, model
version and token. No training runs, so the server, not the generator, is measured.

The parent drives it over a ``multiprocessing`` pipe with ``(command, argument)``
tuples: ``("grow", n)`` opens connections until this process holds ``n`` (answers
``{"joined", "failed", "seconds"}``), ``("stats", None)`` answers the counters,
``("clear", None)`` forgets the first task's and the run end's times (a new phase begins),
``("stop", None)`` closes every socket and exits.
"""

from __future__ import annotations

import asyncio
import resource
import time
from collections import Counter
from multiprocessing.connection import Connection

import numpy as np
import websockets

from webfl import __version__
from webfl.core.codecs import Encoded, get_codec
from webfl.core.protocol import Message, decode, encode
from webfl.core.tasks import Task

CODEC = "q8"
#: Handshakes in flight at once per process: enough to keep the server's accept loop busy,
#: few enough not to overflow its listen backlog.
CONNECTING = 64
#: Frames up to this size are decoded once per process and distinct bytes: a commit's notice
#: is the same bytes for every volunteer, and decoding it 10,000 times (about 30 us each)
#: took the cores the server runs on. The same bytes decode to the same message, so what is
#: counted is what each volunteer received.
SMALL_FRAME = 4096
#: Distinct small frames remembered (tasks and their tokens differ; a full cache starts over).
DECODED_KEPT = 256


class Swarm:
    def __init__(self, url: str, seed: int) -> None:
        self.url, self.seed = url, seed
        self.payload: Encoded | None = None  # built from the first welcome's task
        self.hello = encode(Message("hello", {"version": __version__, "codecs": [CODEC], "agent": "webfl-load"}))
        self.ready = encode(Message("ready", {"num_examples": 100}))
        self.tasks: list[asyncio.Task] = []
        self.joined = 0  # welcomed, holding the model, ready at least once, still connected
        self.ever_joined = 0  # joined at some point (the difference left: dropped later)
        self.failed = 0  # never joined
        self.count: Counter[str] = Counter()  # frames and bytes in, by type; updates and verdicts
        self.closes: Counter[str] = Counter()  # why connections ended, by close code and reason
        self.first_task_at: float | None = None  # wall clock, comparable with the server's committed_at
        self.notice_at: dict[int, float] = {}  # model version: when the last volunteer here heard of it (wall clock)
        self.ended_at: float | None = None  # when the last volunteer here heard a run it saw running end (wall clock)
        self._gate = asyncio.Semaphore(CONNECTING)
        self._changed = asyncio.Event()
        self._decoded: dict[bytes, Message] = {}

    def _decode(self, frame: bytes) -> Message:
        if len(frame) > SMALL_FRAME:
            return decode(frame)
        if (msg := self._decoded.get(frame)) is None:
            if len(self._decoded) >= DECODED_KEPT:
                self._decoded.clear()
            msg = self._decoded[frame] = decode(frame)
        return msg

    def _payload(self, task: dict) -> Encoded:
        if self.payload is None:
            size = Task.from_dict(task).build_model().size
            delta = np.random.default_rng(self.seed).normal(0.0, 1e-3, size).astype(np.float32)
            self.payload = get_codec(CODEC).encode(delta, np.random.default_rng([self.seed, 1]))
        return self.payload

    def _update(self, task: Message) -> bytes:
        if task["codec"] != CODEC:
            raise RuntimeError(f"the run asks for codec {task['codec']!r}; the load generator precomputes {CODEC}")
        assert self.payload is not None
        fields = {
            "round": task["round"],
            "model_version": task["model_version"],
            "num_examples": 100,
            "loss": 1.0,
            "accuracy": 0.5,
            "codec": CODEC,
            "codec_params": self.payload.params,
            "token": task["token"],
        }
        return encode(Message("update", fields, self.payload.arrays))

    async def _volunteer(self) -> None:
        joined = False
        running = False  # a status or notice said a run is under way (not a welcome's end of an earlier one)
        try:
            async with self._gate:
                ws = await websockets.connect(self.url, compression=None, max_size=None, open_timeout=120, ping_interval=None, close_timeout=5)
            async with ws:
                await ws.send(self.hello)
                while True:
                    frame = await ws.recv()
                    msg = self._decode(frame)
                    self.count[f"{msg.type} frames"] += 1
                    self.count[f"{msg.type} bytes"] += len(frame)
                    self.count["bytes in"] += len(frame)
                    if msg.type == "welcome":
                        self._payload(msg["task"])
                    elif msg.type == "model" and not joined:
                        joined = True
                        self.joined += 1
                        self.ever_joined += 1
                        self._changed.set()
                        await ws.send(self.ready)
                    elif msg.type == "model_notice":
                        self.count[f"notice of model {msg['model_version']}"] += 1
                        self.notice_at[msg["model_version"]] = time.time()
                        running = msg.fields.get("ended") is None
                    elif msg.type == "status":
                        if running and msg.fields.get("ended") is not None:
                            self.count["run end"] += 1
                            self.ended_at = time.time()
                        running = msg.fields.get("ended") is None and msg.fields.get("run") is not None
                    elif msg.type == "task":
                        if self.first_task_at is None:
                            self.first_task_at = time.time()
                        await ws.send(self._update(msg))
                        self.count["updates sent"] += 1
                    elif msg.type in ("accept", "reject"):
                        self.count[msg.type] += 1
                        if msg.type == "reject":
                            self.closes[f"reject: {msg['reason']}"] += 1
                        await ws.send(self.ready)
        except asyncio.CancelledError:
            raise
        except websockets.ConnectionClosed as exc:
            self.closes[f"{exc.rcvd.code} {exc.rcvd.reason}" if exc.rcvd else "closed without a close frame"] += 1
        except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
            self.closes[f"connect: {type(exc).__name__}: {exc}"[:120]] += 1
        except Exception as exc:  # a frame the generator cannot answer: reported in the table, not lost
            self.closes[f"generator error: {type(exc).__name__}: {exc}"[:120]] += 1
        finally:
            if joined:
                self.joined -= 1
            else:
                self.failed += 1
            self._changed.set()

    async def grow(self, target: int, timeout_s: float) -> dict:
        """Start volunteers until ``target`` were started; return once each joined or failed."""
        started = time.monotonic()
        while len(self.tasks) < target:
            self.tasks.append(asyncio.create_task(self._volunteer()))
        deadline = started + timeout_s
        while self.ever_joined + self.failed < len(self.tasks):
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), deadline - time.monotonic())
            except TimeoutError:
                break
        return {**self.stats(), "seconds": time.monotonic() - started}

    def stats(self) -> dict:
        return {"joined": self.joined, "dropped": self.ever_joined - self.joined, "failed": self.failed, "count": dict(self.count), "closes": dict(self.closes), "first_task_at": self.first_task_at,
                "notice_at": dict(self.notice_at), "ended_at": self.ended_at}

    async def serve(self, conn: Connection) -> None:
        loop = asyncio.get_running_loop()
        commands: asyncio.Queue = asyncio.Queue()
        loop.add_reader(conn.fileno(), lambda: commands.put_nowait(conn.recv()))
        while True:
            command, arg = await commands.get()
            if command == "grow":
                conn.send(await self.grow(arg["target"], arg["timeout_s"]))
            elif command == "stats":
                conn.send(self.stats())
            elif command == "clear":  # a new phase: its first task and run end are still to come
                self.first_task_at = self.ended_at = None
                conn.send(self.stats())
            elif command == "stop":
                for task in self.tasks:
                    task.cancel()
                await asyncio.gather(*self.tasks, return_exceptions=True)
                conn.send(self.stats())
                return


def main(conn: Connection, url: str, seed: int) -> None:
    """Entry point of a generator process (``multiprocessing`` target)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(Swarm(url, seed).serve(conn))
