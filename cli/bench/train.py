"""``exitwise bench train``: images/s of uniform and L2W training iterations, side by side."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import typer

from exitwise.errors import ExitwiseError


def register(app: typer.Typer) -> None:
    app.command("train")(bench_train)


def bench_train(
    config: Path = typer.Option(
        Path("configs/fmnist.yaml"), "--config", "-c", help="Recipe: preset, batch, precision."
    ),
    overrides: list[str] = typer.Option(
        [], "--set", metavar="KEY=VALUE", help="Override a recipe key (repeatable)."
    ),
    steps: int = typer.Option(10, "--steps", min=1, help="Iterations per timed round."),
    warmup: int = typer.Option(2, "--warmup", min=0, help="Untimed iterations per mode first."),
    rounds: int = typer.Option(3, "--rounds", min=1, help="Interleaved rounds (median taken)."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Overrides batch_size."),
    device: str | None = typer.Option(None, "--device", help="auto, cpu or cuda."),
    double_backward: bool = typer.Option(
        False, "--double-backward", help="Also time the seed-style double-backward meta step."
    ),
    markdown_path: Path | None = typer.Option(
        None, "--markdown", help="Write (or update) this markdown file's section for the run."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Time uniform and L2W iterations (meta interval 1 and 100) on one preset and device."""
    from benchmarks.train_step import markdown, run_bench, section_key, write_markdown
    from training.recipe_io import load_recipe

    sets = list(overrides)
    if batch_size is not None:
        sets.append(f"batch_size={batch_size}")
    if device is not None:
        if device not in ("auto", "cpu", "cuda"):
            raise ExitwiseError(f"--device {device}: expected auto, cpu or cuda")
        sets.append(f"device={device}")
    recipe = load_recipe(config, sets)
    result = run_bench(
        recipe, steps=steps, warmup=warmup, rounds=rounds, double_backward=double_backward
    )
    command = "exitwise " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    text = markdown(result, command)
    if markdown_path is not None:
        write_markdown(markdown_path, text, section_key(result))
    typer.echo(json.dumps(result.to_dict(), indent=2) if as_json else text)
