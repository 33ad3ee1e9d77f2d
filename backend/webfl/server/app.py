"""The Starlette application: volunteers on ``/ws``, operators on ``/api``."""

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
from ..core.tasks import get_task
from . import admin, export, metrics, pages, run_settings
from .auth import load_admin_token
from .config import Settings
from .coordinator import InProcessCoordinator
from .datasets import DemoShards
from .engine import RoundEngine
from .limits import AddressLimits, FrameRates
from .security import ResumeTokens, SecurityHeaders
from .sockets import volunteer_socket
from .store import Store

__all__ = ["create_app"]

log = logging.getLogger("webfl.app")


async def shard(request: Request) -> Response:
    shards: DemoShards = request.app.state.demo_shards
    if request.path_params["task"] != request.app.state.engine.task.name:
        return PlainTextResponse("unknown task", status_code=404)
    try:
        data = shards.shard_npz(request.path_params["index"])
    except IndexError:
        return PlainTextResponse("no such shard", status_code=404)
    return Response(data, media_type="application/octet-stream", headers={"Cache-Control": "public, max-age=86400"})


async def health(request: Request) -> Response:
    return JSONResponse({"ok": True, "version": __version__})


def create_app(settings: Settings) -> Starlette:
    task = get_task(settings.task, settings.model)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        token, created = load_admin_token(settings.admin_token, settings.data_dir)
        if created:
            print(f"webfl: admin token (kept in {settings.data_dir / 'admin_token'}): {token}", flush=True)
        store = Store(settings.data_dir / "webfl.sqlite3")
        shards = DemoShards(settings.datasets_dir / f"{task.name}.npz", settings.demo_partition, settings.demo_shards, settings.seed)
        coordinator = InProcessCoordinator(settings.send_queue)
        app.state.settings = settings
        app.state.admin_token = token
        app.state.coordinator = coordinator
        app.state.demo_shards = shards
        app.state.address_limits = AddressLimits(
            settings.max_connections_per_ip,
            FrameRates(settings.conn_frames_per_s, settings.conn_frame_burst, settings.conn_bytes_per_s, settings.conn_byte_burst),
            FrameRates(settings.ip_frames_per_s, settings.ip_frame_burst, settings.ip_bytes_per_s, settings.ip_byte_burst),
            settings.logins_per_minute,
        )
        app.state.resume_tokens = ResumeTokens()
        app.state.engine = RoundEngine(task, store, coordinator, shards.test, settings.seed)
        app.state.engine.resume()  # a run a crash interrupted carries on
        try:
            async with metrics.separate_listener(app, settings.metrics_host, settings.metrics_port):
                yield
        finally:
            await app.state.engine.stop()
            store.close()

    routes = [
        WebSocketRoute("/ws", volunteer_socket),
        Route("/healthz", health),
        Route("/data/{task}/shards/{index:int}.npz", shard),
        *admin.routes,
        *export.routes,
        *run_settings.routes,
        *metrics.routes,
        # Pages, static files and the browser's runtime (after the API: it mounts prefixes).
        *pages.routes,
    ]
    return Starlette(routes=routes, lifespan=lifespan, middleware=[Middleware(SecurityHeaders)])
