"""Domain errors of the server and the ONE table that maps them to HTTP statuses.

Code anywhere in ``serving`` raises these (or the core's image errors); :func:`install` registers
one handler that turns them into ``{"error": message}`` with the status from :data:`STATUS`.
Framework errors (unknown route, wrong method, malformed parameters) get the same JSON shape.
Anything else is a bug: the client sees a generic 500 and the traceback goes to the log (see
:mod:`serving.middleware`), so exception text never reaches a client.
"""

from __future__ import annotations

import logging
import math
from collections.abc import MutableMapping
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from exitwise.errors import ExitwiseError
from exitwise.preprocess import ImageTooLargeError, InvalidImageError

log = logging.getLogger("exitwise.serving")


class ServingError(ExitwiseError):
    """Base of the server's request errors; ``str(err)`` is what the client reads, ``headers``
    go with the response."""

    headers: ClassVar[dict[str, str] | None] = None
    refusal: str | None = None  # a 503 the server chose (exitwise_refused_total's reason)

    def response_headers(self) -> dict[str, str] | None:
        return self.headers


class BadRequestError(ServingError):
    """A malformed request (bad JSON, wrong tensor shape, non-finite pixels, ...)."""


class UnauthorizedError(ServingError):
    headers: ClassVar[dict[str, str] | None] = {"WWW-Authenticate": "Bearer"}


class ModelNotFoundError(ServingError):
    pass


class NotFoundError(ServingError):
    """Something the route serves that does not exist (a sample image, the calibration curve)."""


class PayloadTooLargeError(ServingError):
    """Body over the size limit, or more images than allowed per request."""


class UnsupportedMediaTypeError(ServingError):
    pass


class InvalidParameterError(ServingError):
    """A parameter with a bad value: budget below the cheapest operating point, bad max_exit, ..."""


class QueueFullError(ServingError):
    headers: ClassVar[dict[str, str] | None] = {"Retry-After": "1"}
    refusal = "queue_full"


class DeadlineUnmeetableError(ServingError):
    """Not even exit 1 is forecast to make the deadline, and the request is refused rather than
    answered late: ``refusal`` says why (``deadline_strict``: it asked so; ``deadline_shed``:
    degradation is at its cheapest point)."""

    def __init__(self, message: str, retry_after_s: float, refusal: str) -> None:
        super().__init__(message)
        self.retry_after = max(1, math.ceil(retry_after_s))
        self.refusal = refusal

    def response_headers(self) -> dict[str, str] | None:
        return {"Retry-After": str(self.retry_after)}


class NotReadyError(ServingError):
    headers: ClassVar[dict[str, str] | None] = {"Retry-After": "5"}
    refusal = "not_ready"


class DeadlineExceededError(ServingError):
    """The request timeout (``request_timeout_s``, or the client's ``timeout_ms``) passed."""


class ClientGoneError(ServingError):
    """The client disconnected before its answer (499, as nginx logs it; nobody reads it)."""


class ServerConfigError(ExitwiseError):
    """A setting that cannot work with this bundle or machine (raised at start-up)."""


# The one table. Order does not matter: lookups walk the exception's MRO.
STATUS: dict[type[Exception], int] = {
    BadRequestError: 400,
    InvalidImageError: 400,
    UnauthorizedError: 401,
    ModelNotFoundError: 404,
    NotFoundError: 404,
    PayloadTooLargeError: 413,
    ImageTooLargeError: 413,
    UnsupportedMediaTypeError: 415,
    InvalidParameterError: 422,
    QueueFullError: 503,
    DeadlineUnmeetableError: 503,
    NotReadyError: 503,
    DeadlineExceededError: 504,
    ClientGoneError: 499,
    # Starlette's, from a body read when the client left mid-upload: no bug, and no answer.
    ClientDisconnect: 499,
}


def status_of(err: BaseException) -> int | None:
    for cls in type(err).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return None


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


REFUSAL = "exitwise.refusal"  # the scope key: why the server refused the request (a 503)


def response_for(
    err: Exception, scope: MutableMapping[str, Any] | None = None
) -> JSONResponse | None:
    """The table's answer to ``err``; None when it is not in the table (a bug: a 500). A
    refusal's reason goes in ``scope``, for the metrics middleware."""
    status = status_of(err)
    if status is None:
        return None
    headers = None
    if isinstance(err, ServingError):
        headers = err.response_headers()
        if scope is not None and err.refusal is not None:
            scope[REFUSAL] = err.refusal
    return error_response(status, str(err), headers)


async def _domain_error(request: Request, err: Exception) -> JSONResponse:
    response = response_for(err, request.scope)
    if response is None:  # registered below only for table entries; defensive
        raise err
    return response


async def _http_error(request: Request, err: Exception) -> JSONResponse:
    assert isinstance(err, StarletteHTTPException)
    detail = err.detail if isinstance(err.detail, str) else "request failed"
    return error_response(err.status_code, detail, dict(err.headers or {}) or None)


def _describe_validation(errors: Any) -> str:
    parts = []
    for e in errors[:3]:
        loc = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path"))
        parts.append(f"{loc or 'request'}: {e.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


async def _validation_error(request: Request, err: Exception) -> JSONResponse:
    assert isinstance(err, RequestValidationError)
    return error_response(422, _describe_validation(err.errors()))


def install(app: FastAPI) -> None:
    """Register the handlers: the table's errors, framework HTTP errors, validation errors."""
    for cls in STATUS:
        app.add_exception_handler(cls, _domain_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
