"""``GET /metrics`` in Prometheus' text format.

A custom collector reads the engine's public ``status()`` and the store at scrape time:
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
from collections.abc import AsyncIterator, Iterator

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
from .admin_api import admin_only
from .services import services

__all__ = ["DURATION_BUCKETS", "EngineCollector", "registry_for", "routes", "separate_listener"]

log = logging.getLogger("webfl.metrics")

#: Round durations in seconds: a demo round takes a few seconds, a deadline-bound one minutes.
DURATION_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
RUN_STATUSES = ("running", "completed", "stopped", "failed", "interrupted")


class EngineCollector(Collector):
    """Everything an operator watches, computed from ``engine.status()`` and ``engine.store``."""

    def __init__(self, engine: RoundEngine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        status = self.engine.status()
        runs = self.engine.store.runs()
        history = status["history"]

        volunteers = GaugeMetricFamily("webfl_volunteers", "Connected volunteers by state (as the server sees them)", labels=["state"])
        for state in PeerState:
            volunteers.add_metric([state.value], status["volunteers"].get(state.value, 0))
        yield volunteers

        engine_state = GaugeMetricFamily("webfl_round_state", "1 for the round engine's current state", labels=["state"])
        for state in RoundState:
            engine_state.add_metric([state.value], float(status["state"] == state.value))
        yield engine_state

        yield GaugeMetricFamily("webfl_model_version", "Version of the global model", value=status["model_version"])
        privacy = (status["run"] or {}).get("privacy")
        if privacy is not None and privacy["epsilon"] is not None:
            # Only a finite guarantee is a value; a run without dp (or without noise) has none.
            epsilon = GaugeMetricFamily("webfl_privacy_epsilon", "The current run's cumulative DP epsilon, by scope (run, task: all its runs)", labels=["scope"])
            epsilon.add_metric(["run"], privacy["epsilon"])
            if privacy["task_epsilon"] is not None:
                epsilon.add_metric(["task"], privacy["task_epsilon"])
            yield epsilon

        by_status = dict.fromkeys(RUN_STATUSES, 0)
        for run in runs:
            by_status[run["status"]] = by_status.get(run["status"], 0) + 1
        runs_metric = GaugeMetricFamily("webfl_runs", "Runs by status (stopped: by the operator; completed: all rounds done)", labels=["status"])
        for name, count in by_status.items():
            runs_metric.add_metric([name], count)
        yield runs_metric

        yield CounterMetricFamily("webfl_rounds_committed", "Rounds committed (FedBuff: buffer flushes)", value=len(history))
        abandoned = CounterMetricFamily("webfl_rounds_abandoned", "Rounds closed without a commit (model unchanged), by why", labels=["why"])
        by_why = self.engine.store.abandoned_counts()
        for why in ABANDON_REASONS:
            abandoned.add_metric([why], by_why.get(why, 0))
        yield abandoned
        yield CounterMetricFamily(
            "webfl_updates_accepted", "Updates folded into committed rounds", value=sum(h["participants"] for h in history)
        )
        yield CounterMetricFamily(
            "webfl_updates_capped",
            "Updates of committed rounds whose weight was cut to max_examples",
            value=sum(h["funnel"]["capped"] for h in history if h["funnel"]),
        )
        rejected = CounterMetricFamily("webfl_rejections", "Refused updates and frames by reason (since the server started)", labels=["reason"])
        counts = status["rejections"]
        for reason in REASONS:
            rejected.add_metric([reason], counts.get(reason, 0))
        yield rejected

        yield from _bytes(history, {run["id"]: run["config"] for run in runs})
        yield _durations(history)
        yield _commit_times(status["engine"]["commit_seconds"])

        if history and history[-1]["accuracy"] is not None:  # None: no server-side data for this task
            last = history[-1]
            yield GaugeMetricFamily("webfl_test_accuracy", "Held-out accuracy of the last committed model", value=last["accuracy"])
            yield GaugeMetricFamily("webfl_test_loss", "Held-out loss of the last committed model", value=last["loss"])


def _bytes(history: list[dict], configs: dict[int, dict]) -> Iterator[Metric]:
    """Bytes up by the run's update codec, bytes down by its downlink encoding."""
    up: dict[str, int] = defaultdict(int)
    down: dict[str, int] = defaultdict(int)
    for h in history:
        config = configs.get(h["run_id"], {})
        up[config.get("codec", "unknown")] += h["bytes_up"]
        down[config.get("downlink", "unknown")] += h["bytes_down"]
    up_metric = CounterMetricFamily("webfl_uplink", "Update bytes received in committed rounds, by codec", labels=["codec"], unit="bytes")
    for codec, n in sorted(up.items()):
        up_metric.add_metric([codec], n)
    yield up_metric
    down_metric = CounterMetricFamily(
        "webfl_downlink", "Task and model bytes sent in committed rounds, by downlink", labels=["downlink"], unit="bytes"
    )
    for downlink, n in sorted(down.items()):
        down_metric.add_metric([downlink], n)
    yield down_metric


def _durations(history: list[dict]) -> Metric:
    durations = np.array([h["duration_s"] for h in history], dtype=np.float64)
    cumulative = np.searchsorted(np.sort(durations), DURATION_BUCKETS, side="right")
    buckets = [(repr(b), int(c)) for b, c in zip(DURATION_BUCKETS, cumulative)] + [("+Inf", len(durations))]
    return HistogramMetricFamily(
        "webfl_round_duration", "Wall time of committed rounds", buckets=buckets, sum_value=float(durations.sum()), unit="seconds"
    )


def _commit_times(commits: dict) -> Metric:
    buckets = [(repr(b), c) for b, c in commits["buckets"]] + [("+Inf", commits["count"])]
    return HistogramMetricFamily(
        "webfl_commit_duration",
        "Time to commit a round: aggregate, server step, evaluation, checkpoint, broadcast (since the server started)",
        buckets=buckets,
        sum_value=commits["sum"],
        unit="seconds",
    )


def registry_for(engine: RoundEngine) -> CollectorRegistry:
    """A registry of this engine's own (not the process-global one: tests run several apps)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(engine))
    return registry


def _exposition(request: Request) -> Response:
    return Response(generate_latest(registry_for(services(request).engine)), media_type=CONTENT_TYPE_LATEST)


@admin_only
async def metrics(request: Request) -> Response:
    return _exposition(request)


routes = [Route("/metrics", metrics, methods=["GET"])]


@contextlib.asynccontextmanager
async def separate_listener(engine: RoundEngine, host: str, port: int | None) -> AsyncIterator[None]:
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
        return generate_latest(registry_for(engine))

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
