"""The FastAPI application factory.

``create_app(settings)`` builds the app; nothing is loaded and no environment is read at import.
The lifespan loads the bundle once (weights, calibration, runner; or takes a model the caller
already loaded, so ``exitwise serve`` can report a bad bundle before it listens), warms the
network up, starts the engine, and only then turns ready. On shutdown it stops accepting work,
lets the engine finish what is queued, and releases everything.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from exitwise import __version__

from . import collector, errors
from .lean import ServingApp, lean_middleware
from .lifecycle import Lifecycle
from .live import LiveStats
from .loading import LoadedModel, load_model
from .metrics import Metrics
from .middleware import ServingMiddleware
from .routes import classify, health, model, page, samples, v2
from .routes import live as live_route
from .service import ModelService
from .settings import Settings

log = logging.getLogger("exitwise.serving")


def create_app(
    settings: Settings,
    *,
    registry: CollectorRegistry | None = None,
    loaded: LoadedModel | None = None,
) -> FastAPI:
    """The server for ``settings.bundle``; metrics go to ``registry`` (a fresh one by default)."""
    metrics = Metrics(registry if registry is not None else CollectorRegistry())
    lifecycle = Lifecycle()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Loading and warm-up block for seconds: keep them off the event loop.
        model = loaded if loaded is not None else await asyncio.to_thread(load_model, settings)
        live = LiveStats(model.bundle.manifest.num_exits)
        service = ModelService(settings, model, metrics, live)
        await asyncio.to_thread(service.start)
        # Everything loaded so far lives as long as the server: out of the collector's way
        # (its full passes walked it all and made the classify route's p99 ten times its p50
        # under load), and full collections every ten minutes, not every few seconds.
        collector.settle()
        full = collector.FullCollections(asyncio.get_running_loop(), paused=metrics.gc_paused)
        app.state.service = service
        app.state.live = live
        lifecycle.mark_ready()
        log.info(
            "serving %s (%d exits) with %s on %s; ready",
            service.name,
            service.manifest.num_exits,
            service.runner.provider,
            service.runner.device,
        )
        try:
            yield
        finally:
            full.stop()
            lifecycle.begin_drain()
            await asyncio.to_thread(service.stop)
            lifecycle.mark_stopped()
            log.info("engine stopped")

    app = ServingApp(
        title="exitwise",
        version=__version__,
        summary="Budgeted early-exit image classification",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.lifecycle = lifecycle
    app.state.service = None
    app.state.live = None  # the last minute of classifications, for the page (GET /v1/live)
    errors.install(app)
    app.add_middleware(ServingMiddleware, metrics=metrics, max_body_bytes=settings.max_body_bytes)
    # The inference routes go straight to their handlers (serving.lean), with the same
    # middleware; FastAPI serves them too (its schema, an app mounted under a prefix).
    app.lean = lean_middleware(app, metrics=metrics, max_body_bytes=settings.max_body_bytes)
    app.classify, app.infer = classify.classify, v2.infer_model
    for router in (health.router, classify.router, model.router, v2.router):
        app.include_router(router)
    # The playground page at / and what only it uses (samples, the curve, the live summary).
    for router in (page.router, samples.router, live_route.router):
        app.include_router(router)
    return app


def app_from_env() -> FastAPI:
    """For ASGI servers that take a factory (``uvicorn --factory serving.app:app_from_env``):
    the settings come from ``EXITWISE_*`` environment variables when it is called."""
    return create_app(Settings())  # type: ignore[call-arg]  # bundle comes from the environment
