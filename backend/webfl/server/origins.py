"""Which browser origins may open ``/ws`` and frame ``/embed``."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

__all__ = ["origin_allowed"]


def origin_allowed(headers: Mapping[str, str], allowed: tuple[str, ...]) -> bool:
    """A browser's ``Origin`` must be this server's own or on the allowlist.

    Clients that send no ``Origin`` are not browsers (a browser always sends it on
    a WebSocket handshake), so the header cannot be used to protect them; they are
    let in and validated like everyone else.
    """
    origin = headers.get("origin")
    if origin is None:
        return True
    origin = origin.rstrip("/")
    if origin in allowed:
        return True
    parts = urlsplit(origin)
    return bool(parts.netloc) and parts.netloc == headers.get("host", "")
