"""The summary ``exitwise calibrate`` prints: operating points, anytime accuracy, files."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from .report import fmt, fmt_fractions
from .run import CalibrateResult


def print_summary(result: CalibrateResult, console: Console) -> None:
    """The operating points and anytime tables, then the files written."""
    cal = result.calibration
    table = Table(
        title=f"{result.bundle.name}: operating points (* default)",
        caption="MFLOPs: mean multiply-adds per image; exits %: share leaving at exits 1..K",
    )
    table.add_column("name", no_wrap=True)
    for col in ("target", "held-out MFLOPs", "test MFLOPs", "held-out %", "test %"):
        table.add_column(col, justify="right")
    table.add_column("exits % (held-out)", no_wrap=True)
    for p in cal.operating_points:
        star = " *" if p.name == cal.default_operating_point else ""
        table.add_row(
            p.name + star,
            fmt(p.target_mflops),
            fmt(p.heldout.mflops, 3),
            fmt(p.test.mflops if p.test else None, 3),
            fmt(p.heldout.accuracy),
            fmt(p.test.accuracy if p.test else None),
            fmt_fractions(p.heldout.exit_fractions),
        )
    console.print(table)
    anytime = Table(title="anytime (every image runs to exit k)")
    for col in ("exit", "MFLOPs", "held-out top-1 %", "test top-1 %", "test top-5 %"):
        anytime.add_column(col, justify="right")
    for a in cal.anytime:
        anytime.add_row(
            str(a.exit), fmt(a.mflops, 3), fmt(a.heldout_top1), fmt(a.test_top1), fmt(a.test_top5)
        )
    console.print(anytime)
    for other in result.compared:
        console.print(f"compared with {other.label} ({other.split} split): see the report")
    for path in result.files:
        console.print(f"wrote {path}", highlight=False, soft_wrap=True)
