"""``GET /api/run-settings``: every field of ``RunConfig`` with its default, type and bounds.

The admin page builds its launch form from this, so the form's defaults and limits are
the API's by construction, and a setting added to ``RunConfig`` shows up in the form.
"""

from __future__ import annotations

from dataclasses import MISSING, fields

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .auth import admin_only
from .engine import RunConfig

__all__ = ["describe_run_settings", "routes"]

_TYPES = {int: "integer", float: "number", str: "string"}


def describe_run_settings() -> list[dict]:
    """One entry per ``RunConfig`` field, in declaration order:
    ``{"name", "type", "default", "min", "max"}`` (bounds only for numbers)."""
    out = []
    for f in fields(RunConfig):
        assert f.default is not MISSING, f"RunConfig.{f.name} needs a default"
        kind = type(f.default)
        entry: dict = {"name": f.name, "type": _TYPES[kind], "default": f.default}
        if kind in (int, float):
            entry["min"], entry["max"] = RunConfig._LIMITS[f.name]
        out.append(entry)
    return out


@admin_only
async def run_settings(request: Request) -> Response:
    return JSONResponse({"settings": describe_run_settings()})


routes = [Route("/api/run-settings", run_settings, methods=["GET"])]
