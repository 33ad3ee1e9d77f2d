"""Simulated volunteers: the learning core's ``Volunteer`` over real WebSockets.

Each simulated volunteer holds its own shard of the task's data (its "device data":
a task's CSV or image folder given with ``--data``, else a built-in task's shipped data, split by
``partition``: iid, or Dirichlet over the labels), connects to ``/ws`` like a browser does, trains when selected and
reconnects by itself when the server goes away. Training runs in a thread pool
(NumPy releases the GIL) so the event loop keeps every socket alive.

A ``wait`` from the server (pace steering) is honoured: the volunteer disconnects and
comes back after ``retry_after_s``. ``Behaviour`` adds the real world's mess:

* ``churn``: after each job (and every ``churn_period_s`` idle) a volunteer leaves with
  this probability and comes back after an exponential time (mean ``away_s``);
* ``speed_spread`` X: each volunteer is slower by a factor drawn log-uniformly from
  [1, X], applied as a sleep of ``(factor - 1) * training time`` after training;
* ``dropout`` P: a volunteer given a task vanishes mid-training with probability P: it
  goes silent (keeps the socket, never answers) for ``away_s`` on average, then leaves;
* ``secagg_dropout`` P: in every secure-aggregation round, round(P * n) of the n selected
  (the same ones for every simulated volunteer, drawn per round from the seed) leave right
  after uploading their masked update, before unmasking, and come back after ``away_s``.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import math
import os
import random
import sys
import time
from dataclasses import dataclass
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import websockets

from . import __version__
from .build.paths import DATASETS_DIR
from .core.attacks import make_volunteer
from .core.data import Dataset, load_image_folder, load_npz, partition as split_shards
from .core.tasks import Kind, Task
from .core.training import check_bounds
from .core.protocol import CLOSE_POLICY, CLOSE_PROTOCOL_ERROR, CLOSE_UNSUPPORTED
from .core.volunteer import SessionState, TrainingDiverged, Volunteer

__all__ = ["AdminClient", "Behaviour", "ServerUnreachable", "Simulation", "call", "launch_once", "local_data"]

log = logging.getLogger("webfl.simulate")

# The server refused us for good: reconnecting would be refused again.
_FATAL_CLOSE = {CLOSE_POLICY, CLOSE_PROTOCOL_ERROR, CLOSE_UNSUPPORTED}

#: How long the status may show no run, or an earlier one, before the run launched counts
#: as gone: longer than a cluster member's copy of the leader's status lags (a beat, 1 s).
UNSEEN_S = 5.0


class ServerUnreachable(Exception):
    """The admin API did not answer: no connection, a broken one, or a 5xx from a proxy.

    The server may be restarting or failing over; the request may or may not have
    reached it.
    """


class AdminClient:
    """The admin JSON API over plain HTTP (stdlib only)."""

    def __init__(self, server: str, token: str | None) -> None:
        self.server, self.token = server.rstrip("/"), token

    def request(self, method: str, path: str, body: dict | None = None) -> dict:
        """One attempt; raises ``ServerUnreachable`` for what a retry may cure, ``RuntimeError`` otherwise."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            if exc.code >= 500:  # a proxy in front of a server that is down, or a server error
                raise ServerUnreachable(f"{method} {path}: HTTP {exc.code}: {detail}") from None
            raise RuntimeError(f"{method} {path}: HTTP {exc.code}: {detail}") from None
        except (OSError, http.client.HTTPException, json.JSONDecodeError) as exc:
            # URLError (refused), resets, timeouts, a body cut short by a kill -9.
            raise ServerUnreachable(f"{method} {path}: {exc}") from None


async def call(admin: AdminClient, method: str, path: str, body: dict | None, deadline: float) -> dict:
    """An admin request retried with jittered exponential backoff while the server is
    unreachable (a restart or a failover), until ``deadline`` (``time.monotonic()``).

    Only for requests that are safe to repeat: launching a run is not (``launch_once``).
    """
    backoff, down_since = 0.2, None
    rng = random.Random()
    while True:
        try:
            reply = await asyncio.to_thread(admin.request, method, path, body)
        except ServerUnreachable as exc:
            if down_since is None:
                down_since = time.monotonic()
                print(f"webfl simulate: server unreachable ({exc}); retrying", file=sys.stderr, flush=True)
            if time.monotonic() + backoff > deadline:
                raise TimeoutError from None
            await asyncio.sleep(backoff * (0.5 + rng.random()))
            backoff = min(backoff * 2, 5.0)
            continue
        if down_since is not None:
            print(f"webfl simulate: server back after {time.monotonic() - down_since:.1f} s", file=sys.stderr, flush=True)
        return reply


