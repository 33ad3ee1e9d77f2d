"""``/api/tasks``: the tasks a server serves, and each task's runs, status, model and history.

``/api/tasks/{name}/...`` answers what today's task-less endpoints answer for the default
task (the same handlers, addressed by the path's ``{task}``). Definitions are public (a
volunteer sees them on the page anyway); creating or changing one (``PUT``) and
everything about runs needs the admin token.
"""

from __future__ import annotations

from functools import wraps

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ...core.tasks import Task
from ..taskset import TaskInUse
from . import admin_api, export
from .admin_api import Handler, admin_only
from .bodies import read_json
from .services import services

__all__ = ["routes"]


def _describe(task: Task, running: bool) -> dict:
    return {**task.to_json(), "running": running}


def _known(handler: Handler) -> Handler:
    """404 for a ``{task}`` the server does not serve, before the handler runs."""

    @wraps(handler)
    async def checked(request: Request) -> Response:
        name = request.path_params["task"]
        if name not in services(request).tasks:
            return JSONResponse({"error": f"no task named {name[:40]!r}"}, status_code=404)
        return await handler(request)

    return checked


async def list_tasks(request: Request) -> Response:
    svc = services(request)
    return JSONResponse({"tasks": [_describe(e.task, e.running) for e in svc.tasks], "default": svc.engine.task.name})


@_known
async def get_task(request: Request) -> Response:
    engine = services(request).tasks.get(request.path_params["task"])
    return JSONResponse(_describe(engine.task, engine.running))


@admin_only
async def create_task(request: Request) -> Response:
    try:
        task = Task.from_json(await read_json(request))
    except ValueError as exc:
        return JSONResponse({"error": str(exc)[:500]}, status_code=400)
    try:
        engine = services(request).tasks.add(task)
    except TaskInUse as exc:
        return JSONResponse({"error": str(exc)}, status_code=409)
    return JSONResponse(_describe(engine.task, False), status_code=201, headers={"Location": f"/api/tasks/{task.name}"})


@admin_only
@_known
async def replace_task(request: Request) -> Response:
    """Redefine a task (``TaskSet.replace``): 200 with the definition, 400 for a bad one, 409 when it cannot change now.

    A body without ``scaling`` keeps the task's (measured by federated statistics, or
    given) while the features stay the same: the operator's file rarely has the measured
    one, and dropping it would be a new model. ``"scaling": null`` asks for a new measurement.
    """
    name = request.path_params["task"]
    try:
        body = await read_json(request)
        if isinstance(body, dict):
            if body.get("name", name) != name:
                raise ValueError(f"name: the body names {str(body['name'])[:40]!r} but the path task {name!r} (a task cannot be renamed)")
            body = {"name": name, **body}
            current = services(request).tasks.get(name).task
            if "scaling" not in body and current.scaling is not None and body.get("features") == list(current.features):
                body["scaling"] = current.scaling.to_json()
        task = Task.from_json(body)
    except ValueError as exc:
        return JSONResponse({"error": str(exc)[:500]}, status_code=400)
    try:
        engine = await services(request).tasks.replace(task)
    except TaskInUse as exc:
        return JSONResponse({"error": str(exc)}, status_code=409)
    return JSONResponse(_describe(engine.task, False))


routes = [
    Route("/api/tasks", list_tasks, methods=["GET"]),
    Route("/api/tasks", create_task, methods=["POST"]),
    Route("/api/tasks/{task}", get_task, methods=["GET"]),
    Route("/api/tasks/{task}", replace_task, methods=["PUT"]),
    Route("/api/tasks/{task}/rounds", _known(admin_api.start_rounds), methods=["POST"]),
    Route("/api/tasks/{task}/rounds/stop", _known(admin_api.stop_rounds), methods=["POST"]),
    Route("/api/tasks/{task}/status", _known(admin_api.status), methods=["GET"]),
    Route("/api/tasks/{task}/model", _known(export.model), methods=["GET"]),
    Route("/api/tasks/{task}/history", _known(export.history), methods=["GET"]),
]
