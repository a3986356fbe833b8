"""``calibration/report.md``: the operating points, anytime and dynamic results as tables."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from exitwise.bundle import Calibration

from .build import DEFAULT_TOLERANCE
from .curves import Curve


@dataclass(frozen=True)
class ReportContext:
    """What the report says about where the numbers come from."""

    bundle_name: str
    dataset: str
    heldout_images: int
    test_images: int | None
    command: str | None = None
    default_chosen: bool = True  # False when the user named the default


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    # The first column (a name or an index) left, figures right.
    align = [":---", *("---:" for _ in header[1:])]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def fmt_fractions(fractions: Sequence[float]) -> str:
    return " / ".join(f"{100 * f:.1f}" for f in fractions)


def fmt_thresholds(thresholds: Sequence[float | None]) -> str:
    parts = ["never" if t is None else f"{t:.6g}" for t in thresholds[:-1]]
    return " / ".join([*parts, "rest"])


def fmt_q(q: float) -> str:
    return f"{q:.4g}" if 1e-3 <= q <= 1e3 else f"{q:.1e}"


def operating_point_rows(cal: Calibration) -> list[list[str]]:
    rows = []
    for p in cal.operating_points:
        name = f"**{p.name}**" if p.name == cal.default_operating_point else p.name
        rows.append(
            [
                name,
                fmt(p.target_mflops),
                fmt(p.heldout.mflops, 3),
                fmt(p.test.mflops if p.test else None, 3),
                fmt(p.heldout.accuracy),
                fmt(p.test.accuracy if p.test else None),
                fmt_q(p.q),
                fmt_fractions(p.heldout.exit_fractions),
                fmt_thresholds(p.thresholds),
            ]
        )
    return rows


def render_report(
    cal: Calibration, ctx: ReportContext, own: Curve, others: Sequence[Curve] = ()
) -> str:
    k = len(cal.exit_mflops)
    default_why = (
        f"the cheapest point whose held-out accuracy is within {DEFAULT_TOLERANCE} points of "
        "the best one"
        if ctx.default_chosen
        else "chosen with --default"
    )
    out = [
        f"# Calibration of `{ctx.bundle_name}`",
        "",
        f"- data set: {ctx.dataset}; held-out split: {ctx.heldout_images} images (sha256 "
        f"`{cal.heldout_sha256[:12]}…`); test split: "
        + ("not used" if ctx.test_images is None else f"{ctx.test_images} images"),
        f"- weights sha256: `{cal.weights_sha256}`",
        "- exits 1..{}: cumulative MFLOPs (multiply-adds) {}".format(
            k, ", ".join(f"{c:.3f}" for c in cal.exit_mflops)
        ),
        f"- created {cal.created}" + (f" by `{ctx.command}`" if ctx.command else ""),
        f"- default operating point: **{cal.default_operating_point}** ({default_why})",
        "",
        "## Operating points",
        "",
        "Thresholds are solved on the held-out split so that its mean cost does not exceed the "
        "target; the test columns show what the same thresholds give on unseen images. Exit "
        "fractions and thresholds are per exit 1..K (`never`: nobody leaves there; `rest`: the "
        "last exit takes every image still running).",
        "",
        _table(
            [
                "name",
                "target MFLOPs",
                "achieved MFLOPs (held-out)",
                "test MFLOPs",
                "held-out top-1 %",
                "test top-1 %",
                "q",
                "exit fractions % (held-out)",
                "thresholds",
            ],
            operating_point_rows(cal),
        ),
        "",
        "## Anytime (every image runs to exit k)",
        "",
        _table(
            [
                "exit",
                "MFLOPs",
                "held-out top-1 %",
                "held-out top-5 %",
                "test top-1 %",
                "test top-5 %",
            ],
            [
                [
                    str(a.exit),
                    fmt(a.mflops, 3),
                    fmt(a.heldout_top1),
                    fmt(a.heldout_top5),
                    fmt(a.test_top1),
                    fmt(a.test_top5),
                ]
                for a in cal.anytime
            ],
        ),
        "",
        "## Dynamic (the seed's sweep, q = 0.05 .. 1.95)",
        "",
        "For each q the target exit distribution is p_k ∝ q^k; thresholds come from the "
        "held-out split and are applied to both splits.",
        "",
        _table(
            [
                "q",
                "held-out MFLOPs",
                "held-out top-1 %",
                "test MFLOPs",
                "test top-1 %",
                "exit fractions % (held-out)",
            ],
            [
                [
                    f"{s.q:.2f}",
                    fmt(s.heldout_mflops, 3),
                    fmt(s.heldout_accuracy),
                    fmt(s.test_mflops, 3),
                    fmt(s.test_accuracy),
                    fmt_fractions(s.exit_fractions),
                ]
                for s in cal.sweep
            ],
        ),
    ]
    for other in others:
        out += _comparison(own, other)
    out += ["", "![accuracy against MFLOPs](curve.png)", ""]
    return "\n".join(out)


def _comparison(own: Curve, other: Curve) -> list[str]:
    rows = []
    for name, mflops, acc in own.points:
        theirs = other.accuracy_at(mflops)
        delta = None if theirs is None else acc - theirs
        rows.append([name, fmt(mflops, 3), fmt(acc), fmt(theirs), _signed(delta)])
    anytime = []
    for i in range(max(len(own.anytime), len(other.anytime))):
        mine = own.anytime[i] if i < len(own.anytime) else None
        theirs_exit = other.anytime[i] if i < len(other.anytime) else None
        anytime.append(
            [
                str(i + 1),
                fmt(mine[1] if mine else None, 3),
                fmt(mine[2] if mine else None),
                fmt(theirs_exit[1] if theirs_exit else None, 3),
                fmt(theirs_exit[2] if theirs_exit else None),
            ]
        )
    return [
        "",
        f"## Comparison with `{other.label}` ({other.split} split)",
        "",
        f"At each operating point's cost, `{other.label}`'s accuracy read off its dynamic curve "
        "(linear interpolation between its sweep and operating points; – outside its range).",
        "",
        _table(
            [
                "operating point",
                "MFLOPs",
                f"{own.label} top-1 %",
                f"{other.label} top-1 %",
                "difference",
            ],
            rows,
        ),
        "",
        _table(
            [
                "exit",
                f"{own.label} MFLOPs",
                f"{own.label} top-1 %",
                f"{other.label} MFLOPs",
                f"{other.label} top-1 %",
            ],
            anytime,
        ),
    ]


def _signed(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "–"
    return f"{value:+.2f}"
