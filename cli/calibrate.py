"""``exitwise calibrate BUNDLE``: budgets to per-exit thresholds, with reports (``calibration``)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command("calibrate")(calibrate)


def calibrate(
    bundle: Path = typer.Argument(..., help="The bundle directory (written by `exitwise train`)."),
    data_root: Path | None = typer.Option(
        None, "--data-root", help="Where the bundle's data set lives (default: its usual places)."
    ),
    budgets: str | None = typer.Option(
        None, "--budgets", help="Average MFLOPs per image to solve for, comma-separated: 8,12,20."
    ),
    fractions: str | None = typer.Option(
        None,
        "--fractions",
        help="Budgets as fractions of the last exit's cost, comma-separated: 0.25,0.5. "
        "Without --budgets and --fractions: 0.25,0.5,0.75 (raised to exit 1's cost if below).",
    ),
    compare: Path | None = typer.Option(
        None, "--compare", help="Another bundle of the same data set to overlay on the curve."
    ),
    default: str | None = typer.Option(
        None,
        "--default",
        help="Name of the default operating point (e.g. budget-8.00); default: the cheapest "
        "point within 0.5 accuracy points of the best.",
    ),
    device: str = typer.Option("auto", "--device", help="auto (CUDA if available), cpu or cuda."),
    batch_size: int = typer.Option(256, "--batch-size", help="Images per forward pass."),
    workers: int = typer.Option(0, "--workers", help="Data-loading worker processes."),
    keep_logits: bool = typer.Option(
        False, "--keep-logits", help="Also keep every exit's full logits in the score cache."
    ),
    no_cache: bool = typer.Option(
        False, "--no-cache", help="Recompute the scores even when a valid cache exists."
    ),
) -> None:
    """Turn compute budgets into per-exit thresholds; write calibration.json, report, curve."""
    from rich.console import Console

    from calibration.run import CalibrateOptions, run_calibration
    from calibration.summary import print_summary
    from calibration.targets import parse_numbers

    options = CalibrateOptions(
        data_root=data_root,
        budgets=parse_numbers(budgets, "budgets"),
        fractions=parse_numbers(fractions, "fractions"),
        compare=compare,
        device=device,
        batch_size=batch_size,
        workers=workers,
        keep_logits=keep_logits,
        use_cache=not no_cache,
        default=default,
        command=_command(bundle, budgets, fractions, compare, default),
    )
    err = Console(stderr=True)
    result = run_calibration(
        bundle, options, log=lambda msg: err.print(msg, highlight=False, soft_wrap=True)
    )
    # Piped output keeps the full table instead of wrapping it at 80 columns.
    print_summary(result, Console() if sys.stdout.isatty() else Console(width=120))
    note = small_heldout_note(
        len(result.heldout.labels),
        {p.name: p.heldout.exit_fractions for p in result.calibration.operating_points},
    )
    if note:
        err.print(note, highlight=False, soft_wrap=True)


def small_heldout_note(images: int, fractions: dict[str, list[float]]) -> str | None:
    """A warning when an early exit's threshold of some operating point rests on few held-out
    images; it says how many held-out images would give each exit enough."""
    from exitwise.datasets import MIN_HELDOUT_PER_EXIT

    thin: list[str] = []
    needed = 0
    for name, shares in fractions.items():
        counts = [round(f * images) for f in shares[:-1]]  # the last exit takes the rest
        few = [(k + 1, c) for k, c in enumerate(counts) if 0 < c < MIN_HELDOUT_PER_EXIT]
        if few:
            thin.append(f"{name}: " + ", ".join(f"exit {k} on {c}" for k, c in few))
            needed = max(needed, -(-MIN_HELDOUT_PER_EXIT * images // min(c for _, c in few)))
    if not thin:
        return None
    return (
        f"warning: with {images} held-out images some thresholds rest on few images "
        f"({'; '.join(thin)}); {MIN_HELDOUT_PER_EXIT} per exit needs about {needed} held-out "
        "images (train with a larger held-out split: data.heldout_fraction, data.heldout_size)"
    )


def _command(
    bundle: Path,
    budgets: str | None,
    fractions: str | None,
    compare: Path | None,
    default: str | None,
) -> str:
    parts = ["exitwise", "calibrate", str(bundle)]
    for flag, value in (
        ("--budgets", budgets),
        ("--fractions", fractions),
        ("--compare", compare),
        ("--default", default),
    ):
        if value is not None:
            parts += [flag, str(value)]
    return shlex.join(parts)
