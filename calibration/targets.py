"""Which operating points to solve for: parsing and checking budgets and fractions, naming them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import BudgetError
from .solver import check_target, describe_costs, describe_range, in_range

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


def _listed(values: Sequence[float]) -> str:
    shown = [f"{v:g}" for v in values]
    return shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} and {shown[-1]}"


def suggested_fractions(exit_mflops: Sequence[float]) -> list[float]:
    """Fractions of the last exit's cost to suggest: the defaults that are valid, or exit 1's
    share (rounded up) and 1 when none is."""
    low, high = float(exit_mflops[0]), float(exit_mflops[-1])
    valid = [f for f in DEFAULT_FRACTIONS if f * high >= low]
    return valid or [math.ceil(low / high * 100) / 100, 1.0]


def range_help(exit_mflops: Sequence[float], bundle: str | None = None) -> str:
    """What a budget must be, the cost of every exit, and how to ask without knowing them."""
    suggested = ",".join(f"{f:g}" for f in suggested_fractions(exit_mflops))
    return (
        f"(a budget is an average cost per image, between exit 1's cost and exit "
        f"{len(exit_mflops)}'s; cumulative MFLOPs per exit: {describe_costs(exit_mflops)}): give "
        f"budgets in that range, or fractions of the last exit's cost (--fractions {suggested}); "
        f"`exitwise inspect {bundle or 'BUNDLE'}` shows the exit costs"
    )


def check_budgets(
    budgets: Sequence[float], exit_mflops: Sequence[float], bundle: str | None = None
) -> list[float]:
    """The budgets, each checked; every one outside the valid range is named in one error that
    says what the range is, what each exit costs and how to find budgets that fit."""
    for b in budgets:
        if not isinstance(b, (int, float)) or math.isnan(b) or b <= 0 or math.isinf(b):
            check_target(b, exit_mflops)  # raises: not a number, not positive, not finite
    outside = [b for b in budgets if not in_range(b, exit_mflops)]
    if outside:
        many = len(outside) > 1
        raise BudgetError(
            f"budget{'s' if many else ''} {_listed(outside)} MFLOPs {'are' if many else 'is'} "
            f"outside the valid range {describe_range(exit_mflops)} "
            f"{range_help(exit_mflops, bundle)}"
        )
    return [check_target(b, exit_mflops) for b in budgets]


def plan_targets(
    budgets: Sequence[float],
    fractions: Sequence[float],
    exit_mflops: Sequence[float],
    bundle: str | None = None,
) -> list[Target]:
    """Checked targets, ordered by cost; with neither budgets nor fractions, the default
    fractions 0.25 / 0.5 / 0.75 of the last exit's cost, raised to exit 1's cost if below it.
    ``bundle`` (its path as the user gave it) goes into the messages of refused budgets."""
    low, high = float(exit_mflops[0]), float(exit_mflops[-1])
    shown = f"{math.ceil(low / high * 1e4) / 1e4:g}..1"
    wanted: list[tuple[str, float, float | None]] = []
    for b in check_budgets(budgets, exit_mflops, bundle):
        wanted.append(("budget", b, None))
    for f in fractions:
        if math.isnan(f) or f <= 0 or f > 1 + 1e-7:
            raise BudgetError(
                f"fraction {f:g} is outside the valid range {shown} (exit 1 costs {low:.8g} of "
                f"{high:.8g} MFLOPs)"
            )
        if f * high < low * (1 - 1e-7):
            raise BudgetError(
                f"fraction {f:g} ({f * high:.4g} MFLOPs) is below exit 1's cost; the valid range "
                f"is {shown} ({describe_range(exit_mflops)}; cumulative MFLOPs per exit: "
                f"{describe_costs(exit_mflops)})"
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
