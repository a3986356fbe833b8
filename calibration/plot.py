"""``calibration/curve.png``: top-1 accuracy against mean MFLOPs per image (matplotlib)."""

from __future__ import annotations

import io
from collections.abc import Sequence

from .curves import Curve

_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red")


def render_curve(curves: Sequence[Curve], title: str) -> bytes:
    """PNG bytes: each curve's dynamic line, its anytime points and its operating points."""
    # A bare Figure renders with Agg without touching pyplot's global backend state.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 5.0), dpi=120)
    ax = fig.add_subplot()
    for i, c in enumerate(curves):
        colour = _COLOURS[i % len(_COLOURS)]
        main = i == 0
        xs, ys = zip(*c.dynamic, strict=True) if c.dynamic else ((), ())
        ax.plot(
            xs,
            ys,
            "-" if main else "--",
            color=colour,
            linewidth=1.6,
            marker=".",
            markersize=4,
            label=f"{c.label}: dynamic (q sweep)",
        )
        if c.anytime:
            ax.plot(
                [a[1] for a in c.anytime],
                [a[2] for a in c.anytime],
                "s" if main else "D",
                color=colour,
                markerfacecolor=colour if main else "none",
                markersize=6,
                linestyle="none",
                label=f"{c.label}: anytime (exit k)",
            )
            if main:
                for ex, m, acc in c.anytime:
                    ax.annotate(
                        f"exit {ex}",
                        (m, acc),
                        textcoords="offset points",
                        xytext=(4, -12),
                        fontsize=7,
                        color=colour,
                    )
        if main and c.points:
            ax.plot(
                [p[1] for p in c.points],
                [p[2] for p in c.points],
                "*",
                color="black",
                markersize=11,
                linestyle="none",
                label="operating points",
            )
            for name, m, acc in c.points:
                ax.annotate(name, (m, acc), textcoords="offset points", xytext=(5, 5), fontsize=7)
    split = curves[0].split if curves else "test"
    ax.set_xlabel(f"mean MFLOPs per image (multiply-adds, {split} split)")
    ax.set_ylabel(f"top-1 accuracy, % ({split} split)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8, framealpha=0.85)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
