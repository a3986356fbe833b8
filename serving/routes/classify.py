"""``POST /v1/classify``: one or more encoded images, multipart or a raw body.

- ``multipart/form-data``: every file part is an image (in order, any field name); the text
  fields ``budget_mflops``, ``max_exit``, ``top_k`` may come here or in the query string.
- ``image/*`` or ``application/octet-stream``: the body is one image; parameters in the query.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..deps import arrival_of, authorize, disconnected, left, service_of
from ..errors import BadRequestError, PayloadTooLargeError, UnsupportedMediaTypeError
from ..messages import ClassifyRequest, ClassifyResult
from ..params import declines, merge_fields, parse_params

router = APIRouter(tags=["v1"])

_MAX_TEXT_FIELDS = 16
_MAX_TEXT_BYTES = 1024


async def _read_multipart(
    request: Request, max_images: int
) -> tuple[list[bytes], list[str], list[tuple[str, str]]]:
    try:
        form = await request.form(
            max_files=max_images, max_fields=_MAX_TEXT_FIELDS, max_part_size=_MAX_TEXT_BYTES
        )
    except StarletteHTTPException as err:  # Starlette's multipart errors arrive as a 400
        detail = str(err.detail)
        if detail.startswith("Too many files"):
            raise PayloadTooLargeError(
                f"more than {max_images} images in one request; the limit is {max_images}"
            ) from None
        raise BadRequestError(f"malformed multipart body: {detail}") from None
    try:
        blobs: list[bytes] = []
        names: list[str] = []
        fields: list[tuple[str, str]] = []
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                blobs.append(await value.read())
                names.append(value.filename or "")
            else:
                fields.append((key, value))
        return blobs, names, fields
    finally:
        await form.close()


def render(service_name: str, result: ClassifyResult, filenames: list[str] | None) -> Any:
    items = []
    for i, p in enumerate(result.predictions):
        item: dict[str, Any] = {"index": i}
        if filenames and filenames[i]:
            item["filename"] = filenames[i]
        item.update(
            class_id=p.class_id,
            class_name=p.class_name,
            confidence=p.confidence,
            exit=p.exit,
            stopped=p.stopped,
            mflops=p.mflops,
            top_k=[{"class_id": c, "class_name": n, "probability": pr} for c, n, pr in p.top],
        )
        items.append(item)
    out = {
        "model": service_name,
        "operating_point": result.plan.describe(),
        "mean_mflops": result.mean_mflops,
        "results": items,
    }
    if result.deadline_s is not None:
        # As the client wrote it: 1001 / 1000 * 1000 is 1000.9999999999999.
        out["deadline_ms"] = round(result.deadline_s * 1000, 9)
        out["deadline_met"] = result.deadline_met()
    return out


_PARAMS = [
    {"name": "budget_mflops", "in": "query", "schema": {"type": "number", "exclusiveMinimum": 0},
     "description": "Average MFLOPs per image: the calibrated operating point with the largest "
                    "expected cost not above it."},
    {"name": "max_exit", "in": "query", "schema": {"type": "integer", "minimum": 1},
     "description": "Hard cap on the exit (1-based); alone, every image runs to this exit."},
    {"name": "top_k", "in": "query", "schema": {"type": "integer", "minimum": 0},
     "description": "Classes with probabilities to return per image (default 5)."},
    {"name": "timeout_ms", "in": "query", "schema": {"type": "number", "exclusiveMinimum": 0},
     "description": "A hard deadline shorter than the server's (504 past it)."},
    {"name": "deadline_ms", "in": "query", "schema": {"type": "number", "exclusiveMinimum": 0},
     "description": "Answer within this time, as well as possible: each image from the deepest "
                    "exit it completes in time (its `stopped` says `deadline`)."},
    {"name": "degrade", "in": "query", "schema": {"type": "boolean"},
     "description": "Under load, may be served at a cheaper operating point, and answered "
                    "from an exit it passed to make room in a full queue (default: the "
                    "server's setting)."},
    {"name": "budget_control", "in": "query", "schema": {"type": "string", "enum": ["on", "off"]},
     "description": "off: the calibrated thresholds even while budget control has moved them."},
    {"name": "deadline_policy", "in": "query",
     "schema": {"type": "string", "enum": ["late", "strict"]},
     "description": "When not even exit 1 is forecast to make deadline_ms: late (default) "
                    "answers from exit 1 anyway and says so; strict answers 503 at once."},
]  # fmt: skip
_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"image": {"type": "array", "items": {"type": "string",
                                                                    "format": "binary"}}},
            }
        },
        "image/*": {"schema": {"type": "string", "format": "binary"}},
    },
}  # fmt: skip


@router.post("/v1/classify", openapi_extra={"parameters": _PARAMS, "requestBody": _BODY})
async def classify(request: Request) -> JSONResponse:
    started = arrival_of(request)
    authorize(request)
    service = service_of(request)
    # A degrade=false in the query is known now; in the form, only once the body is read.
    service.check_room(not declines(request.query_params.get("degrade")))
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    form_fields: list[tuple[str, str]] = []
    filenames: list[str] | None = None
    reading = "reading the request body"
    if media == "multipart/form-data":
        limit = service.settings.max_images_per_request
        blobs, filenames, form_fields = await service.receive(
            _read_multipart(request, limit), started, reading
        )
    elif media.startswith("image/") or media == "application/octet-stream":
        blobs = [await service.receive(request.body(), started, reading)]
    else:
        raise UnsupportedMediaTypeError(
            f"unsupported content type {media or '(none)'!r}: send multipart/form-data with "
            "image files, or one image as the body with an image/* content type"
        )
    params = parse_params(merge_fields(request.query_params.multi_items(), form_fields))
    result = await service.classify(
        ClassifyRequest(
            started,
            params,
            encoded=blobs,
            labels=filenames,
            gone=disconnected(request),
            left=left(request),
        )
    )
    return JSONResponse(
        render(service.name, result, filenames),
        headers={"Server-Timing": result.server_timing()},
    )
