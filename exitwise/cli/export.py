"""``exitwise export`` (reserved: implemented by the ``export`` package's command)."""

from __future__ import annotations

import typer

from ..errors import ExitwiseError


def register(app: typer.Typer) -> None:
    app.command(
        "export", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
    )(export)


def export() -> None:
    """Not available in this build yet."""
    raise ExitwiseError("`exitwise export` is not available in this build yet")
