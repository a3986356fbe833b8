"""``exitwise serve BUNDLE``: the HTTP server (implemented by the ``serving`` package).

Flags override ``EXITWISE_*`` environment variables, which override the defaults. The bundle is
loaded and checked before the server listens, so a bad bundle, a calibration made for other
weights or a missing GPU is one line on stderr and exit code 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from exitwise.errors import ExitwiseError


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)


def serve(
    bundle: Path | None = typer.Argument(
        None, help="The bundle directory to serve [EXITWISE_BUNDLE]."
    ),
    host: str | None = typer.Option(None, help="Interface to bind [127.0.0.1]."),
    port: int | None = typer.Option(None, help="TCP port [8000]."),
    backend: str | None = typer.Option(None, help="torch or onnx [torch]."),
    device: str | None = typer.Option(None, help="auto, cpu or cuda [auto]."),
    require_gpu: bool | None = typer.Option(
        None, "--require-gpu/--no-require-gpu", help="Refuse to start without a CUDA GPU."
    ),
    precision: str | None = typer.Option(None, help="torch on CUDA: fp32, bf16 or fp16 [fp32]."),
    max_batch_size: int | None = typer.Option(None, help="Images per batch [32]."),
    max_wait_ms: float | None = typer.Option(None, help="Longest wait to fill a batch [2]."),
    max_stage_wait_ms: float | None = typer.Option(
        None, help="Longest a row waits in front of a stage for company [5]."
    ),
    decode_threads: int | None = typer.Option(
        None, help="Image-decoding threads; 0: the engine's worker decodes [auto]."
    ),
    max_queue_images: int | None = typer.Option(None, help="Queue bound, in images [1024]."),
    workers: int | None = typer.Option(None, help="Server processes, each with a model [1]."),
    default_budget_mflops: float | None = typer.Option(
        None, help="Budget for requests that give none [calibration's default point]."
    ),
    default_max_exit: int | None = typer.Option(None, help="Exit cap for requests that give none."),
    budget_control: str | None = typer.Option(
        None, help="on: keep each operating point's realised MFLOPs on target; off [on]."
    ),
    budget_control_window: int | None = typer.Option(
        None, help="Budget control: images a decision looks at, at most (1000 or more) [4000]."
    ),
    budget_control_tolerance: float | None = typer.Option(
        None, help="Budget control: relative deadband around the target [0.02]."
    ),
    request_timeout_s: float | None = typer.Option(None, help="Request deadline, seconds [30]."),
    drain_seconds: float | None = typer.Option(
        None, help="After SIGTERM, seconds of 503 readiness before closing [2]."
    ),
    torch_threads: int | None = typer.Option(None, help="torch intra-op threads per process."),
    log_level: str | None = typer.Option(None, help="critical, error, warning, info, debug."),
    access_log: bool | None = typer.Option(
        None, "--access-log/--no-access-log", help="Log a line per HTTP request [off]."
    ),
) -> None:
    """Serve a bundle over HTTP: REST v1, Open Inference Protocol v2, /metrics, health."""
    overrides: dict[str, Any] = {
        k: v for k, v in locals().items() if k != "bundle" and v is not None
    }
    settings = _settings(bundle, overrides)

    from serving.loading import load_model
    from serving.server import configure_logging, serve_many, serve_one

    configure_logging(settings.log_level)
    if settings.workers == 1:
        loaded = load_model(settings)  # user errors surface here, before listening
        serve_one(settings, loaded)
        return
    # Several workers: check the bundle once here (cheap), each worker then loads it.
    from exitwise.bundle import load_bundle
    from exitwise.devices import resolve_device
    from serving.budget.resolve import BudgetResolver

    checked = load_bundle(settings.bundle)
    checked.verify()
    calibration = checked.calibration() if checked.has_calibration else None
    BudgetResolver(
        checked.manifest.exit_mflops,
        calibration,
        settings.default_budget_mflops,
        settings.default_max_exit,
    )
    resolve_device(settings.device, require_gpu=settings.require_gpu)
    code = serve_many(settings)
    if code:
        raise ExitwiseError("a server worker failed; see the log above")


def _settings(bundle: Path | None, overrides: dict[str, Any]) -> Any:
    import os

    from pydantic import ValidationError

    from serving.settings import Settings

    if bundle is None and not os.environ.get("EXITWISE_BUNDLE"):
        raise ExitwiseError("give the bundle directory (BUNDLE) or set EXITWISE_BUNDLE")
    if bundle is not None:
        overrides["bundle"] = bundle
    try:
        return Settings(**overrides)
    except ValidationError as err:
        e = err.errors()[0]
        where = ".".join(str(p) for p in e["loc"]) or "settings"
        msg = str(e["msg"]).removeprefix("Value error, ")
        raise ExitwiseError(f"invalid setting {where}: {msg}") from None
