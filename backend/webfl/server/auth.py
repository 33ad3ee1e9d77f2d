"""Admin authentication: a bearer token for scripts, a signed session cookie for the admin page.

Two ways in, one gate (``is_admin``):

- ``Authorization: Bearer <token>``, compared in constant time (scripts, the simulator).
- The ``webfl_admin`` cookie the admin page's login form sets: HttpOnly, SameSite=Strict,
  expiring, and signed (HMAC-SHA256) with a secret kept in the data dir, so the server
  stores no sessions. It carries a tag of the admin token, so changing the token ends
  every session. Requests that change anything (POST) must also send the session's CSRF
  token in ``X-CSRF-Token`` (fetch) or a ``csrf`` form field: SameSite=Strict already stops
  cross-site requests from carrying the cookie, the token covers same-site attackers
  (another port on the same host is the same *site*).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import wraps
from pathlib import Path

from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response

__all__ = [
    "CSRF_HEADER",
    "SESSION_COOKIE",
    "Session",
    "admin_only",
    "clear_session",
    "is_admin",
    "load_admin_token",
    "load_session_secret",
    "read_session",
    "start_session",
    "token_matches",
]

log = logging.getLogger("webfl.auth")

SESSION_COOKIE = "webfl_admin"
CSRF_HEADER = "x-csrf-token"
SESSION_TTL_S = 8 * 3600
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _create_private(path: Path, content: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(content)


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
    _create_private(path, token + "\n")
    return token, True


def load_session_secret(data_dir: Path) -> bytes:
    """The key that signs session cookies; kept in ``data_dir`` so sessions survive restarts."""
    path = data_dir / "session_secret"
    if path.exists():
        return bytes.fromhex(path.read_text().strip())
    key = secrets.token_bytes(32)
    _create_private(path, key.hex() + "\n")
    return key


def token_matches(conn: HTTPConnection, supplied: str) -> bool:
    expected: str = conn.app.state.admin_token
    return hmac.compare_digest(supplied.strip().encode(), expected.encode())


# -- sessions ---------------------------------------------------------------------


@dataclass(frozen=True)
class Session:
    id: str
    expires: int
    csrf: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _secret(conn: HTTPConnection) -> bytes:
    state = conn.app.state
    # Loaded on first use so the app's lifespan needs no extra step.
    if getattr(state, "session_secret", None) is None:
        state.session_secret = load_session_secret(state.settings.data_dir)
    return state.session_secret


def _mac(conn: HTTPConnection, purpose: bytes, data: bytes) -> bytes:
    return hmac.new(_secret(conn), purpose + b"\0" + data, hashlib.sha256).digest()


def _token_tag(conn: HTTPConnection) -> str:
    return _b64(_mac(conn, b"token", conn.app.state.admin_token.encode())[:12])


def _session(conn: HTTPConnection, sid: str, expires: int) -> Session:
    return Session(sid, expires, _b64(_mac(conn, b"csrf", sid.encode())))


def start_session(request: Request, response: Response) -> Session:
    """Log the browser in: set a fresh signed session cookie on ``response``."""
    session = _session(request, secrets.token_urlsafe(16), int(time.time()) + SESSION_TTL_S)
    payload = _b64(json.dumps({"sid": session.id, "exp": session.expires, "tag": _token_tag(request)}).encode())
    value = f"{payload}.{_b64(_mac(request, b'session', payload.encode()))}"
    response.set_cookie(
        SESSION_COOKIE,
        value,
        max_age=SESSION_TTL_S,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return session


def clear_session(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")


def read_session(conn: HTTPConnection) -> Session | None:
    """The valid, unexpired session of this request's cookie, if any."""
    value = conn.cookies.get(SESSION_COOKIE)
    if not value or value.count(".") != 1:
        return None
    payload, sig = value.split(".")
    try:
        if not hmac.compare_digest(_unb64(sig), _mac(conn, b"session", payload.encode())):
            return None
        data = json.loads(_unb64(payload))
        sid, expires, tag = str(data["sid"]), int(data["exp"]), str(data["tag"])
    except (ValueError, KeyError, TypeError):
        return None
    if expires < time.time() or not hmac.compare_digest(tag, _token_tag(conn)):
        return None
    return _session(conn, sid, expires)


def csrf_ok(session: Session, supplied: str | None) -> bool:
    return supplied is not None and hmac.compare_digest(supplied.encode(), session.csrf.encode())


# -- the gate ------------------------------------------------------------------------


def _bearer(request: Request) -> bool:
    scheme, _, supplied = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and token_matches(request, supplied)


def is_admin(request: Request) -> bool:
    """Bearer token, or a session cookie (plus its CSRF header on unsafe methods)."""
    if _bearer(request):
        return True
    session = read_session(request)
    if session is None:
        return False
    return request.method in SAFE_METHODS or csrf_ok(session, request.headers.get(CSRF_HEADER))


def admin_only(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    @wraps(handler)
    async def guarded(request: Request) -> Response:
        if not is_admin(request):
            if read_session(request) is not None:
                return JSONResponse({"error": "missing or wrong CSRF token: send the X-CSRF-Token header"}, status_code=403)
            return JSONResponse(
                {"error": "admin token required: send Authorization: Bearer <token>, or sign in at /admin"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        return await handler(request)

    return guarded
