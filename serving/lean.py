"""The inference routes answered before the framework's middleware stack.

A request to ``POST /v1/classify`` or ``POST /v2/models/{name}[/versions/{v}]/infer`` costs a
few hundred microseconds of Python on top of the network; FastAPI's and Starlette's layers
(server errors, body limits, exception handlers, routing, dependencies) were a quarter of it
under load on one core. :class:`ServingApp` sends these two routes straight to their handlers
through the server's own middleware (:mod:`serving.middleware`: metrics, body limit, the
catch-all) and the error table; everything else takes FastAPI's path. The same handlers are
FastAPI routes too (the OpenAPI schema; an app mounted under a prefix), so there is one
implementation of each.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from .errors import response_for
from .middleware import ServingMiddleware

Handler = Callable[..., Awaitable[Response]]

_V2 = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer$")


class _Route:
    """Stands for Starlette's matched route in the scope: the middleware labels by ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path


V1 = _Route("/v1/classify")
V2 = _Route("/v2/models/{name}/infer")
V2_VERSION = _Route("/v2/models/{name}/versions/{version}/infer")


class ServingApp(FastAPI):
    """FastAPI with the inference routes taken first (see the module docstring)."""

    lean: ServingMiddleware | None = None  # set by create_app
    classify: Handler | None = None
    infer: Handler | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.lean is not None and scope["type"] == "http" and scope["method"] == "POST":
            path = scope["path"]
            if path == V1.path or _V2.match(path):
                scope["app"] = self
                await self.lean(scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    async def dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The lean routes' ASGI app, inside the server's middleware."""
        path = scope["path"]
        request = Request(scope, receive)
        try:
            if path == V1.path:
                scope["route"] = V1
                assert self.classify is not None
                response = await self.classify(request)
            else:
                match = _V2.match(path)
                assert match is not None and self.infer is not None
                name, version = match.group(1), match.group(2)
                scope["route"] = V2 if version is None else V2_VERSION
                response = await self.infer(request, name, version)
        except Exception as err:
            answer = response_for(err, scope)
            if answer is None:
                raise  # a bug: the middleware logs it and answers a generic 500
            response = answer
        await response(scope, receive, send)


def lean_middleware(app: ServingApp, **kwargs: Any) -> ServingMiddleware:
    return ServingMiddleware(app.dispatch, **kwargs)