async def launch_once(admin: AdminClient, run_config: dict, deadline: float, api: str = "/api") -> tuple[int, dict]:
    """Start a run exactly once, even if the server goes away mid-request; returns its
    id and config.

    A ``POST /api/rounds`` that got no answer may have started the run (a restarted
    server then resumes it by itself), so it is never blindly repeated: the status is
    read again, and a run other than the one shown before the POST is ours. ``api``:
    ``/api`` (the default task) or ``/api/tasks/NAME``.
    """
    status = await call(admin, "GET", f"{api}/status", None, deadline)
    before = status["run"]["id"] if status["run"] else None
    while True:
        try:
            started = await asyncio.to_thread(admin.request, "POST", f"{api}/rounds", run_config)
            return started["run"], started["config"]
        except ServerUnreachable as exc:
            print(f"webfl simulate: launching the run: {exc}; checking whether it started", file=sys.stderr, flush=True)
        status = await call(admin, "GET", f"{api}/status", None, deadline)
        if status["run"] and status["run"]["id"] != before:
            return status["run"]["id"], status["run"]["config"]
        if time.monotonic() > deadline:
            raise TimeoutError
        await asyncio.sleep(0.5)  # it never reached the server: launching again is safe


def local_data(task: Task, data: Path | None, datasets_dir: Path = DATASETS_DIR) -> Dataset:
    """The examples the simulated volunteers share: a CSV of a tabular ``task``'s, or an
    image folder of an image task's (one sub-folder per class), else the built-in's
    shipped data (its training split, for a task the server also evaluates)."""
    if data is not None:
        if task.kind is Kind.IMAGE:
            if not data.is_dir():
                raise ValueError(f"{data}: {task.name} is an image task: --data takes a folder with one sub-folder per class")
            pixels, labels = load_image_folder(data, (task.height, task.width, task.channels), task.classes)
            dataset = task.images(pixels, labels)
            assert isinstance(dataset, Dataset)
            return dataset
        if data.is_dir():
            raise ValueError(f"{data}: {task.name} is a tabular task: --data takes a CSV file, not a folder")
        try:
            return task.parse_csv(data.read_bytes())
        except OSError as exc:
            raise ValueError(f"{data}: {exc.strerror or exc}") from None
    if task.kind is Kind.TABULAR:
        return task.parse_csv((datasets_dir / f"{task.name}.csv").read_bytes())
    return load_npz(datasets_dir / f"{task.name}.npz", "train")


def _evaluation(entry: dict) -> str:
    if entry["accuracy"] is None:
        return "not evaluated"
    where = "federated over {} examples".format(entry["eval_examples"]) if entry["eval_source"] == "federated" else entry["eval_source"]
    return f"accuracy {entry['accuracy']:.4f}  loss {entry['loss']:.4f} ({where})"


#: A fraction's bounds, as :func:`check_bounds` takes them.
PROBABILITY = (0.0, 1.0, True)


def pick_malicious(clients: int, fraction: float, seed: int) -> list[int]:
    """Which of ``clients`` volunteers attack: ``round(fraction * clients)`` of them."""
    check_bounds("--malicious", fraction, PROBABILITY)
    count = int(round(fraction * clients))
    return sorted(random.Random(seed).sample(range(clients), count))


@dataclass(frozen=True)
class Behaviour:
    churn: float = 0.0
    speed_spread: float = 1.0
    dropout: float = 0.0
    away_s: float = 10.0
    churn_period_s: float = 5.0
    #: SecAgg rounds: this fraction (rounded) of the cohort vanishes after uploading its masked update, before unmasking.
    secagg_dropout: float = 0.0

    def __post_init__(self) -> None:
        check_bounds("churn", self.churn, PROBABILITY)
        check_bounds("dropout", self.dropout, PROBABILITY)
        check_bounds("secagg_dropout", self.secagg_dropout, PROBABILITY)
        if self.speed_spread < 1:
            raise ValueError("speed_spread must be >= 1")


class _Leave(Exception):
    """The simulated volunteer leaves for ``seconds``."""

    def __init__(self, seconds: float, why: str) -> None:
        self.seconds, self.why = seconds, why


