"""``GET /api/run-settings``: every field of ``RunConfig`` with its default, type and bounds.

The admin page builds its launch form from this, so the form's defaults and limits are
the API's by construction, and a setting added to ``RunConfig`` shows up in the form.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..engine import RunConfig
from ..rounds.config import LIMITS
from .admin_api import admin_only

__all__ = ["describe_run_settings", "routes"]

_TYPES = {int: "integer", float: "number", str: "string"}
#: Settings that are a JSON object (or null) rather than one value; the form edits them as JSON.
_JSON = {"dp", "secagg"}


def describe_run_settings() -> list[dict]:
    """One entry per ``RunConfig`` field, in declaration order:
    ``{"name", "type", "default", "min", "max"}`` (bounds only for numbers; ``type`` is
    ``"json"`` for an object setting such as ``dp``, whose default is null).

    Defaults are ``RunConfig()``'s as the API shows them (specs as their text), so a form
    built from this starts exactly where a body without that field would.
    """
    out = []
    for name, default in RunConfig().to_dict().items():
        entry: dict = {"name": name, "type": "json" if name in _JSON else _TYPES[type(default)], "default": default}
        if name in LIMITS:
            entry["min"], entry["max"] = LIMITS[name][:2]
        out.append(entry)
    return out


@admin_only
async def run_settings(request: Request) -> Response:
    return JSONResponse({"settings": describe_run_settings()})


routes = [Route("/api/run-settings", run_settings, methods=["GET"])]
