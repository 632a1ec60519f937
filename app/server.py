"""The gateway's HTTP server: uvicorn, with a deadline for a request's head and for its body.

A client that opens a connection and trickles its request line and headers (or its body) a byte at a time
would hold a connection, and memory, for as long as it likes: uvicorn has no such deadline of its own. The
protocol below closes a connection whose request head is not complete ``header_timeout`` seconds after its
first byte (or after the connection opened); ``app.middleware.BodyTimeoutMiddleware`` answers 408 and closes
the connection when a body takes longer than ``body_timeout`` seconds to arrive. Behind a proxy (the advice for any
deployment), the proxy's own timeouts apply first.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def protocol_with_header_timeout(header_timeout: float) -> type[HttpToolsProtocol]:
    """An httptools protocol class that closes connections whose request head is too slow to arrive."""

    class HeaderTimeoutProtocol(HttpToolsProtocol):
        _head_timer: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            self._disarm()
            self._head_timer = self.loop.call_later(header_timeout, self._too_slow)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _too_slow(self) -> None:
            self._head_timer = None
            if not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderTimeoutProtocol


def server_options(header_timeout: float) -> dict[str, Any]:
    """The uvicorn options that put the deadlines in place."""
    return {"http": protocol_with_header_timeout(header_timeout), "timeout_keep_alive": 5}
