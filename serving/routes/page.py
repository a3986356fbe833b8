"""The playground page: ``GET /`` and its static files, shipped inside the ``serving`` package.

Everything the page needs is here (HTML, CSS, ES modules; charts are hand-written SVG): no build
step, no CDN, nothing fetched from outside, which a Content-Security-Policy of ``'self'`` makes
the browser enforce. The page and its files load without the API key; the data it then asks
for (``/v1/model``, ``/v1/classify``, ``/v1/samples``, ``/v1/live``) needs the key when the
server has one, so the page first reads ``/playground/config.json`` to know whether to ask.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ..errors import NotFoundError
from ..params import NAMES
from .samples import CURVE_FILE

router = APIRouter(tags=["playground"], include_in_schema=False)

STATIC_DIR = "static"  # inside the serving package (pyproject: package-data)
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
# Only the page's own origin: scripts, styles and requests; images also from blob: URLs (the
# page fetches images with the API key and shows them as blobs) and data: (the empty favicon).
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@dataclass(frozen=True)
class StaticFile:
    body: bytes
    media_type: str
    etag: str


@cache
def static_files() -> dict[str, StaticFile]:
    """The package's static files by name, read once (they are a few kilobytes)."""
    files: dict[str, StaticFile] = {}
    for entry in (resources.files("serving") / STATIC_DIR).iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1] if "." in entry.name else ""
        if entry.is_file() and suffix in MEDIA_TYPES:
            body = entry.read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
            files[entry.name] = StaticFile(body, MEDIA_TYPES[suffix], etag)
    return files


def _serve(request: Request, name: str) -> Response:
    found = static_files().get(name)
    if found is None:
        raise NotFoundError(f"no such page file: {name}")
    # no-cache: the browser revalidates (a 304 costs nothing), so an upgraded server never
    # runs against an old script.
    headers = {"ETag": found.etag, "Cache-Control": "no-cache", **SECURITY_HEADERS}
    if request.headers.get("if-none-match") == found.etag:
        return Response(status_code=304, headers=headers)
    return Response(found.body, media_type=found.media_type, headers=headers)


@router.get("/")
async def index(request: Request) -> Response:
    return _serve(request, "index.html")


@router.get("/playground/config.json")
async def config(request: Request) -> dict[str, Any]:
    """What the page must know before it may call anything else (no key needed)."""
    settings = request.app.state.settings
    return {
        "api_key_required": settings.api_key is not None,
        # Request parameters this server understands: the page shows a control for an optional
        # one (deadline_ms) only when the server lists it.
        "parameters": list(NAMES),
        "calibration_curve": (settings.bundle / CURVE_FILE).is_file(),
    }


@router.get("/playground/{name}")
async def static(request: Request, name: str) -> Response:
    return _serve(request, name)
