"""``exitwise calibrate`` (reserved: implemented by the ``calibrate`` package's command)."""

from __future__ import annotations

import typer

from ..errors import ExitwiseError


def register(app: typer.Typer) -> None:
    app.command(
        "calibrate", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
    )(calibrate)


def calibrate() -> None:
    """Not available in this build yet."""
    raise ExitwiseError("`exitwise calibrate` is not available in this build yet")
