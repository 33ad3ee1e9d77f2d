"""Request bodies: bounded while they stream, and parsed strictly.

``BodyLimit`` answers 413 as soon as a body is declared (``Content-Length``) or has
streamed past the limit, so an unauthenticated client cannot make the server hold more
than ``max_bytes`` of it (a 400 MB POST to the login form used to be read whole).
``read_json`` turns every way JSON can be bad into ``BadRequest`` (a 400 with a message):
``NaN``/``Infinity`` and numbers that overflow to them, nesting deep enough to exhaust
the parser's recursion, integers too long to convert, broken encodings.
"""

from __future__ import annotations

import json
import math
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["BadRequest", "BodyLimit", "read_form", "read_json"]


class BadRequest(ValueError):
    """A request body the server refuses to act on; its message goes back to the client."""


class _TooLarge(Exception):
    pass


class BodyLimit:
    """Pure ASGI middleware: no HTTP request body of more than ``max_bytes`` reaches a handler."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    def _refusal(self) -> JSONResponse:
        # Connection: close, since the rest of the body is never read.
        return JSONResponse(
            {"error": f"request body too large: at most {self.max_bytes} bytes"},
            status_code=413,
            headers={"Connection": "close"},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and (not value.isdigit() or int(value) > self.max_bytes):
                await self._refusal()(scope, receive, send)
                return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if started:  # a handler that streams a response while reading: cut it
                raise
            await self._refusal()(scope, receive, send)


def _no_constant(name: str) -> float:
    raise BadRequest(f"{name} is not a number JSON allows")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadRequest(f"number out of range: {text[:40]}")
    return value


async def read_json(request: Request) -> object:
    """The request's JSON body (``{}`` when empty); ``BadRequest`` with a reason otherwise."""
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        return json.loads(raw, parse_constant=_no_constant, parse_float=_finite)
    except BadRequest:
        raise
    except RecursionError:
        raise BadRequest("JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, too many digits
        raise BadRequest(f"not valid JSON: {str(exc)[:200]}") from None


async def read_form(request: Request) -> dict[str, str]:
    """A urlencoded form (parsed here: no python-multipart dependency), first value of each field."""
    body = (await request.body()).decode("utf-8", errors="replace")
    return {k: v[0] for k, v in parse_qs(body).items()}
