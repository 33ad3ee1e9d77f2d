"""The Starlette application: volunteers on ``/ws``, operators on ``/api``, pages and files.

The lifespan builds one ``Services`` object (engine, store, settings, signers, limits)
that every handler reads through ``web.services.services``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute

from .. import __version__
from ..core.tasks import Task, get_task
from .auth import AdminAuth, load_admin_token
from .config import Settings
from .coordinator import Coordinator, InProcessCoordinator
from .datadir import prepare_data_dir
from .datasets import DEMO_TASK, DemoShards
from .limits import AddressLimits, FrameRates
from .security import ResumeTokens
from .sockets import volunteer_socket
from .storage import DatabaseUnavailable
from .store import Store
from .taskset import TaskSet
from .web import admin_api, assets, config_api, export, metrics, models, pages, run_settings, signin, tasks_api
from .web.bodies import BodyLimit
from .web.headers import SecurityHeaders
from .web.services import Services, services

__all__ = ["create_app"]

log = logging.getLogger("webfl.app")


async def shard(request: Request) -> Response:
    svc = services(request)
    if svc.demo_shards is None or request.path_params["task"] != DEMO_TASK:
        return PlainTextResponse("unknown task", status_code=404)
    try:
        data = svc.demo_shards.shard_npz(request.path_params["index"])
    except IndexError:
        return PlainTextResponse("no such shard", status_code=404)
    return Response(data, media_type="application/octet-stream", headers={"Cache-Control": "public, max-age=86400"})


async def health(request: Request) -> Response:
    return JSONResponse({"ok": True, "version": __version__})


def _limits(settings: Settings) -> AddressLimits:
    return AddressLimits(
        settings.max_connections_per_ip,
        FrameRates(settings.conn_frames_per_s, settings.conn_frame_burst, settings.conn_bytes_per_s, settings.conn_byte_burst),
        FrameRates(settings.ip_frames_per_s, settings.ip_frame_burst, settings.ip_bytes_per_s, settings.ip_byte_burst),
        settings.logins_per_minute,
    )


def _given(settings: Settings) -> list[Task]:
    """The built-in named by ``--task`` (with ``--model``); MNIST when no task is named at all."""
    if settings.task is None and settings.tasks:
        return []
    return [get_task(settings.task or DEMO_TASK, settings.model)]


def create_app(settings: Settings) -> Starlette:
    given = _given(settings)  # an unknown name fails here, before the server listens

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict]:
        prepare_data_dir(settings.data_dir)
        token, created = load_admin_token(settings.admin_token, settings.data_dir)
        if created:
            print(f"webfl: admin token (kept in {settings.data_dir / 'admin_token'}): {token}", flush=True)
            if settings.database is not None:
                log.warning("this member generated its own admin token: members on one database must share WEBFL_ADMIN_TOKEN")
        store = Store(settings.store_target, keep_last=settings.keep_checkpoints, keep_every=settings.checkpoint_every)
        redis = cluster = None
        coordinator: Coordinator = InProcessCoordinator(settings.send_queue)
        if settings.redis is not None:
            from redis.asyncio import Redis  # the ``cluster`` extra

            from .cluster.bus import RedisCoordinator
            from .cluster.member import ClusterMember

            redis = Redis.from_url(settings.redis)
            coordinator = RedisCoordinator(redis, settings.member_id, settings.send_queue)
        served = {t.name for t in given} | {t.name for t in settings.tasks} | {d["name"] for d in store.task_definitions()}
        shards = None
        if DEMO_TASK in served:
            shards = DemoShards(settings.datasets_dir / f"{DEMO_TASK}.npz", settings.demo_partition, settings.demo_shards, settings.seed)
        # Only the demo has data on the server; every other task is evaluated on the devices.
        tasks = TaskSet(store, coordinator, settings.seed, lambda t: shards.test if shards is not None and t.name == DEMO_TASK else None)
        tasks.load([*settings.tasks, *given], settings.task)
        if redis is not None:
            cluster = ClusterMember(redis, settings.member_id, settings.lease_s, tasks, store, coordinator, settings.max_frame_bytes,
                                    settings.member_url)
        svc = Services(
            settings=settings,
            tasks=tasks,
            store=store,
            coordinator=coordinator,
            demo_shards=shards,
            admin=AdminAuth(token, store, settings.data_dir),
            resume_tokens=ResumeTokens(store.secret("resume_tokens")),
            limits=_limits(settings),
            cluster=cluster,
        )
        if cluster is None:
            tasks.resume()  # runs a crash interrupted carry on
        else:
            await cluster.start()  # the leader resumes them, now or when it takes over
        try:
            async with metrics.separate_listener(tasks, settings.metrics_host, settings.metrics_port):
                yield {"services": svc}
        finally:
            if cluster is not None:
                await cluster.stop()
            await tasks.stop()
            store.close()
            if redis is not None:
                await redis.aclose()

    routes = [
        WebSocketRoute("/ws", volunteer_socket),
        Route("/healthz", health),
        Route("/data/{task}/shards/{index:int}.npz", shard),
        *admin_api.routes,
        *tasks_api.routes,
        *export.routes,
        *models.routes,
        *run_settings.routes,
        *metrics.routes,
        *config_api.routes,
        *signin.routes,
        *pages.routes,
        # Files last: they mount prefixes.
        *assets.routes,
    ]
    middleware = [Middleware(SecurityHeaders), Middleware(BodyLimit, max_bytes=settings.max_body_bytes)]
    return Starlette(routes=routes, lifespan=lifespan, middleware=middleware, exception_handlers={DatabaseUnavailable: _database_unavailable})


async def _database_unavailable(request: Request, exc: Exception) -> Response:
    """A request the shared database could not answer: 503 with the reason, and the member stays up."""
    log.warning("%s %s: %s", request.method, request.url.path, exc)
    return JSONResponse({"error": str(exc)}, status_code=503, headers={"Retry-After": "5"})
