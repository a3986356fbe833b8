"""Liveness, readiness and the Prometheus endpoint (open unless ``metrics_require_key``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..deps import check_metrics_key, get_lifecycle, get_metrics
from ..errors import error_response
from ..lifecycle import Lifecycle
from ..metrics import Metrics

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> JSONResponse:
    """Liveness: the process is up and its event loop answers."""
    return JSONResponse({"status": "ok"})


@router.get("/readyz")
async def readyz(lifecycle: Annotated[Lifecycle, Depends(get_lifecycle)]) -> JSONResponse:
    """Readiness: 200 once the model is loaded and warmed up; 503 before that and while draining."""
    if lifecycle.ready:
        return JSONResponse({"status": "ready"})
    return error_response(503, f"not ready ({lifecycle.phase.value})", headers={"Retry-After": "5"})


@router.get("/metrics", dependencies=[Depends(check_metrics_key)])
async def metrics(metrics: Annotated[Metrics, Depends(get_metrics)]) -> Response:
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
