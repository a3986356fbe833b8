"""``exitwise serve`` (reserved: implemented by the ``serve`` package's command)."""

from __future__ import annotations

import typer

from ..errors import ExitwiseError


def register(app: typer.Typer) -> None:
    app.command(
        "serve", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
    )(serve)


def serve() -> None:
    """Not available in this build yet."""
    raise ExitwiseError("`exitwise serve` is not available in this build yet")
