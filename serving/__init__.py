"""Serving: the FastAPI app, its engine (batcher + torch / onnxruntime backends), REST v1 and
Open Inference Protocol v2 routes, metrics, errors and the HTTP load client.

``create_app(Settings(bundle=...))`` builds the app; ``exitwise serve`` runs it under uvicorn.
Heavy imports (FastAPI, torch) happen when these names are first used, not at package import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import create_app
    from .settings import Settings

__all__ = ["Settings", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "Settings":
        from .settings import Settings

        return Settings
    raise AttributeError(name)
