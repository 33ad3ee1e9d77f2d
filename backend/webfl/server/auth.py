"""Admin authentication: a bearer token for scripts, a signed session cookie for the admin page.

Two ways in, one gate (``AdminAuth.is_admin``, which ``web.admin_api`` applies):

- ``Authorization: Bearer <token>``, compared in constant time (scripts, the simulator).
- The ``webfl_admin`` cookie the admin page's login form sets: HttpOnly, SameSite=Strict,
  expiring, and signed (``security.Signer``) with a secret kept in the store, so every
  member on one database honours it. It carries a tag of the admin token, so changing
  the token ends every session; signing out revokes that one session server-side (its id
  is kept in the store until it would have expired), on every member. On ``/api``, requests that change anything (POST) must also send
  the session's CSRF token in the ``X-CSRF-Token`` header; a ``csrf`` form field is read
  only by the sign-out form (``/admin/logout``), the one form a session posts.
  SameSite=Strict already stops cross-site requests from carrying the cookie; the
  token covers same-site attackers (another port on the same host is the same *site*).
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import HTTPConnection, Request
from starlette.responses import Response

from .datadir import write_private
from .security import KEY_BYTES, Signer
from .store import Store

__all__ = [
    "CSRF_HEADER",
    "SESSION_COOKIE",
    "AdminAuth",
    "Session",
    "load_admin_token",
    "load_session_secret",
]

log = logging.getLogger("webfl.auth")

SESSION_COOKIE = "webfl_admin"
CSRF_HEADER = "x-csrf-token"
SESSION_TTL_S = 8 * 3600
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


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
    write_private(path, token + "\n")
    return token, True


def load_session_secret(store: Store, data_dir: Path) -> bytes:
    """The key that signs session cookies: the store's, shared by every member and kept
    across restarts. A data folder from before keeps its sessions: the key its
    ``session_secret`` file holds moves into the store (unless the store has one already),
    and the file goes, so the store is the only copy."""
    path = data_dir / "session_secret"
    kept = None
    if path.exists():
        try:
            kept = bytes.fromhex(path.read_text().strip())
        except ValueError:
            pass
        if kept is None or len(kept) < KEY_BYTES:
            log.warning("%s does not hold a %d-byte hex key: ignored (signed-in admins sign in again)", path, KEY_BYTES)
            kept = None
    key = store.secret("session", kept)
    path.unlink(missing_ok=True)
    return key


def _adopt_revoked_sessions(store: Store, path: Path) -> None:
    """Sessions signed out before the store kept them (one ``id expires`` a line) stay out."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return  # no file: nothing to adopt
    for line in lines:
        sid, _, expires = line.partition(" ")
        if sid and expires.isascii() and expires.isdigit() and int(expires) >= time.time():
            store.revoke_session(sid, int(expires))
    path.unlink()


@dataclass(frozen=True)
class Session:
    id: str
    expires: int
    csrf: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class AdminAuth:
    """The admin token, with the session key and the revoked sessions the store shares."""

    def __init__(self, token: str, store: Store, data_dir: Path) -> None:
        self._token, self._store = token, store
        self._signer = Signer(load_session_secret(store, data_dir))
        _adopt_revoked_sessions(store, data_dir / "revoked_sessions")
        self._token_tag = _b64(self._signer.mac("token", token)[:12])

    def token_matches(self, supplied: str) -> bool:
        return hmac.compare_digest(supplied.strip().encode(), self._token.encode())

    def _session(self, sid: str, expires: int) -> Session:
        return Session(sid, expires, _b64(self._signer.mac("csrf", sid)))

    def start_session(self, request: Request, response: Response) -> Session:
        """Log the browser in: set a fresh signed session cookie on ``response``."""
        session = self._session(secrets.token_urlsafe(16), int(time.time()) + SESSION_TTL_S)
        payload = _b64(json.dumps({"sid": session.id, "exp": session.expires, "tag": self._token_tag}).encode())
        value = f"{payload}.{_b64(self._signer.mac('session', payload))}"
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

    def end_session(self, session: Session | None, response: Response) -> None:
        """Sign out: the cookie is cleared and, since a copy of it may live on, revoked."""
        if session is not None:
            self._store.revoke_session(session.id, session.expires)
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")

    def read_session(self, conn: HTTPConnection) -> Session | None:
        """The valid, unexpired, unrevoked session of this request's cookie, if any."""
        value = conn.cookies.get(SESSION_COOKIE)
        if not value or value.count(".") != 1:
            return None
        payload, sig = value.split(".")
        try:
            if not hmac.compare_digest(_unb64(sig), self._signer.mac("session", payload)):
                return None
            data = json.loads(_unb64(payload))
            sid, expires, tag = str(data["sid"]), int(data["exp"]), str(data["tag"])
        except (ValueError, KeyError, TypeError):
            return None
        if expires < time.time() or not hmac.compare_digest(tag, self._token_tag):
            return None
        if self._store.session_revoked(sid):  # asked last: only a validly signed cookie costs a query
            return None
        return self._session(sid, expires)

    @staticmethod
    def csrf_ok(session: Session, supplied: str | None) -> bool:
        return supplied is not None and hmac.compare_digest(supplied.encode(), session.csrf.encode())

    def _bearer(self, request: Request) -> bool:
        scheme, _, supplied = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and self.token_matches(supplied)

    def is_admin(self, request: Request) -> bool:
        """Bearer token, or a session cookie (plus its CSRF header on unsafe methods)."""
        if self._bearer(request):
            return True
        session = self.read_session(request)
        if session is None:
            return False
        return request.method in SAFE_METHODS or self.csrf_ok(session, request.headers.get(CSRF_HEADER))
