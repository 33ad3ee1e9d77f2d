"""Signed tokens for volunteers, and security headers for every HTTP response.

Tokens are ``HMAC-SHA256(key, parts)`` under a key that lives only in this server process
(never stored, never rendered), so a restarted server honours none of its previous life.

- Task tokens: the ``task`` frame carries one over (volunteer id, round, model version)
  and the ``update`` must echo it, so an update (or its token) captured from one
  connection cannot be replayed by another volunteer, into another round, or against
  another model version.
- Resume credentials: ``welcome`` carries one over the volunteer id. Ids are fresh random
  values per connection unless a reconnecting volunteer (a reloaded tab) proves with this
  credential that it was given the id; then an update computed before the reload still
  counts, since the open round lists its sender by id.

Swap in a shared key to run several server processes behind one address.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["ResumeTokens", "SecurityHeaders", "Signer", "TaskTokens"]


class Signer:
    """Short HMAC-SHA256 tags over a sequence of values."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key or secrets.token_bytes(32)

    def sign(self, *parts: object) -> str:
        return hmac.new(self._key, "|".join(map(str, parts)).encode(), hashlib.sha256).hexdigest()[:32]

    def verify(self, token: object, *parts: object) -> bool:
        return isinstance(token, str) and hmac.compare_digest(token.encode(), self.sign(*parts).encode())


class TaskTokens(Signer):
    def issue(self, volunteer: str, round_: int, model_version: int) -> str:
        return self.sign(volunteer, round_, model_version)

    def check(self, volunteer: str, round_: int, model_version: int, token: object) -> bool:
        return self.verify(token, volunteer, round_, model_version)


class ResumeTokens(Signer):
    def issue(self, volunteer: str) -> str:
        return self.sign("resume", volunteer)

    def claimed_id(self, claim: object) -> str | None:
        """The volunteer id a ``hello.resume`` object proves, or None if it proves none."""
        if not isinstance(claim, dict):
            return None
        volunteer, token = claim.get("volunteer"), claim.get("token")
        if not isinstance(volunteer, str) or not 0 < len(volunteer) <= 64:
            return None
        return volunteer if self.verify(token, "resume", volunteer) else None


#: For responses that set no policy of their own (JSON, files): nothing may run, nothing may frame them.
DEFAULT_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
DEFAULT_HEADERS = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
}


class SecurityHeaders:
    """Pure ASGI middleware: adds ``DEFAULT_HEADERS`` and, where a response has none, ``DEFAULT_CSP``.

    Pages set their own CSP (``pages._page_headers``): ``frame-ancestors 'none'``
    everywhere but ``/embed``, which allows the configured embed origins. This only
    fills gaps, so it never widens a page's policy.

    JavaScript gets no default CSP: on a script a policy only ever applies when the
    script is a worker's own, and the volunteer's Web Worker (``/static/worker.js``)
    must fetch its runtime and run WebAssembly, which ``DEFAULT_CSP`` forbids. Nor does a
    304: the browser would merge its headers into the cached response, script or not.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in DEFAULT_HEADERS.items():
                    if name not in headers:
                        headers[name] = value
                if not (
                    "content-security-policy" in headers
                    or message["status"] == 304
                    or headers.get("content-type", "").startswith("text/javascript")
                ):
                    headers["content-security-policy"] = DEFAULT_CSP
            await send(message)

        await self.app(scope, receive, send_with_headers)
