"""The moment the server first sees a request: uvicorn's HTTP protocol with a timestamp.

``deadline_ms`` counts from the request's arrival. The earliest moment the server process can see
a request is when the event loop reads its first bytes from the socket, before the request is
parsed, queued as a task and routed. :class:`StampedHttpToolsProtocol` records that moment in
the ASGI scope (``scope["exitwise.arrival"]``, ``time.monotonic()``); the middleware stamps a
request the protocol did not (another ASGI server, the test client).

What remains invisible: the time a connection waits in the kernel's accept queue, and the time
the request's bytes wait in the socket's buffer while the event loop is busy with something else
(on one core, that includes a stage batch of the engine holding the CPU).
"""

from __future__ import annotations

import time

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

ARRIVAL = "exitwise.arrival"  # the scope key: time.monotonic() when the server first saw it


class StampedHttpToolsProtocol(HttpToolsProtocol):
    _read_at = 0.0

    def data_received(self, data: bytes) -> None:
        self._read_at = time.monotonic()
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope[ARRIVAL] = self._read_at  # type: ignore[literal-required]
