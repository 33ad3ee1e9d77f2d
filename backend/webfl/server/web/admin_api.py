"""The admin JSON API: launch and stop runs, watch status (downloads: ``export``).

Every endpoint is behind ``admin_only``. Bodies are bounded (``bodies.BodyLimit``) and
parsed strictly; anything wrong with a run's settings, however it fails to parse (a
``ValueError`` or ``OverflowError`` from the settings or a spec's parser), is a 400
with the reason, never a 500, and never starts a run.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import wraps

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..cluster.forward import to_leader
from ..engine import NotLeader, RunActive, RunConfig
from .bodies import read_json
from .services import services, task_engine

__all__ = ["admin_only", "routes", "start_rounds", "status", "stop_rounds"]

Handler = Callable[[Request], Awaitable[Response]]


def admin_only(handler: Handler) -> Handler:
    """401 without credentials, 403 for a session without its CSRF header; else ``handler``."""

    @wraps(handler)
    async def guarded(request: Request) -> Response:
        auth = services(request).admin
        if not auth.is_admin(request):
            if auth.read_session(request) is not None:
                return JSONResponse({"error": "missing or wrong CSRF token: send the X-CSRF-Token header"}, status_code=403)
            return JSONResponse(
                {"error": "admin token required: send Authorization: Bearer <token>, or sign in at /admin"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        return await handler(request)

    return guarded


def _bad(exc: Exception) -> Response:
    return JSONResponse({"error": str(exc)[:500] or type(exc).__name__}, status_code=400)


@admin_only
async def start_rounds(request: Request) -> Response:
    engine = task_engine(request)
    if not engine.leading:
        return await _to_leader(request, engine.task.name)
    try:
        body = await read_json(request)
        if isinstance(body, dict):  # the task's training defaults, unless the run sets its own
            t = engine.task.training
            body = {"local_epochs": t.epochs, "batch_size": t.batch_size, "lr": t.lr, **body}
        config = RunConfig.from_json(body)
    except (ValueError, OverflowError) as exc:
        return _bad(exc)
    try:
        run_id = engine.start(config)
    except RunActive as exc:
        return JSONResponse({"error": str(exc)}, status_code=409)
    except NotLeader as exc:  # stepped down while the body came in
        return JSONResponse({"error": str(exc)}, status_code=503, headers={"Retry-After": "1"})
    except (ValueError, OverflowError) as exc:
        return _bad(exc)
    if engine.cluster is not None:  # stored before the answer: a member that relayed the request reads it (_to_leader)
        await engine.cluster.publish_status(engine)
    return JSONResponse({"run": run_id, "config": config.to_dict()}, status_code=202)


@admin_only
async def stop_rounds(request: Request) -> Response:
    engine = task_engine(request)
    if not engine.leading:
        return await _to_leader(request, engine.task.name)
    stopped = await engine.stop()
    if engine.cluster is not None:
        await engine.cluster.publish_status(engine)
    return JSONResponse({"stopped": stopped})


async def _to_leader(request: Request, task: str) -> Response:
    """A cluster follower passes run control on to the leader (``cluster.forward``)."""
    cluster = services(request).cluster
    assert cluster is not None, "only a cluster member is ever not leading"
    answer = await to_leader(request, cluster.leader_url(), cluster.describe()["leader"])
    if answer.status_code < 300:
        # Read-your-writes through this member too: the leader stored its new status before
        # answering, and the announcement of it may not have arrived here yet.
        await cluster.read_status(task)
    return answer


@admin_only
async def status(request: Request) -> Response:
    return JSONResponse(task_engine(request).status())


routes = [
    Route("/api/rounds", start_rounds, methods=["POST"]),
    Route("/api/rounds/stop", stop_rounds, methods=["POST"]),
    Route("/api/status", status, methods=["GET"]),
]
