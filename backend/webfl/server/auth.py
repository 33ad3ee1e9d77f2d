"""Admin authentication: a bearer token, compared in constant time."""

from __future__ import annotations

import hmac
import logging
import secrets
from collections.abc import Awaitable, Callable
from functools import wraps
from pathlib import Path

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

__all__ = ["load_admin_token", "is_admin", "admin_only"]

log = logging.getLogger("webfl.auth")


def load_admin_token(configured: str | None, data_dir: Path) -> tuple[str, bool]:
    """The configured token, else the one kept in ``data_dir``, else a new one.

    Returns ``(token, created)``; a created token is written with mode 0600 so
    only the operator can read it back.
    """
    if configured:
        return configured, False
    path = data_dir / "admin_token"
    if path.exists():
        return path.read_text().strip(), False
    token = secrets.token_urlsafe(32)
    data_dir.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(token + "\n")
    return token, True


def is_admin(request: Request) -> bool:
    expected: str = request.app.state.admin_token
    scheme, _, supplied = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(supplied.strip().encode(), expected.encode())


def admin_only(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    @wraps(handler)
    async def guarded(request: Request) -> Response:
        if not is_admin(request):
            return JSONResponse(
                {"error": "admin token required: send Authorization: Bearer <token>"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        return await handler(request)

    return guarded
