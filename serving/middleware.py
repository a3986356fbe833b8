"""One pure-ASGI middleware around every request: body-size limit, metrics, and the catch-all.

- Body limit: a ``Content-Length`` over the limit, or a streamed body that grows past it, makes
  the route's first read raise :class:`~serving.errors.PayloadTooLargeError` (a 413 through the
  error table); routes that never read a body are unaffected.
- Metrics: ``requests_total{route,code}`` and ``request_duration_seconds{route}``, labelled with
  the matched route's template (unmatched paths share one label, so scanners cannot blow up the
  label set); ``inflight_requests`` while an inference request (``POST /v1/classify``,
  ``POST /v2/.../infer``) is handled; ``refused_total{reason}`` for an inference request's 503
  that the error table marked as the server's refusal (in the scope). Labelled children are
  looked up once and kept.
  The duration counts from the request's arrival stamp (:mod:`serving.protocol`: when its
  bytes came in, the time they waited in the kernel's queues and the event loop's included), so
  it is what a client on the same host measures, less the handshake and the answer's way back.
- Request ids: an ``X-Request-Id`` header (up to 200 visible ASCII characters) comes back on the
  response, whatever its status, so that a client can pair answers with requests on connections
  it shares (a load generator, a proxy's logs); another value is ignored.
- Catch-all: an exception nobody mapped is logged with its traceback and answered with a
  generic 500; its text never reaches the client.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import REFUSAL, PayloadTooLargeError
from .metrics import Metrics
from .protocol import ARRIVAL

log = logging.getLogger("exitwise.serving")

_GENERIC_500 = json.dumps({"error": "internal server error"}).encode()


def _is_inference(scope: Scope) -> bool:
    path: str = scope["path"]
    return scope["method"] == "POST" and (
        path == "/v1/classify" or (path.startswith("/v2/models/") and path.endswith("/infer"))
    )


class ServingMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics, max_body_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        # (route, code) -> requests_total child; route -> request_duration child; reason ->
        # refused_total child. A labels() lookup per request costs more than the increment.
        self._counters: dict[tuple[str, int], Any] = {}
        self._durations: dict[str, Any] = {}
        self._refused: dict[str, Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        arrival = scope.setdefault(ARRIVAL, time.monotonic())  # unless the protocol stamped it
        echo = _request_id(scope)
        status = 500
        started = False
        limit = self.max_body_bytes
        declared = _content_length(scope)
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            if declared is not None and declared > limit:
                raise PayloadTooLargeError(
                    f"request body of {declared} bytes is over the {limit}-byte limit"
                )
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLargeError(f"request body is over the {limit}-byte limit")
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status = int(message["status"])
                started = True
                if echo is not None:
                    message = {**message, "headers": [*message.get("headers", ()), echo]}
            await send(message)

        inference = _is_inference(scope)
        if inference:
            self.metrics.inflight.inc()
        try:
            await self.app(scope, limited_receive, tracking_send)
        except Exception:
            log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            status = 500
            if not started:
                await send(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(_GENERIC_500)).encode()),
                            *([] if echo is None else [echo]),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": _GENERIC_500})
        finally:
            if inference:
                self.metrics.inflight.dec()
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            counter = self._counters.get((label, status))
            if counter is None:
                counter = self.metrics.requests.labels(route=label, code=str(status))
                self._counters[(label, status)] = counter
            counter.inc()
            # Refused work: a probe or metadata read answered 503 while starting or draining
            # is in requests_total only.
            if inference and (refusal := scope.get(REFUSAL)) is not None:
                refused = self._refused.get(refusal)
                if refused is None:
                    refused = self._refused[refusal] = self.metrics.refused.labels(reason=refusal)
                refused.inc()
            duration = self._durations.get(label)
            if duration is None:
                duration = self.metrics.request_duration.labels(route=label)
                self._durations[label] = duration
            duration.observe(time.monotonic() - arrival)


def _request_id(scope: Scope) -> tuple[bytes, bytes] | None:
    """The response header echoing the request's ``X-Request-Id``, if it has a usable one."""
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            if 0 < len(value) <= 200 and all(33 <= c <= 126 for c in value):
                return (b"x-request-id", value)
            return None
    return None


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
