"""Running the app under uvicorn, with the time limits uvicorn lacks.

- A client must send a request's headers within `HEAD_SECONDS` of connecting (or of starting
  the next request on a kept-alive connection); a connection that trickles them is closed, so
  slow clients cannot hold connections open for ever. Bodies are timed by `rag.server.guard`.
- After SIGTERM/SIGINT, open streams (answers, the UI's heartbeat) get `SHUTDOWN_SECONDS` to
  end; if the process is still alive well after that (a stuck request, a blocked event loop),
  it exits anyway. The index and the manifest are durable at every step: nothing stored is lost.
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

SHUTDOWN_SECONDS = 5
HEAD_SECONDS = 10.0
IDLE_SECONDS = 5  # a kept-alive connection with no new request is closed after this


class TimedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's headers."""

    _head_timer: asyncio.TimerHandle | None = None

    # uvicorn narrows BaseTransport to Transport itself, with the same ignore.
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE and self.conn.trailing_data[0]:
            self._arm()  # part of a request head is in: it must be completed in time
        else:
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(HEAD_SECONDS, self._head_too_slow)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


class Server(uvicorn.Server):
    """uvicorn's server, exiting for sure some seconds after a stop signal."""

    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(sig, frame)
        timer = threading.Timer(3 * SHUTDOWN_SECONDS, os._exit, args=(128 + sig,))
        timer.daemon = True
        timer.start()


def serve(app: Any, host: str, port: int) -> None:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="info",
        http=TimedH11Protocol,
        timeout_graceful_shutdown=SHUTDOWN_SECONDS,
        timeout_keep_alive=IDLE_SECONDS,
    )
    Server(config).run()
