"""The admin JSON API: launch and stop runs, watch status (downloads are in ``export``)."""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .auth import admin_only
from .engine import RoundEngine, RunActive, RunConfig

__all__ = ["routes"]


def _engine(request: Request) -> RoundEngine:
    return request.app.state.engine


@admin_only
async def start_rounds(request: Request) -> Response:
    try:
        body = json.loads(await request.body() or b"{}")
        config = RunConfig.from_json(body)
    except ValueError as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    try:
        run_id = _engine(request).start(config)
    except RunActive as exc:
        return JSONResponse({"error": str(exc)}, status_code=409)
    except ValueError as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    return JSONResponse({"run": run_id, "config": config.to_dict()}, status_code=202)


@admin_only
async def stop_rounds(request: Request) -> Response:
    return JSONResponse({"stopped": await _engine(request).stop()})


@admin_only
async def status(request: Request) -> Response:
    return JSONResponse(_engine(request).status())


routes = [
    Route("/api/rounds", start_rounds, methods=["POST"]),
    Route("/api/rounds/stop", stop_rounds, methods=["POST"]),
    Route("/api/status", status, methods=["GET"]),
]
