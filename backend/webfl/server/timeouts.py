"""Connection time limits below the ASGI app, where only the transport can enforce them.

uvicorn bounds an idle keep-alive connection (``timeout_keep_alive``) but not a request
whose headers never finish: 1,000 slowloris clients dribbling header bytes each held a
socket for as long as they liked. Nor can an ASGI app abort a WebSocket whose peer
never reads: ``send`` waits for the transport's buffer to drain, and so does ``close``.
The two protocol classes here, passed to ``uvicorn.run(http=..., ws=...)``, add:

- ``header_timeout_s``: from a connection's first byte (or the first byte of its next
  request) to the end of that request's headers; over it, the connection is closed.
- ``send_timeout_s``: how long a WebSocket send may wait for the peer to take bytes;
  over it, the transport is aborted (a close frame could not get through either), the
  app sees a disconnect and frees the volunteer's slot. The same bound applies to the
  buffer's draining once the app is done with the socket.
"""

from __future__ import annotations

import asyncio
import logging

from uvicorn.protocols.http.auto import AutoHTTPProtocol
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

__all__ = ["http_protocol", "ws_protocol"]

log = logging.getLogger("webfl.timeouts")


def http_protocol(header_timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol with a bound on the time a request's headers may take."""

    class HeaderTimeoutProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
        _header_timer: asyncio.TimerHandle | None = None

        def _in_request(self) -> bool:
            # Headers are complete once uvicorn made a request cycle that is still running,
            # or once the connection became a WebSocket (another protocol owns the transport).
            cycle = self.cycle
            return (cycle is not None and not cycle.response_complete) or self.transport.get_protocol() is not self

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(header_timeout_s, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if not self._in_request():
                self._arm()
            super().data_received(data)
            if self._in_request():
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing() and not self._in_request():
                log.info("closing an HTTP connection whose request headers took over %g s", header_timeout_s)
                self.transport.close()

    return HeaderTimeoutProtocol


def ws_protocol(send_timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's WebSocket protocol, aborting a peer that takes no bytes for ``send_timeout_s``."""

    class SendTimeoutProtocol(WebSocketsSansIOProtocol):
        async def send(self, message):  # type: ignore[no-untyped-def]
            if not self.writable.is_set():
                try:
                    await asyncio.wait_for(self.writable.wait(), send_timeout_s)
                except TimeoutError:
                    log.info("aborting a WebSocket whose peer took no bytes for %g s", send_timeout_s)
                    self.transport.abort()
                    raise ClientDisconnected() from None
            await super().send(message)

        async def run_asgi(self) -> None:
            await super().run_asgi()
            # uvicorn closes the transport, which waits for the buffer to drain: bound that too.
            if not self.transport.is_closing() or self.transport.get_write_buffer_size():
                self.loop.call_later(send_timeout_s, self.transport.abort)

    return SendTimeoutProtocol
