"""``exitwise bench ...``: the benchmark sub-commands (implemented in ``benchmarks``)."""

from __future__ import annotations

import typer

from . import backends, calibration, drift, engine, http, peer, train

app = typer.Typer(
    help="Benchmarks: training step, engine, HTTP, a peer server, drift, backends, calibration.",
    no_args_is_help=True,
)

backends.register(app)
calibration.register(app)
drift.register(app)
engine.register(app)
http.register(app)
peer.register(app)
train.register(app)
