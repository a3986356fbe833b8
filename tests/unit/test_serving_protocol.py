"""The arrival stamp: where the server first reads a request, less what the loop was late by."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.requests import Request

from serving import deps, protocol
from serving.protocol import ARRIVAL, LoopLag, StampedHttpToolsProtocol


def test_the_loop_lag_is_how_late_a_blocked_loop_ran_its_timer() -> None:
    # A period of 10 ms: the late timer's next one is due 10 ms after it, long after the 1 ms
    # sleep below has returned, even on a loaded machine (at 2 ms, in a full run of the suite,
    # the next timer ran first once and said 1 ms).
    lag = LoopLag(period_s=0.01)

    async def main() -> tuple[float, float]:
        lag.watch(asyncio.get_running_loop())
        await asyncio.sleep(0.05)
        calm = lag.seconds
        time.sleep(0.05)  # the loop is busy: a timer due meanwhile runs 40-50 ms late
        await asyncio.sleep(0.001)  # the late timer runs first
        return calm, lag.seconds

    calm, blocked = asyncio.run(main())
    assert 0.04 <= blocked <= 0.07
    assert calm < blocked


class _Fixed:
    """A loop lag that stays where it is put."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def watch(self, loop: asyncio.AbstractEventLoop) -> None:
        pass


@contextlib.contextmanager
def _serving(app: Any) -> Iterator[str]:
    """``app`` served by uvicorn with the stamping protocol in a thread; its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, http=StampedHttpToolsProtocol, lifespan="off", log_level="error")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(5)


def test_a_request_is_stamped_when_read_less_the_loop_lag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(protocol, "LAG", _Fixed(0.25))

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        age = time.monotonic() - scope[ARRIVAL]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": f"{age:.6f}".encode()})

    with _serving(app) as url:
        age = float(httpx.get(f"{url}/", timeout=5).text)
    assert 0.25 <= age < 1.0


linux_tcp_info = pytest.mark.skipif(
    protocol.kernel_tick_s() is None, reason="the kernel gives no TCP_INFO here"
)


@linux_tcp_info
def test_the_kernel_says_how_long_bytes_waited_never_more() -> None:
    tick = protocol.kernel_tick_s()
    assert tick is not None and 0 < tick <= 0.01
    with (
        socket.create_server(("127.0.0.1", 0)) as server,
        socket.create_connection(server.getsockname()[:2]) as client,
    ):
        client.sendall(b"GET / HTTP/1.1\r\n\r\n")
        sent = time.monotonic()
        time.sleep(0.06)  # the connection waits in the accept queue, its bytes with it
        peer, _ = server.accept()
        with peer:
            waited = protocol.kernel_waited_s(peer)
            elapsed = time.monotonic() - sent
            assert waited is not None
            assert elapsed - 3 * tick <= waited <= elapsed


def test_a_socket_without_tcp_info_has_no_kernel_figure() -> None:
    left, right = socket.socketpair()  # a Unix socket
    with left, right:
        left.sendall(b"x")
        assert protocol.kernel_waited_s(right) is None
    assert protocol.kernel_waited_s(None) is None


@linux_tcp_info
def test_a_request_that_waited_in_the_kernel_is_stamped_when_it_came_in(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The loop's own estimate is held at 0, so only the kernel's figure can date the request back.
    monkeypatch.setattr(protocol, "LAG", _Fixed(0.0))

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/block":
            time.sleep(0.3)  # the loop is busy: the other request waits in the kernel
        age = time.monotonic() - scope[ARRIVAL]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": f"{age:.6f}".encode()})

    with _serving(app) as url:
        blocker = threading.Thread(target=httpx.get, args=(f"{url}/block",), daemon=True)
        blocker.start()
        time.sleep(0.1)  # the loop is in /block now
        age = float(httpx.get(f"{url}/age", timeout=5).text)
        blocker.join(5)
    assert 0.12 <= age < 1.0  # it waited about 0.2 s in the kernel; the loop read it at once


def test_a_handler_can_ask_whether_its_client_has_left() -> None:
    # One request answered at once (its client is there), one whose client gives up while the
    # handler still works on it: asked afterwards, the connection says the client has left.
    seen: dict[str, bool] = {}
    done = threading.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        left = deps.left(Request(scope, receive))
        if scope["path"] == "/slow":
            await asyncio.sleep(0.5)  # the client times out meanwhile
            seen["slow"] = left()
            done.set()
        else:
            seen["quick"] = left()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    with _serving(app) as url:
        assert httpx.get(f"{url}/quick", timeout=5).text == "ok"
        with pytest.raises(httpx.TimeoutException):
            httpx.get(f"{url}/slow", timeout=0.1)
        assert done.wait(5)
    assert seen == {"quick": False, "slow": True}


def test_without_the_protocols_connection_the_client_never_counts_as_left() -> None:
    assert deps.left(Request({"type": "http", "headers": []}))() is False


class _Recorder:
    """A transport that records what is written to it."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return getattr(self, name, default)


def test_the_corked_transport_sends_what_waits_as_one_write() -> None:
    async def main() -> None:
        inner = _Recorder()
        corked = protocol.CorkedTransport(inner, asyncio.get_running_loop())  # type: ignore[arg-type]
        corked.write(b"HTTP/1.1 200 OK\r\n\r\n")
        corked.write(b"body")
        assert inner.writes == []
        corked.flush()  # the response is complete
        assert inner.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
        corked.write(b"chunk")  # no complete response follows: out when the loop's step ends
        await asyncio.sleep(0)
        assert inner.writes[-1] == b"chunk"
        corked.write(b"last")
        corked.close()  # what waits goes first
        assert inner.writes[-1] == b"last" and inner.closed
        assert corked.is_closing() and corked.get_extra_info("closed") is True  # the transport's
        corked.write(b"late")  # the connection is gone by the end of the step: nothing is sent
        await asyncio.sleep(0)
        assert inner.writes[-1] == b"last"

    asyncio.run(main())


class _Counting:
    """The connection's transport, counting the writes that reach it."""

    def __init__(self, transport: Any, writes: list[bytes]) -> None:
        self._transport, self._writes = transport, writes

    def write(self, data: bytes) -> None:
        self._writes.append(bytes(data))
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def test_each_response_reaches_the_socket_in_one_write(monkeypatch: pytest.MonkeyPatch) -> None:
    # A plain answer, a streamed one, on one kept-alive connection: each whole response in one
    # write (uvicorn writes the head and the body apart), the streamed one a write per step.
    writes: list[bytes] = []
    corked_init = protocol.CorkedTransport.__init__

    def counted(self: Any, transport: Any, loop: Any) -> None:
        corked_init(self, _Counting(transport, writes), loop)

    monkeypatch.setattr(protocol.CorkedTransport, "__init__", counted)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        if scope["path"] == "/stream":
            for part in (b"a", b"b"):
                await send({"type": "http.response.body", "body": part, "more_body": True})
                await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b"ok"})

    with _serving(app) as url, httpx.Client(base_url=url, timeout=5) as client:
        assert client.get("/plain").text == "ok"
        assert len(writes) == 1 and writes[0].startswith(b"HTTP/1.1 200") and b"ok" in writes[0]
        assert client.get("/stream").text == "abok"
        assert client.get("/plain").text == "ok"
    assert len(writes) == 1 + 3 + 1  # head with "a", "b", then "ok" and the end; one more answer
