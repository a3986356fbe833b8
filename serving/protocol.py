"""The moment the server first sees a request: uvicorn's HTTP protocol with a timestamp.

``deadline_ms`` counts from the request's arrival. The earliest moment the server process can see
a request is when the event loop reads its first bytes from the socket, before the request is
parsed, queued as a task and routed. :class:`StampedHttpToolsProtocol` records that moment in
the ASGI scope (``scope["exitwise.arrival"]``, ``time.monotonic()``); the middleware stamps a
request the protocol did not (another ASGI server, the test client).

What the protocol cannot see: the time a connection waits in the kernel's accept queue, and
the time the request's bytes wait in the socket's buffer while the event loop is busy with
something else (on one core, that includes a stage batch of the engine holding the CPU). The
second is estimated: :class:`LoopLag` measures how late the loop runs a timer due every 5 ms,
and a request is stamped that much before the loop read it (bytes that arrived while the loop
was that late may have waited that long). The accept queue stays invisible.
"""

from __future__ import annotations

import asyncio
import time

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

ARRIVAL = "exitwise.arrival"  # the scope key: time.monotonic() when the server first saw it


class LoopLag:
    """How late the event loop runs a timer: how long bytes that arrived meanwhile may have
    waited in a socket before the loop read them. A timer every ``period_s``, on the loop of
    the first connection."""

    def __init__(self, period_s: float = 0.005) -> None:
        self.period_s = period_s
        self.seconds = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._due = 0.0

    def watch(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is loop:
            return
        self._loop, self.seconds = loop, 0.0
        self._due = time.monotonic() + self.period_s
        loop.call_later(self.period_s, self._tick, loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        if loop is not self._loop:
            return
        now = time.monotonic()
        self.seconds = max(0.0, now - self._due)
        self._due = now + self.period_s
        loop.call_later(self.period_s, self._tick, loop)


LAG = LoopLag()


class StampedHttpToolsProtocol(HttpToolsProtocol):
    _read_at = 0.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        LAG.watch(self.loop)
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._read_at = time.monotonic() - LAG.seconds
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope[ARRIVAL] = self._read_at  # type: ignore[literal-required]
