"""``GET /metrics`` in Prometheus' text format.

A custom collector reads each task's engine's public ``status()`` and the store at scrape
time, every series labelled with its ``task``:
nothing is counted on the hot path and no hook reaches into the engine. Totals that come
from committed rounds (rounds, accepted updates, bytes) are exact across restarts, since
the store keeps every committed round.

Served behind the admin token on the main address, and, with ``--metrics-port``, also
unauthenticated on its own bind address (keep that on loopback or a private network).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Iterator

import numpy as np
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..engine import PeerState, RoundEngine, RoundState
from ..rounds.funnel import ABANDON_REASONS
from ..rounds.validation import REASONS
from ..taskset import TaskSet
from .admin_api import admin_only
from .services import services

__all__ = ["DURATION_BUCKETS", "TaskCollector", "registry_for", "routes", "separate_listener"]

log = logging.getLogger("webfl.metrics")

#: Round durations in seconds: a demo round takes a few seconds, a deadline-bound one minutes.
DURATION_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
RUN_STATUSES = ("running", "completed", "stopped", "failed", "interrupted")


class TaskCollector(Collector):
    """Everything an operator watches, for every served task (each series labelled ``task``),
    computed from each engine's ``status()`` and store at scrape time."""

    def __init__(self, tasks: Iterable[RoundEngine]) -> None:
        """``tasks``: a ``TaskSet`` (read afresh at each scrape) or a fixed list of engines."""
        self.tasks = tasks

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for engine in self.tasks:
            for family in _task_metrics(engine):
                # Each task yields the same families: one family, the samples of every task.
                merged = families.setdefault(family.name, family)
                if merged is not family:
                    merged.samples.extend(family.samples)
        yield from families.values()


def _task_metrics(engine: RoundEngine) -> Iterator[Metric]:
    """One task's families, every sample labelled with its ``task``."""
    task = engine.task.name
    status = engine.status()
    runs = engine.store.runs()
    history = status["history"]

    def gauge(name: str, doc: str, value: float) -> Metric:
        family = GaugeMetricFamily(name, doc, labels=["task"])
        family.add_metric([task], value)
        return family

    def counter(name: str, doc: str, value: float) -> Metric:
        family = CounterMetricFamily(name, doc, labels=["task"])
        family.add_metric([task], value)
        return family

    volunteers = GaugeMetricFamily("webfl_volunteers", "Connected volunteers by state (as the server sees them)", labels=["task", "state"])
    for state in PeerState:
        volunteers.add_metric([task, state.value], status["volunteers"].get(state.value, 0))
    yield volunteers

    engine_state = GaugeMetricFamily("webfl_round_state", "1 for the round engine's current state", labels=["task", "state"])
    for state in RoundState:
        engine_state.add_metric([task, state.value], float(status["state"] == state.value))
    yield engine_state

    yield gauge("webfl_model_version", "Version of the global model", status["model_version"])
    privacy = (status["run"] or {}).get("privacy")
    if privacy is not None and privacy["epsilon"] is not None:
        # Only a finite guarantee is a value; a run without dp (or without noise) has none.
        epsilon = GaugeMetricFamily(
            "webfl_privacy_epsilon", "The current run's cumulative DP epsilon, by scope (run, task: all its runs)", labels=["task", "scope"]
        )
        epsilon.add_metric([task, "run"], privacy["epsilon"])
        if privacy["task_epsilon"] is not None:
            epsilon.add_metric([task, "task"], privacy["task_epsilon"])
        yield epsilon

    by_status = dict.fromkeys(RUN_STATUSES, 0)
    for run in runs:
        by_status[run["status"]] = by_status.get(run["status"], 0) + 1
    runs_metric = GaugeMetricFamily("webfl_runs", "Runs by status (stopped: by the operator; completed: all rounds done)", labels=["task", "status"])
    for name, count in by_status.items():
        runs_metric.add_metric([task, name], count)
    yield runs_metric

    yield counter("webfl_rounds_committed", "Rounds committed (FedBuff: buffer flushes)", len(history))
    abandoned = CounterMetricFamily("webfl_rounds_abandoned", "Rounds closed without a commit (model unchanged), by why", labels=["task", "why"])
    by_why = engine.store.abandoned_counts()
    for why in ABANDON_REASONS:
        abandoned.add_metric([task, why], by_why.get(why, 0))
    yield abandoned
    yield counter("webfl_updates_accepted", "Updates folded into committed rounds", sum(h["participants"] for h in history))
    yield counter(
        "webfl_updates_capped",
        "Updates of committed rounds whose weight was cut to max_examples",
        sum(h["funnel"]["capped"] for h in history if h["funnel"]),
    )
    rejected = CounterMetricFamily("webfl_rejections", "Refused updates and frames by reason (since the server started)", labels=["task", "reason"])
    counts = status["rejections"]
    for reason in REASONS:
        rejected.add_metric([task, reason], counts.get(reason, 0))
    yield rejected

    yield from _bytes(task, history, {run["id"]: run["config"] for run in runs})
    yield _durations(task, history)
    yield _commit_times(task, status["engine"]["commit_seconds"])

    evaluated = next((h for h in reversed(history) if h["accuracy"] is not None), None)
    if evaluated is not None:
        # The last evaluated model: on the server's held-out data, or federated over the
        # volunteers' holdouts (a new commit is evaluated within seconds).
        source = evaluated["eval_source"] or "server"
        accuracy = GaugeMetricFamily("webfl_test_accuracy", "Accuracy of the last evaluated model, by where it was evaluated", labels=["task", "source"])
        accuracy.add_metric([task, source], evaluated["accuracy"])
        yield accuracy
        loss = GaugeMetricFamily("webfl_test_loss", "Loss of the last evaluated model, by where it was evaluated", labels=["task", "source"])
        loss.add_metric([task, source], evaluated["loss"])
        yield loss