class Simulation:
    def __init__(
        self,
        server: str,
        clients: int,
        partition: str = "iid",
        seed: int = 0,
        token: str | None = None,
        task: Task | None = None,
        data: Path | None = None,
        datasets_dir: Path = DATASETS_DIR,
        behaviour: Behaviour = Behaviour(),
        malicious: float = 0.0,
        attack: str | None = None,
    ) -> None:
        self.server = server.rstrip("/")
        self.ws_url = self.server.replace("https://", "wss://", 1).replace("http://", "ws://", 1) + "/ws"
        self.admin = AdminClient(self.server, token)
        #: None: the server's default task (MNIST, as before tasks had names).
        self.task = task
        self.api = "/api" if task is None else f"/api/tasks/{task.name}"
        train = load_npz(datasets_dir / "mnist.npz", "train") if task is None else local_data(task, data, datasets_dir)
        self.shards: list[Dataset] = [train.take(idx) for idx in split_shards(train.y, clients, partition, seed)]
        #: Indices of the volunteers that attack (``--malicious`` of them, chosen by ``seed``).
        self.malicious = pick_malicious(clients, malicious, seed) if attack else []
        agent = f"webfl-simulate/{__version__}"
        self.volunteers: list[Volunteer] = [
            make_volunteer(shard, attack if i in self.malicious else None, seed=seed * 1009 + i, agent=agent,
                           task_name=None if task is None else task.name, holdout_seed=seed * 1009 + i)
            for i, shard in enumerate(self.shards)
        ]
        self._pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 2)
        self._stopping = asyncio.Event()
        self.seed = seed
        self.behaviour = behaviour
        rng = random.Random(seed)
        self.slowdown = [math.exp(rng.uniform(0, math.log(behaviour.speed_spread))) for _ in self.volunteers]
        self.events = {"waits": 0, "churned": 0, "dropped": 0}

    async def _session(self, ws, v: Volunteer, index: int, rng: random.Random) -> None:
        """One connection: returns when the server closes; raises ``_Leave`` to go away."""
        b, loop = self.behaviour, asyncio.get_running_loop()
        await ws.send(v.hello())
        while True:
            try:
                timeout = b.churn_period_s if b.churn and v.state is SessionState.IDLE else None
                frame = await asyncio.wait_for(ws.recv(), timeout)
            except websockets.ConnectionClosedOK:
                return
            except TimeoutError:
                if rng.random() < b.churn:
                    self.events["churned"] += 1
                    raise _Leave(rng.expovariate(1 / b.away_s), "churn") from None
                continue
            verdict = v.last_verdict
            for out in v.receive(frame):
                await ws.send(out)
            if (wait := v.take_wait()) is not None:
                self.events["waits"] += 1
                raise _Leave(wait, "pace steering")
            if v.state is SessionState.TRAINING:
                started = time.monotonic()
                if rng.random() < b.dropout:
                    # Vanish mid-training: silent on an open socket, then gone.
                    self.events["dropped"] += 1
                    await asyncio.sleep(rng.expovariate(1 / b.away_s))
                    raise _Leave(rng.expovariate(1 / b.away_s), "dropout")
                try:
                    update = await loop.run_in_executor(self._pool, v.train)
                except TrainingDiverged as exc:
                    log.warning("volunteer %d: %s", index, exc)
                    for out in exc.frames:
                        await ws.send(out)
                    continue
                if self.slowdown[index] > 1:
                    await asyncio.sleep((self.slowdown[index] - 1) * (time.monotonic() - started))
                seat = v.secagg_seat
                await ws.send(update)
                if seat is not None and seat[1] in self._secagg_dropped(*seat):
                    self.events["dropped"] += 1
                    raise _Leave(rng.expovariate(1 / b.away_s), "secagg dropout")
            elif b.churn and v.last_verdict is not verdict:  # a job just ended
                if rng.random() < b.churn:
                    self.events["churned"] += 1
                    raise _Leave(rng.expovariate(1 / b.away_s), "churn")

    def _secagg_dropped(self, round_: int, index: int, n: int) -> set[int]:
        """The cohort indices that vanish after masking in SecAgg round ``round_``: the same
        ``round(secagg_dropout * n)`` of them for every simulated volunteer, drawn per round."""
        count = round(self.behaviour.secagg_dropout * n)
        return set(random.Random(f"{self.seed}/secagg/{round_}").sample(range(n), count)) if count else set()

    async def _drive(self, v: Volunteer, index: int) -> None:
        rng = random.Random(self.seed * 7919 + index)
        backoff = 0.2
        while not self._stopping.is_set():
            try:
                async with websockets.connect(self.ws_url, compression=None, max_size=None, open_timeout=10) as ws:
                    backoff = 0.2
                    try:
                        await self._session(ws, v, index, rng)
                    except _Leave as leave:
                        log.debug("volunteer %d leaves for %.1f s (%s)", index, leave.seconds, leave.why)
                        await ws.close()
                        v.close()
                        await asyncio.sleep(leave.seconds)
                        continue
            except websockets.ConnectionClosed as exc:
                if exc.rcvd is not None and exc.rcvd.code in _FATAL_CLOSE:
                    log.error("volunteer %d refused by the server: %s", index, exc.rcvd.reason)
                    return
            except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
                log.debug("volunteer %d: cannot connect: %s", index, exc)
            v.close()
            # Jittered exponential backoff, so a restarted server is not stampeded.
            await asyncio.sleep(backoff * (0.5 + rng.random()))
            backoff = min(backoff * 2, 5.0)

    async def main(self, run_config: dict | None, timeout_s: float = 600.0) -> int:
        """Run the volunteers; with ``run_config``, launch a run and return when it ends."""
        drivers = [asyncio.create_task(self._drive(v, i)) for i, v in enumerate(self.volunteers)]
        try:
            if run_config is None:
                await asyncio.wait_for(self._stopping.wait(), timeout_s)
                return 0
            return await self._run_rounds(run_config, timeout_s)
        except TimeoutError:
            print("webfl simulate: timed out", file=sys.stderr)
            return 1
        finally:
            self._stopping.set()
            for d in drivers:
                d.cancel()
            await asyncio.gather(*drivers, return_exceptions=True)
            self._pool.shutdown(wait=False, cancel_futures=True)

    async def _run_rounds(self, run_config: dict, timeout_s: float) -> int:
        """Launch a run and follow it to its end; committed rounds are counted by the
        history (entries of this run), which survives a server restart."""
        deadline = time.monotonic() + timeout_s
        run_id, config = await launch_once(self.admin, run_config, deadline, self.api)
        print(f"webfl simulate: run {run_id} started with {len(self.volunteers)} volunteers: {config}", flush=True)
        wanted, printed, unseen_since = run_config.get("rounds", 1), set(), None
        # Rounds are printed once evaluated (on the server's data, or federated within
        # seconds of the commit); with no holdout nothing is evaluated, so none is waited for.
        evaluated = (lambda e: e["eval_source"] is not None) if self.task is None or self.task.holdout else (lambda e: True)
        while time.monotonic() < deadline:
            status = await call(self.admin, "GET", f"{self.api}/status", None, deadline)
            mine = [entry for entry in status["history"] if entry["run_id"] == run_id]
            for entry in mine:
                if entry["round"] in printed or not evaluated(entry):
                    continue
                printed.add(entry["round"])
                print(
                    f"round {entry['round']:>4}  {_evaluation(entry)}  "
                    f"participants {entry['participants']:>3}  up {entry['bytes_up'] / 1e6:.2f} MB  "
                    f"down {entry['bytes_down'] / 1e6:.2f} MB  {entry['duration_s']:.2f} s",
                    flush=True,
                )
            run, now = status["run"], time.monotonic()
            # A restarted server resumes an interrupted run at start-up, before it answers.
            # A status showing no run, or an earlier one, may be from before ours (a cluster
            # member's copy of the leader's is a beat behind): only if it stays that way did
            # ours end unseen (not resumable). A later run, or ours stopped, failed or done: ended.
            if run is not None and run["id"] >= run_id:
                unseen_since, ended = None, run["id"] > run_id or not run["running"]
            else:
                unseen_since = unseen_since or now
                ended = now - unseen_since > UNSEEN_S
            if (len(mine) >= wanted and evaluated(mine[-1])) or (ended and len(mine) < wanted):
                done = len(mine) >= wanted
                print(f"webfl simulate: run {run_id} {'completed' if done else 'ended early'} with {len(mine)} round(s)", flush=True)
                return 0 if done else 1
            await asyncio.sleep(0.5)
        raise TimeoutError
