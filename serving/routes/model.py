"""``GET /v1/model``: architecture, exits and their costs, operating points, backend, limits."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from ..deps import Authorized, Service

router = APIRouter(tags=["v1"])


@router.get("/v1/model", dependencies=[Authorized])
async def model(service: Service) -> dict[str, Any]:
    return service.describe()
