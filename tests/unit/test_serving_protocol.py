"""The arrival stamp: where the server first reads a request, less what the loop was late by."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

import httpx
import pytest
import uvicorn

from serving import protocol
from serving.protocol import ARRIVAL, LoopLag, StampedHttpToolsProtocol


def test_the_loop_lag_is_how_late_a_blocked_loop_ran_its_timer() -> None:
    lag = LoopLag(period_s=0.002)

    async def main() -> tuple[float, float]:
        lag.watch(asyncio.get_running_loop())
        await asyncio.sleep(0.02)
        calm = lag.seconds
        time.sleep(0.05)  # the loop is busy: a timer due meanwhile runs 50 ms late at most
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


def test_a_request_is_stamped_when_read_less_the_loop_lag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(protocol, "LAG", _Fixed(0.25))

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        age = time.monotonic() - scope[ARRIVAL]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": f"{age:.6f}".encode()})

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
        port = sock.getsockname()[1]
        age = float(httpx.get(f"http://127.0.0.1:{port}/", timeout=5).text)
    finally:
        server.should_exit = True
        thread.join(5)
    assert 0.25 <= age < 1.0
