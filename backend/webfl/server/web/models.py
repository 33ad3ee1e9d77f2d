"""``GET /models/<digest>.bin``: the committed model, content-addressed, for caches and CDNs.

The body is the model volunteers hold (the downlink chain's, see ``core/downlink.py``)
as raw little-endian float32, and its name is its digest (the first 32 hex digits of the
sha256 of exactly these bytes). So the response never changes: ``immutable`` for a year,
``ETag`` the digest, and anyone can check what a cache hands out. Only the current
committed model answers (the chain adopts a model only after its store transaction, so
a prepared one never shows); an unknown or superseded digest is 404. A cluster member
that did not commit the model reads it from Redis (``webfl:model:<digest>``, put there by
the leader after the commit), and checks it against the digest before serving it.
"""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from .assets import IMMUTABLE
from .services import services

__all__ = ["routes"]

_DIGEST = re.compile(r"[0-9a-f]{32}")


async def model_by_digest(request: Request) -> Response:
    wanted = request.path_params["digest"]
    svc = services(request)
    chain = svc.engine.commits.chain
    body = None
    if _DIGEST.fullmatch(wanted):
        if wanted == chain.digest:
            body = chain.raw()
        elif svc.cluster is not None:
            body = await svc.cluster.model_blob(wanted)
    if body is None:
        return PlainTextResponse(f"no committed model has digest {wanted[:64]!r} here (the current one is announced in model_notice)", status_code=404)
    headers = {"Cache-Control": IMMUTABLE, "ETag": f'"{wanted}"'}
    if f'"{wanted}"' in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/octet-stream", headers=headers)


routes = [Route("/models/{digest}.bin", model_by_digest, methods=["GET", "HEAD"])]
