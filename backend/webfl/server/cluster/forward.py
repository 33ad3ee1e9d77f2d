"""A follower hands run control (``POST .../rounds``, ``.../rounds/stop``) to the leader.

Only the leader runs rounds, and a load balancer that counts connections may send every
request to the same follower, so a follower does not refuse: it passes the request on to
the leader's admin API (its URL from the leader's heartbeat) with the caller's
credentials, and returns the leader's answer. The follower has checked them already
(``admin_only``); the leader checks them again. No leader known, or one that does not
answer: 503 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

__all__ = ["to_leader"]

#: The caller's headers the leader needs: its credentials and the body's type.
_PASSED = ("authorization", "cookie", "x-csrf-token", "content-type")


async def to_leader(request: Request, leader_url: str | None, leader: str | None) -> Response:
    if leader_url is None:
        return _unavailable(f"this cluster member is not the leader, and the leader ({leader or 'being elected'}) is not known yet")
    body = await request.body()  # bounded by BodyLimit
    target = leader_url + request.url.path + (f"?{request.url.query}" if request.url.query else "")
    headers = {k: v for k in _PASSED if (v := request.headers.get(k)) is not None}

    def send() -> tuple[int, bytes, str]:
        req = urllib.request.Request(target, data=body or None, method=request.method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, resp.read(), resp.headers.get("content-type", "application/json")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), exc.headers.get("content-type", "application/json")

    try:
        status, data, media = await asyncio.to_thread(send)
    except OSError as exc:  # refused, reset, timed out: the leader may be failing over
        return _unavailable(f"the leader ({leader}) did not answer: {exc}")
    return Response(data, status_code=status, media_type=media)


def _unavailable(message: str) -> Response:
    return JSONResponse({"error": message}, status_code=503, headers={"Retry-After": "1"})
