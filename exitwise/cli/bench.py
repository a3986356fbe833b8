"""``exitwise bench ...``: benchmark sub-commands (each implemented by its package)."""

from __future__ import annotations

import typer

from . import (
    bench_backends,
    bench_calibration,
    bench_drift,
    bench_engine,
    bench_http,
    bench_peer,
    bench_train,
)

app = typer.Typer(
    help="Benchmarks: training step, engine, HTTP, a peer server, drift, backends, calibration.",
    no_args_is_help=True,
)

bench_backends.register(app)
bench_calibration.register(app)
bench_drift.register(app)
bench_engine.register(app)
bench_http.register(app)
bench_peer.register(app)
bench_train.register(app)