def _bytes(task: str, history: list[dict], configs: dict[int, dict]) -> Iterator[Metric]:
    """Bytes up by the run's update codec, bytes down by its downlink encoding."""
    up: dict[str, int] = defaultdict(int)
    down: dict[str, int] = defaultdict(int)
    for h in history:
        config = configs.get(h["run_id"], {})
        up[config.get("codec", "unknown")] += h["bytes_up"]
        down[config.get("downlink", "unknown")] += h["bytes_down"]
    up_metric = CounterMetricFamily("webfl_uplink", "Update bytes received in committed rounds, by codec", labels=["task", "codec"], unit="bytes")
    for codec, n in sorted(up.items()):
        up_metric.add_metric([task, codec], n)
    yield up_metric
    down_metric = CounterMetricFamily(
        "webfl_downlink", "Task and model bytes sent in committed rounds, by downlink", labels=["task", "downlink"], unit="bytes"
    )
    for downlink, n in sorted(down.items()):
        down_metric.add_metric([task, downlink], n)
    yield down_metric


def _durations(task: str, history: list[dict]) -> Metric:
    durations = np.array([h["duration_s"] for h in history], dtype=np.float64)
    cumulative = np.searchsorted(np.sort(durations), DURATION_BUCKETS, side="right")
    buckets = [(repr(b), int(c)) for b, c in zip(DURATION_BUCKETS, cumulative)] + [("+Inf", len(durations))]
    family = HistogramMetricFamily("webfl_round_duration", "Wall time of committed rounds", labels=["task"], unit="seconds")
    family.add_metric([task], buckets, float(durations.sum()))
    return family


def _commit_times(task: str, commits: dict) -> Metric:
    buckets = [(repr(b), c) for b, c in commits["buckets"]] + [("+Inf", commits["count"])]
    family = HistogramMetricFamily(
        "webfl_commit_duration",
        "Time to commit a round: aggregate, server step, evaluation, checkpoint, broadcast (since the server started)",
        labels=["task"],
        unit="seconds",
    )
    family.add_metric([task], buckets, commits["sum"])
    return family


def registry_for(tasks: TaskSet | RoundEngine) -> CollectorRegistry:
    """A registry of these tasks' own (not the process-global one: tests run several apps);
    an engine alone: its task's."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TaskCollector([tasks] if isinstance(tasks, RoundEngine) else tasks))
    return registry


def _exposition(request: Request) -> Response:
    return Response(generate_latest(registry_for(services(request).tasks)), media_type=CONTENT_TYPE_LATEST)


@admin_only
async def metrics(request: Request) -> Response:
    return _exposition(request)


routes = [Route("/metrics", metrics, methods=["GET"])]


@contextlib.asynccontextmanager
async def separate_listener(tasks: TaskSet, host: str, port: int | None) -> AsyncIterator[None]:
    """While open, serve ``/metrics`` without authentication on ``host:port`` (none if ``port`` is None).

    The listener runs in a thread of its own (a second uvicorn in the main thread would take
    over the main server's signal handlers); each scrape is computed on the main event loop,
    where the engine lives, so the collector never reads the engine from another thread.
    """
    if port is None:
        yield
        return
    loop = asyncio.get_running_loop()

    async def exposition() -> bytes:
        return generate_latest(registry_for(tasks))

    async def open_metrics(request: Request) -> Response:
        body = await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(exposition(), loop))
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    app = Starlette(routes=[Route("/metrics", open_metrics)])
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, lifespan="off", access_log=False, log_config=None))
    thread = threading.Thread(target=server.run, name="webfl-metrics", daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise OSError(f"cannot serve metrics on {host}:{port} (see the error above)")
        await asyncio.sleep(0.02)
    log.info("metrics served without authentication on http://%s:%d/metrics", host, port)
    try:
        yield
    finally:
        server.should_exit = True
        await asyncio.to_thread(thread.join, 10.0)
