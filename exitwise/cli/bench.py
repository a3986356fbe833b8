"""``exitwise bench ...``: benchmark sub-commands (each implemented by its package)."""

from __future__ import annotations

import typer

from . import bench_train

app = typer.Typer(
    help="Benchmarks: training step, engine, HTTP, backends, calibration.", no_args_is_help=True
)
bench_train.register(app)
