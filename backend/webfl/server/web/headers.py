"""Security headers on every HTTP response."""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["DEFAULT_CSP", "SecurityHeaders"]


#: For responses that set no policy of their own (JSON, files): nothing may run, nothing may frame them.
DEFAULT_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
DEFAULT_HEADERS = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
}


class SecurityHeaders:
    """Pure ASGI middleware: adds ``DEFAULT_HEADERS`` and, where a response has none, ``DEFAULT_CSP``.

    Pages set their own CSP (``pages.page_headers``): ``frame-ancestors 'none'``
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
