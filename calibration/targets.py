"""Which operating points to solve for: parsing and checking budgets and fractions, naming them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import BudgetError
from .solver import check_target, describe_range

DEFAULT_FRACTIONS = (0.25, 0.5, 0.75)


@dataclass(frozen=True)
class Target:
    name: str  # "budget-8.00", "fraction-0.50"
    mflops: float
    fraction: float | None = None  # of the last exit's cost, when asked as a fraction


def parse_numbers(text: str | None, what: str) -> list[float]:
    """``"8,12.5,20"`` to floats; a BudgetError naming the offending item."""
    if text is None:
        return []
    items = [s.strip() for s in text.split(",")]
    if not any(items):
        raise BudgetError(f"--{what} is empty; give comma-separated numbers, e.g. 8,12,20")
    out = []
    for item in items:
        if not item:
            raise BudgetError(f"--{what} {text!r} has an empty item")
        try:
            value = float(item)
        except ValueError:
            raise BudgetError(f"--{what}: {item!r} is not a number") from None
        if math.isnan(value):
            raise BudgetError(f"--{what}: {item!r} is not a number")
        out.append(value)
    return out


def _digits(values: Sequence[float]) -> int:
    """The fewest decimals (at least 2) that keep distinct values' names distinct."""
    distinct = sorted(set(values))
    for digits in range(2, 10):
        if len({f"{v:.{digits}f}" for v in distinct}) == len(distinct):
            return digits
    return 12


def plan_targets(
    budgets: Sequence[float], fractions: Sequence[float], exit_mflops: Sequence[float]
) -> list[Target]:
    """Checked targets, ordered by cost; with neither budgets nor fractions, the default
    fractions 0.25 / 0.5 / 0.75 of the last exit's cost, raised to exit 1's cost if below it."""
    low, high = float(exit_mflops[0]), float(exit_mflops[-1])
    shown = f"{math.ceil(low / high * 1e4) / 1e4:g}..1"
    wanted: list[tuple[str, float, float | None]] = []
    for b in budgets:
        wanted.append(("budget", check_target(b, exit_mflops), None))
    for f in fractions:
        if math.isnan(f) or f <= 0 or f > 1 + 1e-7:
            raise BudgetError(
                f"fraction {f:g} is outside the valid range {shown} (exit 1 costs {low:.8g} of "
                f"{high:.8g} MFLOPs)"
            )
        if f * high < low * (1 - 1e-7):
            raise BudgetError(
                f"fraction {f:g} ({f * high:.4g} MFLOPs) is below exit 1's cost; the valid range "
                f"is {shown} ({describe_range(exit_mflops)})"
            )
        wanted.append(("fraction", check_target(f * high, exit_mflops), min(f, 1.0)))
    if not budgets and not fractions:
        for f in DEFAULT_FRACTIONS:
            f = max(f, low / high)
            wanted.append(("fraction", min(max(f * high, low), high), f))
    unique = sorted(set(wanted), key=lambda w: (w[1], w[0]))
    digits = {
        kind: _digits([w[1] if w[2] is None else w[2] for w in unique if w[0] == kind])
        for kind in ("budget", "fraction")
    }
    targets: dict[str, Target] = {}
    for kind, mflops, fraction in unique:
        name = f"{kind}-{(mflops if fraction is None else fraction):.{digits[kind]}f}"
        # Values equal to 9 decimals are the same operating point: the first one is kept.
        targets.setdefault(name, Target(name=name, mflops=mflops, fraction=fraction))
    return list(targets.values())
