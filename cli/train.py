"""``exitwise train``: train a recipe into a bundle (implemented by the ``training`` package).

Multi-GPU / multi-node: ``torchrun --nproc_per_node N -m cli train ...``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from exitwise.errors import ExitwiseError


def register(app: typer.Typer) -> None:
    app.command("train")(train)


def train(
    config: Path | None = typer.Option(
        None,
        "--config",
        "-c",
        help="YAML recipe (see configs/). With --resume it defaults to OUT/recipe.yaml.",
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Output directory: the bundle, recipe.yaml, logs, checkpoints."
    ),
    overrides: list[str] = typer.Option(
        [],
        "--set",
        metavar="KEY=VALUE",
        help="Override a recipe key, e.g. --set epochs=1 --set optim.lr=0.05 (repeatable; "
        "values are read as YAML).",
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the run in OUT from its last checkpoint."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace a previous run in OUT (its files are deleted first)."
    ),
    data_root: Path | None = typer.Option(
        None, "--data-root", help="Directory of the data set (overrides data.root)."
    ),
    device: str | None = typer.Option(
        None, "--device", help="auto, cpu or cuda (overrides the recipe's device)."
    ),
) -> None:
    """Train an early-exit network (L2W-DEN or uniform weighting) and write a bundle."""
    from pydantic import ValidationError

    from training.config import RecipeError
    from training.recipe_io import load_recipe
    from training.trainer import train as run_training

    if config is None:
        if not resume:
            raise ExitwiseError(
                "--config FILE is required (with --resume it defaults to OUT/recipe.yaml)"
            )
        config = out / "recipe.yaml"
    recipe = load_recipe(config, overrides)
    try:
        if data_root is not None:
            recipe.data.root = str(data_root)
        if device is not None:
            recipe.device = device  # type: ignore[assignment]
    except ValidationError as err:
        raise RecipeError(f"--device {device}: expected auto, cpu or cuda") from err
    result = run_training(
        recipe, out, resume=resume, overwrite=overwrite, echo=lambda t: typer.echo(t, err=True)
    )
    if result.bundle is None or result.already_finished:
        return
    _print_result(result.bundle.manifest.exit_mflops, result.heldout_accuracy,
                  result.test_accuracy, result.summary, out)  # fmt: skip


def _print_result(
    mflops: list[float],
    heldout: list[float],
    test: list[float] | None,
    summary: dict[str, object],
    out: Path,
) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{out}: {summary['weighting']}, {summary['epochs']} epochs")
    table.add_column("exit", justify="right")
    table.add_column("MFLOPs", justify="right")
    table.add_column("held-out top-1 %", justify="right")
    if test is not None:
        table.add_column("test top-1 %", justify="right")
    for k, (cost, acc) in enumerate(zip(mflops, heldout, strict=True)):
        row = [str(k + 1), f"{cost:.2f}", f"{acc:.2f}"]
        if test is not None:
            row.append(f"{test[k]:.2f}")
        table.add_row(*row)
    console = Console()
    console.print(table)
    console.print(
        f"trained {summary['train_time_s']} s ({summary['time_per_epoch_s']} s/epoch, "
        f"{summary['images_per_s']} images/s); bundle written to {out}"
    )
