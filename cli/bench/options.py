"""Comma-separated options of the ``exitwise bench`` commands (``--batch-sizes 1,32``)."""

from __future__ import annotations

from exitwise.errors import ExitwiseError


def parse_ints(text: str, option: str, minimum: int = 1) -> list[int]:
    """``"1,32"`` -> ``[1, 32]``; anything else is one readable :class:`ExitwiseError`."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < minimum:
        raise ExitwiseError(
            f"{option}: expected comma-separated integers >= {minimum} like 1,32, got {text!r}"
        )
    return values


def parse_floats(text: str, option: str) -> list[float]:
    """``"1,2.5"`` -> ``[1.0, 2.5]`` (positive, finite); else one readable error."""
    import math

    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise ExitwiseError(f"{option}: expected comma-separated positive numbers, got {text!r}")
    return values
