"""Typed dependencies shared by the routers: the service, the API key check, in-flight tracking.

All are ``async def``: FastAPI runs plain ``def`` dependencies in a thread pool, a thread hop per
dependency per request that costs more than these functions themselves. The inference routes,
the hot path, call the plain functions :func:`service_of` and :func:`authorize` instead:
resolving dependencies costs FastAPI tens of microseconds per request, more than both checks.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Request

from .errors import NotReadyError, UnauthorizedError
from .lifecycle import Lifecycle
from .metrics import Metrics
from .protocol import ARRIVAL, TRANSPORT
from .service import ModelService
from .settings import Settings


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_lifecycle(request: Request) -> Lifecycle:
    lifecycle: Lifecycle = request.app.state.lifecycle
    return lifecycle


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


def service_of(request: Request) -> ModelService:
    """The loaded model; 503 before warm-up has finished or after shutdown has begun."""
    state = request.app.state
    lifecycle: Lifecycle = state.lifecycle
    service: ModelService | None = state.service
    if service is None or not lifecycle.serving or not service.accepting:
        raise NotReadyError(f"the model is not ready ({lifecycle.phase.value})")
    return service


async def get_service(request: Request) -> ModelService:
    return service_of(request)


def _presented_key(request: Request) -> str | None:
    auth = request.headers.get("authorization")
    if auth is not None:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return request.headers.get("x-api-key")


async def check_api_key(request: Request) -> None:
    authorize(request)


def authorize(request: Request) -> None:
    """When an API key is configured, require it as ``Authorization: Bearer`` or ``X-API-Key``."""
    settings: Settings = request.app.state.settings
    if settings.api_key is None:
        return
    presented = _presented_key(request)
    if presented is None:
        raise UnauthorizedError(
            "an API key is required (Authorization: Bearer KEY, or X-API-Key: KEY)"
        )
    expected = settings.api_key.get_secret_value()
    # Header values arrive decoded as latin-1: encoded back, they are the bytes the client
    # sent (UTF-8 for a key such as "päss"), which is what the configured key is, encoded.
    if not secrets.compare_digest(presented.encode("latin-1", "replace"), expected.encode()):
        raise UnauthorizedError("invalid API key")


async def check_metrics_key(request: Request) -> None:
    if request.app.state.settings.metrics_require_key:
        authorize(request)


Service = Annotated[ModelService, Depends(get_service)]
Authorized = Depends(check_api_key)


def arrival_of(request: Request) -> float:
    """``time.monotonic()`` when the server first saw the request: the HTTP protocol's stamp
    (:mod:`serving.protocol`), else the middleware's."""
    arrived: float = request.scope.get(ARRIVAL) or time.monotonic()
    return arrived


def disconnected(request: Request) -> Callable[[], Coroutine[Any, Any, Any]]:
    """What waits for the client to go away, once the request's body has been read: the
    server's next message for the request is ``http.disconnect`` (uvicorn sends it when the
    connection drops, or after the response)."""
    receive = request.receive

    async def wait() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    return wait


def left(request: Request) -> Callable[[], bool]:
    """Whether the client has left by now (its connection closed), without waiting: asks the
    connection the HTTP protocol put in the scope (:mod:`serving.protocol`); never, where none
    is (another ASGI server, the test client)."""
    transport = request.scope.get(TRANSPORT)
    if transport is None:
        return lambda: False
    closing: Callable[[], bool] = transport.is_closing
    return closing
