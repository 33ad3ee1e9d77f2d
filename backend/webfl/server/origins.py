"""Which browser origins may open ``/ws`` and frame ``/embed``.

An origin is compared with the configured public origin(s) of this server and the embed
allowlist, scheme and port included, never with the request's ``Host``: under DNS
rebinding an attacker's page (``http://evil.example`` resolving to this server) sends
``Host`` and ``Origin`` that agree with each other, so agreeing proves nothing.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

__all__ = ["default_public_origins", "normalise_origin", "origin_allowed", "parse_origins"]

_DEFAULT_PORTS = {"http": 80, "https": 443}
_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


def normalise_origin(text: str) -> str:
    """``scheme://host[:port]`` in the form a browser sends it (lower case, no default port).

    Raises ``ValueError`` for anything that is not an http(s) origin, e.g. one with a path.
    """
    parts = urlsplit(text.strip().rstrip("/"))
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname or parts.path or parts.query or parts.username:
        raise ValueError(f"not an origin (scheme://host[:port]): {text!r}")
    host = parts.hostname.lower()
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    port = parts.port  # ValueError for a port out of range
    if port is None or port == _DEFAULT_PORTS[parts.scheme]:
        return f"{parts.scheme}://{host}"
    return f"{parts.scheme}://{host}:{port}"


def parse_origins(values: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """Origins from a comma list or several (repeated flags), normalised, in order, no repeats."""
    if values is None:
        return ()
    items = [values] if isinstance(values, str) else list(values)
    out: list[str] = []
    for item in items:
        for part in item.split(","):
            if part.strip() and (origin := normalise_origin(part)) not in out:
                out.append(origin)
    return tuple(out)


def default_public_origins(scheme: str, host: str, port: int) -> tuple[str, ...]:
    """The origin the server listens on; for a loopback or wildcard address, its loopback aliases too."""
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    origins = [f"{scheme}://{shown}:{port}"]
    try:
        address = ipaddress.ip_address(host.strip("[]"))
        local = address.is_loopback or address.is_unspecified
    except ValueError:
        local = host == "localhost"
    if local:
        origins += [f"{scheme}://{name}:{port}" for name in _LOOPBACK_NAMES]
    return parse_origins(origins)


def origin_allowed(origin: str | None, allowed: tuple[str, ...]) -> bool:
    """A browser's ``Origin`` must be one of ``allowed`` (normalised origins).

    Clients that send no ``Origin`` are not browsers (a browser always sends it on a
    WebSocket handshake and a CORS request), so the header cannot protect them; they are
    let in and validated like everyone else.
    """
    if origin is None:
        return True
    try:
        return normalise_origin(origin) in allowed
    except ValueError:  # "null" (sandboxed frames, file://) and garbage
        return False
