"""``exitwise bench calibration``: time the budget solver and the evaluation on synthetic scores."""

from __future__ import annotations

import json

import typer


def register(app: typer.Typer) -> None:
    app.command("calibration")(bench_calibration)


def bench_calibration(
    images: int = typer.Option(50_000, "--images", help="Held-out images."),
    exits: int = typer.Option(5, "--exits", help="Exits of the synthetic network."),
    budgets: int = typer.Option(40, "--budgets", help="Budgets to solve, spread over the range."),
    test_images: int = typer.Option(10_000, "--test-images", help="Test images."),
    repeat: int = typer.Option(5, "--repeat", help="Repetitions (the median is reported)."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Solve budgets on synthetic held-out confidences once the scores exist."""
    from rich.console import Console
    from rich.table import Table

    from benchmarks.calibration_time import run_bench
    from exitwise.errors import ExitwiseError

    if images < 2 or exits < 2 or budgets < 1 or test_images < 1 or repeat < 1:
        raise ExitwiseError("--images and --exits must be >= 2, the other counts >= 1")
    result = run_bench(images, exits, budgets, test_images, repeat)
    if as_json:
        typer.echo(json.dumps(result.as_dict(), indent=2))
        return
    table = Table(title="calibration once the scores exist (median of repeats)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("held-out images x exits", f"{result.images} x {result.exits}")
    table.add_row(f"solve {result.budgets} budgets (fresh solver)", f"{result.solve_s:.3f} s")
    table.add_row("per budget", f"{result.solve_per_budget_ms:.2f} ms")
    table.add_row(
        f"full: budgets + 39-point sweep + anytime, held-out and {result.test_images} test",
        f"{result.full_s:.3f} s",
    )
    table.add_row("largest (target - achieved) / target", f"{result.max_relative_gap:.2e}")
    table.add_row("budgets exceeded", str(result.exceeded))
    Console().print(table)
    typer.echo(f"machine: {result.machine}; Python {result.python}, numpy {result.numpy}")
