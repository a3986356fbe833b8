"""Typed dependencies shared by the routers: the service, the API key check, in-flight tracking.

All are ``async def``: FastAPI runs plain ``def`` dependencies in a thread pool, a thread hop per
dependency per request that costs more than these functions themselves.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request

from .errors import NotReadyError, UnauthorizedError
from .lifecycle import Lifecycle
from .metrics import Metrics
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


async def get_service(request: Request) -> ModelService:
    """The loaded model; 503 before warm-up has finished or after shutdown has begun."""
    lifecycle: Lifecycle = request.app.state.lifecycle
    service: ModelService | None = getattr(request.app.state, "service", None)
    if service is None or not lifecycle.serving or not service.engine.accepting:
        raise NotReadyError(f"the model is not ready ({lifecycle.phase.value})")
    return service


def _presented_key(request: Request) -> str | None:
    auth = request.headers.get("authorization")
    if auth is not None:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return request.headers.get("x-api-key")


async def check_api_key(request: Request) -> None:
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
    if not secrets.compare_digest(presented.encode(), expected.encode()):
        raise UnauthorizedError("invalid API key")


async def check_metrics_key(request: Request) -> None:
    if request.app.state.settings.metrics_require_key:
        await check_api_key(request)


async def track_inflight(request: Request) -> AsyncIterator[None]:
    metrics: Metrics = request.app.state.metrics
    with metrics.inflight.track_inprogress():
        yield


Service = Annotated[ModelService, Depends(get_service)]
Authorized = Depends(check_api_key)
InFlight = Depends(track_inflight)
