"""Per-connection session tokens for tasks, and security headers for every HTTP response.

Session tokens: the ``task`` frame carries ``token = HMAC-SHA256(key, volunteer id | round |
model version)`` under a key that lives only in this server process (never stored, never
rendered). The ``update`` must echo it. Volunteer ids are fresh random values per
connection (a reloaded tab may keep its id only with its ``resume`` credential, see
``resume``), so an update (or its token) captured from one volunteer cannot be replayed
by another, into another round, or against another model version, and a restarted
server refuses every token of its previous life.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["SecurityHeaders", "TaskTokens"]


class TaskTokens:
    def __init__(self, key: bytes | None = None) -> None:
        self._key = key or secrets.token_bytes(32)

    def issue(self, volunteer: str, round_: int, model_version: int) -> str:
        msg = f"{volunteer}|{round_}|{model_version}".encode()
        return hmac.new(self._key, msg, hashlib.sha256).hexdigest()[:32]

    def check(self, volunteer: str, round_: int, model_version: int, token: object) -> bool:
        if not isinstance(token, str):
            return False
        return hmac.compare_digest(token.encode(), self.issue(volunteer, round_, model_version).encode())


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
    script is a worker's own, and the volunteer's Web Worker (``/static/worker.js``) and
    service worker (``/sw.js``) must fetch the runtime, the worker also run WebAssembly,
    all of which ``DEFAULT_CSP`` forbids. Nor does a
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
