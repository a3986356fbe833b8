"""The serving middleware: request durations count from the arrival stamp, and a request's
``X-Request-Id`` comes back on its response whatever the status."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from prometheus_client import CollectorRegistry
from starlette.types import Message, Receive, Scope, Send

from serving.metrics import Metrics
from serving.middleware import ServingMiddleware
from serving.protocol import ARRIVAL


async def _ok(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


async def _broken(scope: Scope, receive: Receive, send: Send) -> None:
    raise RuntimeError("a bug")


def _call(app: Any, headers: list[tuple[bytes, bytes]], arrival: float | None = None):  # type: ignore[no-untyped-def]
    metrics = Metrics(CollectorRegistry())
    middleware = ServingMiddleware(app, metrics, max_body_bytes=1000)
    scope: dict[str, Any] = {"type": "http", "method": "GET", "path": "/x", "headers": headers}
    if arrival is not None:
        scope[ARRIVAL] = arrival
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(middleware(scope, receive, send))
    return sent, metrics


def _duration(metrics: Metrics) -> float:
    value = metrics.registry.get_sample_value(
        "exitwise_request_duration_seconds_sum", {"route": "unmatched"}
    )
    assert value is not None
    return value


def test_the_duration_counts_from_the_arrival_stamp() -> None:
    # The protocol stamped the request 0.3 s ago (its bytes waited in the kernel and for the
    # loop): that time is the request's too, as its client measures it.
    _, metrics = _call(_ok, [], arrival=time.monotonic() - 0.3)
    assert 0.3 <= _duration(metrics) < 5
    _, metrics = _call(_ok, [])  # no stamp (another ASGI server): from the middleware
    assert 0 <= _duration(metrics) < 0.3


def test_the_request_id_comes_back_whatever_the_status() -> None:
    ident = (b"x-request-id", b"load-17")
    sent, _ = _call(_ok, [(b"accept", b"*/*"), ident])
    assert sent[0]["status"] == 200 and ident in sent[0]["headers"]
    sent, _ = _call(_broken, [ident])  # the catch-all 500 carries it too
    assert sent[0]["status"] == 500 and ident in sent[0]["headers"]
    for bad in (b"", b"two words", b"x" * 201, "é".encode()):
        sent, _ = _call(_ok, [(b"x-request-id", bad)])
        assert all(name != b"x-request-id" for name, _ in sent[0]["headers"]), bad
