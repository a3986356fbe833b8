"""``exitwise train`` (reserved: implemented by the ``train`` package's command)."""

from __future__ import annotations

import typer

from ..errors import ExitwiseError


def register(app: typer.Typer) -> None:
    app.command(
        "train", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
    )(train)


def train() -> None:
    """Not available in this build yet."""
    raise ExitwiseError("`exitwise train` is not available in this build yet")
