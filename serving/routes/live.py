"""``GET /v1/live``: the server's last minute as JSON, for the playground page's live panel.

The figures come from :class:`serving.live.LiveStats` (requests/s, p50/p99 per operating point,
exit mix, realised MFLOPs per image, a per-5-second timeline); see docs/serving.md.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request

from ..deps import Authorized
from ..errors import NotReadyError
from ..live import LiveStats

router = APIRouter(tags=["playground"])


@router.get("/v1/live", dependencies=[Authorized])
async def live(request: Request) -> dict[str, Any]:
    stats: LiveStats | None = getattr(request.app.state, "live", None)
    if stats is None:
        raise NotReadyError("the model is not loaded yet")
    # A minute of a busy server is tens of thousands of requests: add them up off the loop.
    return await asyncio.to_thread(stats.summary)
