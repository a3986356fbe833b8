"""``GET /v1/model``: architecture, exits and their costs, operating points, backend, limits."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from exitwise import __version__

from ..deps import Authorized, Service
from ..service import ModelService

router = APIRouter(tags=["v1"])


@router.get("/v1/model", dependencies=[Authorized])
async def model(service: Service) -> dict[str, Any]:
    return describe(service)


def describe(service: ModelService) -> dict[str, Any]:
    """What ``GET /v1/model`` returns."""
    m = service.manifest
    cal = service.loaded.calibration
    anytime = {a.exit: a for a in cal.anytime} if cal else {}
    exits = []
    for e in m.exits:
        item: dict[str, Any] = {"exit": e.exit, "mflops": e.mflops, "params_m": e.params_m}
        if e.exit in anytime:
            item["heldout_accuracy"] = anytime[e.exit].heldout_top1
            item["test_accuracy"] = anytime[e.exit].test_top1
        exits.append(item)
    resolver = service.resolver
    control = service.control
    points = [
        {
            "name": p.name,
            "target_mflops": p.target_mflops,
            "expected_mflops": p.expected_mflops,
            "thresholds": p.thresholds,
            "heldout": p.heldout.model_dump(),
            "test": p.test.model_dump() if p.test else None,
            "budget_control": control.describe(p.name),
        }
        for p in resolver.points
    ]
    budget_range = resolver.budget_range
    s = service.settings
    runner = service.runner
    return {
        "name": service.name,
        "version": "1",
        "exitwise_version": __version__,
        "arch": m.arch,
        "preset": m.preset,
        "dataset": m.dataset,
        "num_classes": m.num_classes,
        "class_names": m.class_names,
        "input": {
            "channels": m.preprocessing.channels,
            "size": m.preprocessing.input_size,
            "preprocessing": m.preprocessing.model_dump(mode="json"),
        },
        "weights_sha256": m.weights.sha256,
        "exits": exits,
        "calibrated": cal is not None,
        "operating_points": points,
        "default_operating_point": cal.default_operating_point if cal else None,
        "budget_mflops_range": list(budget_range) if budget_range else None,
        "default_plan": resolver.resolve().describe(),
        "latency_model": service.engine.latency.describe(),
        "degradation": {
            "enabled_by_default": s.degrade,
            "level": service.degrader.level,
            "queue_ms": s.degrade_queue_ms,
            "hold_ms": s.degrade_hold_ms,
        },
        "budget_control": {
            "enabled": control.enabled,
            "available": control.available,
            "window": control.settings.window,
            "tolerance": control.settings.tolerance,
        },
        "backend": runner.backend,
        "device": str(runner.device),
        "provider": runner.provider,
        "limits": {
            "max_batch_size": s.max_batch_size,
            "max_wait_ms": s.max_wait_ms,
            "max_stage_wait_ms": s.max_stage_wait_ms,
            "max_queue_images": s.max_queue_images,
            "max_images_per_request": s.max_images_per_request,
            "max_body_bytes": s.max_body_bytes,
            "max_image_pixels": s.max_image_pixels,
            "request_timeout_s": s.request_timeout_s,
        },
    }
