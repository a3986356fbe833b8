"""The server's HTTP protocol: uvicorn's, with each request's arrival stamped, and each
response sent in one write (:class:`CorkedTransport`).

``deadline_ms`` counts from the request's arrival. The protocol stamps it in the ASGI scope
(``scope["exitwise.arrival"]``, ``time.monotonic()``) as the event loop begins to parse it; the
middleware stamps a request the protocol did not (another ASGI server, the test client). The
stamp is the earliest of two estimates of when its bytes came in:

- **The kernel's** (Linux, TCP): ``TCP_INFO`` says how long ago the socket last received data,
  in whole clock ticks of the kernel (4 ms at 250 Hz). That covers the time the bytes waited in
  the socket's buffer while the loop was busy, and, for a new connection's first request, the
  time the connection waited in the accept queue. It counts one tick less than the kernel says,
  so that it never makes a request older than it is (:func:`kernel_waited_s`).
- **The loop's**: the moment the loop read the bytes, less how late it was running a timer due
  every 5 ms (:class:`LoopLag`): bytes that arrived meanwhile may have waited that long. Where
  the kernel's figure is missing (another platform, a Unix socket) this is the only one.

What stays invisible: the handshake, a request sent in several segments before its last one
(the kernel's figure is the last segment's), and up to one tick of the kernel's clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from functools import cache
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

ARRIVAL = "exitwise.arrival"  # the scope key: time.monotonic() when the server first saw it
TRANSPORT = "exitwise.transport"  # the scope key: the connection (closing once the client left)


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

_LAST_DATA_RECV = 52  # offset of tcpi_last_data_recv (u32, ms) in Linux's struct tcp_info


def _since_ms(sock: Any) -> int:
    """Milliseconds, in whole ticks of the kernel's clock, since ``sock`` last received data."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _LAST_DATA_RECV + 4)
    return int(struct.unpack_from("I", info, _LAST_DATA_RECV)[0])


@cache
def kernel_tick_s() -> float | None:
    """The kernel clock's tick, measured once: the first non-zero age of a byte received over
    loopback (None where ``TCP_INFO`` is missing or fails). Takes up to one tick."""
    if not hasattr(socket, "TCP_INFO"):
        return None
    try:
        with (
            socket.create_server(("127.0.0.1", 0)) as server,
            socket.create_connection(server.getsockname()[:2]) as client,
        ):
            peer, _ = server.accept()
            with peer:
                client.sendall(b"x")
                give_up = time.monotonic() + 0.1
                while time.monotonic() < give_up:
                    if ms := _since_ms(peer):
                        return ms / 1000
    except OSError:
        pass
    return None


def kernel_waited_s(sock: Any) -> float | None:
    """Seconds, at least, since ``sock`` last received data: the kernel's figure less one tick,
    so that a request is never made older than it is (None: unknown here)."""
    tick = kernel_tick_s()
    if tick is None or sock is None:
        return None
    try:
        return max(0.0, _since_ms(sock) / 1000 - tick)
    except (OSError, struct.error):  # not TCP (a Unix socket), or closed meanwhile
        return None


class CorkedTransport:
    """A connection's transport that sends a response in one write. uvicorn writes a
    response's head and its body in two calls: two system calls and two TCP segments for every
    answer, on a core that under load has no time to spare (closed loop on one core, refusals,
    503s with a small body, came 20-28 % faster with them joined). The protocol flushes when a
    response is complete; writes that no complete response follows (a streamed body's chunks,
    the interim 100 Continue) go out when the event loop's step ends, and a close sends what
    waits first. Everything else is the transport's own."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport, self._loop = transport, loop
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._parts:
            self._loop.call_soon(self.flush)
        self._parts.append(data)

    def flush(self) -> None:
        if self._parts:
            data = b"".join(self._parts)  # one part: that part itself, not a copy
            self._parts = []
            if not self._transport.is_closing():  # the client left meanwhile: nobody to send to
                self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class StampedHttpToolsProtocol(HttpToolsProtocol):
    _read_at = 0.0
    _sock: Any = None  # the connection's socket while the kernel can say when data came in

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        LAG.watch(self.loop)
        super().connection_made(CorkedTransport(transport, self.loop))  # type: ignore[arg-type]
        with contextlib.suppress(Exception):  # a transport without a socket: the loop's figure
            sock = transport.get_extra_info("socket")
            self._sock = sock if kernel_waited_s(sock) is not None else None

    def data_received(self, data: bytes) -> None:
        self._read_at = time.monotonic()
        super().data_received(data)

    def on_response_complete(self) -> None:
        self.transport.flush()  # type: ignore[attr-defined]
        super().on_response_complete()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        arrival = self._read_at - LAG.seconds
        if self._sock is not None and (waited := kernel_waited_s(self._sock)) is not None:
            arrival = min(arrival, self._read_at - waited)
        self.scope[ARRIVAL] = arrival  # type: ignore[literal-required]
        self.scope[TRANSPORT] = self.transport  # type: ignore[literal-required]
