"""Open Inference Protocol v2 (KServe / Triton HTTP): health, metadata, model ready, infer.

Inputs (exactly one per request):

- ``input``: FP32 ``[N, C, H, W]``, already normalised as the bundle's preprocessing says;
- ``image``: BYTES ``[N]`` (or ``[N, 1]``), encoded images (PNG, JPEG, ...), decoded and
  preprocessed by the server exactly like REST v1 uploads.

Budget in the request's top-level ``parameters``: ``budget_mflops`` and/or ``max_exit``, and
``deadline_ms``, ``degrade``, ``budget_control`` as in REST v1. Outputs: ``class_id`` INT64,
``class_name`` BYTES, ``confidence`` FP64, ``exit`` INT64 (1-based), ``mflops`` FP64,
``stop_reason`` BYTES (confident, cap, deadline, overload); the response's ``parameters`` say which
operating point was used.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from exitwise import __version__

from ..deps import (
    Authorized,
    Service,
    arrival_of,
    authorize,
    disconnected,
    get_lifecycle,
    left,
    service_of,
)
from ..errors import BadRequestError, ModelNotFoundError, error_response
from ..lifecycle import Lifecycle
from ..messages import ClassifyRequest, ClassifyResult
from ..params import check_v2, parse_params
from ..service import ModelService
from ..v2_codec import HEADER_LENGTH, encode_response, parse_request, shown

router = APIRouter(tags=["v2"])

VERSION = "1"
OUTPUTS = {
    "class_id": "INT64",
    "class_name": "BYTES",
    "confidence": "FP64",
    "exit": "INT64",
    "mflops": "FP64",
    "stop_reason": "BYTES",
}


def _check_model(service: ModelService, name: str, version: str | None) -> None:
    if name != service.name:
        raise ModelNotFoundError(f"unknown model {name!r}; this server serves {service.name!r}")
    if version is not None and version != VERSION:
        raise ModelNotFoundError(f"model {name!r} has no version {version!r} (only {VERSION!r})")


@router.get("/v2")
async def server_metadata() -> dict[str, Any]:
    return {"name": "exitwise", "version": __version__, "extensions": ["binary_tensor_data"]}


@router.get("/v2/health/live")
async def live() -> JSONResponse:
    return JSONResponse({"live": True})


@router.get("/v2/health/ready")
async def ready(lifecycle: Annotated[Lifecycle, Depends(get_lifecycle)]) -> JSONResponse:
    if lifecycle.ready:
        return JSONResponse({"ready": True})
    return error_response(503, f"not ready ({lifecycle.phase.value})", {"Retry-After": "5"})


@router.get("/v2/models/{name}/ready")
async def model_ready(
    request: Request, name: str, lifecycle: Annotated[Lifecycle, Depends(get_lifecycle)]
) -> JSONResponse:
    return _model_ready(request, name, None, lifecycle)


@router.get("/v2/models/{name}/versions/{version}/ready")
async def model_version_ready(
    request: Request,
    name: str,
    version: str,
    lifecycle: Annotated[Lifecycle, Depends(get_lifecycle)],
) -> JSONResponse:
    return _model_ready(request, name, version, lifecycle)


def _model_ready(
    request: Request, name: str, version: str | None, lifecycle: Lifecycle
) -> JSONResponse:
    service: ModelService | None = getattr(request.app.state, "service", None)
    if service is not None:
        _check_model(service, name, version)
    if service is not None and lifecycle.ready:
        return JSONResponse({"name": name, "ready": True})
    return error_response(503, f"not ready ({lifecycle.phase.value})", {"Retry-After": "5"})


@router.get("/v2/models/{name}", dependencies=[Authorized])
async def model_metadata(service: Service, name: str) -> Any:
    return _metadata(service, name, None)


@router.get("/v2/models/{name}/versions/{version}", dependencies=[Authorized])
async def model_version_metadata(service: Service, name: str, version: str) -> Any:
    return _metadata(service, name, version)


def _metadata(service: ModelService, name: str, version: str | None) -> Any:
    _check_model(service, name, version)
    c, size = service.preprocessing.channels, service.preprocessing.input_size
    return {
        "name": service.name,
        "versions": [VERSION],
        "platform": f"exitwise-{service.runner.backend}",
        "inputs": [
            {"name": "input", "datatype": "FP32", "shape": [-1, c, size, size]},
            {"name": "image", "datatype": "BYTES", "shape": [-1]},
        ],
        "outputs": [{"name": n, "datatype": d, "shape": [-1]} for n, d in OUTPUTS.items()],
    }


@router.post("/v2/models/{name}/infer")
async def infer(request: Request, name: str) -> Response:
    return await infer_model(request, name, None)


@router.post("/v2/models/{name}/versions/{version}/infer")
async def infer_version(request: Request, name: str, version: str) -> Response:
    return await infer_model(request, name, version)


async def infer_model(request: Request, name: str, version: str | None) -> Response:
    started = arrival_of(request)
    authorize(request)
    service = service_of(request)
    _check_model(service, name, version)
    service.check_room()
    body = await service.receive(request.body(), started, "reading the request body")
    header_length = request.headers.get(HEADER_LENGTH)
    req, data = await service.parse(
        lambda: parse_request(body, header_length), started, "parsing the request"
    )
    if len(req.inputs) != 1:
        raise BadRequestError("send exactly one input: 'input' (FP32) or 'image' (BYTES)")
    tensor, values = req.inputs[0], data[0]
    # Triton's convention: the client's `timeout` parameter is in microseconds. No top-k
    # outputs in v2: the response's tensors are fixed.
    check_v2(req.parameters)
    params = replace(
        parse_params(req.parameters, timeout_key="timeout", timeout_per_s=1e6), top_k=0
    )
    if tensor.name == "input":
        if tensor.datatype != "FP32":
            raise BadRequestError(f"input 'input' must be FP32, not {shown(tensor.datatype)}")
        classify = ClassifyRequest(
            started, params, tensor=values, gone=disconnected(request), left=left(request)
        )
    elif tensor.name == "image":
        if tensor.datatype != "BYTES":
            raise BadRequestError(f"input 'image' must be BYTES, not {shown(tensor.datatype)}")
        if len(tensor.shape) not in (1, 2) or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
            raise BadRequestError(
                f"input 'image' must have shape [N] or [N, 1], not {tensor.shape}"
            )
        classify = ClassifyRequest(
            started, params, encoded=values, gone=disconnected(request), left=left(request)
        )
    else:
        raise BadRequestError(
            f"unknown input {tensor.name!r}; inputs: 'input' (FP32), 'image' (BYTES)"
        )
    outputs = _outputs(req.parameters, req.outputs)  # a mistake in them: a 400 before any work
    result = await service.classify(classify)
    return _respond(service, req.id, outputs, result)


def _outputs(parameters: dict[str, Any], requested: Any) -> dict[str, bool]:
    """The outputs the answer carries, in order, and whether each is sent as binary data."""
    binary_all = parameters.get("binary_data_output") is True
    if not requested:
        return dict.fromkeys(OUTPUTS, binary_all)
    unknown = [o.name for o in requested if o.name not in OUTPUTS]
    if unknown:
        raise BadRequestError(f"unknown output {unknown[0]!r}; outputs: {', '.join(OUTPUTS)}")
    return {o.name: o.parameters.get("binary_data", binary_all) is True for o in requested}


def _respond(
    service: ModelService, request_id: str | None, binary: dict[str, bool], result: ClassifyResult
) -> Response:
    preds = result.predictions
    values: dict[str, Any] = {
        "class_id": np.array([p.class_id for p in preds], dtype=np.int64),
        "class_name": [p.class_name for p in preds],
        "confidence": np.array([p.confidence for p in preds], dtype=np.float64),
        "exit": np.array([p.exit for p in preds], dtype=np.int64),
        "mflops": np.array([p.mflops for p in preds], dtype=np.float64),
        "stop_reason": [p.stopped for p in preds],
    }
    names = list(binary)
    header: dict[str, Any] = {"model_name": service.name, "model_version": VERSION}
    if request_id is not None:
        header["id"] = request_id
    header["parameters"] = {k: v for k, v in result.plan.describe().items() if v is not None} | {
        "mean_mflops": result.mean_mflops
    }
    if result.deadline_s is not None:
        header["parameters"]["deadline_met"] = result.deadline_met()
    body, json_length = encode_response(header, [(n, OUTPUTS[n], values[n]) for n in names], binary)
    headers = {"Server-Timing": result.server_timing()}
    if json_length is None:
        return Response(body, media_type="application/json", headers=headers)
    headers["Inference-Header-Content-Length"] = str(json_length)
    return Response(body, media_type="application/octet-stream", headers=headers)
