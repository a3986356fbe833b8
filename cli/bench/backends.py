"""``exitwise bench backends BUNDLE``: PyTorch eager vs onnxruntime, early exit, side by side."""

from __future__ import annotations

import shlex
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command("backends")(backends)


def backends(
    bundle: Path = typer.Argument(..., help="An exported bundle (exitwise export BUNDLE)."),
    batch_sizes: str = typer.Option("1,32", "--batch-sizes", help="Comma-separated."),
    images: int = typer.Option(512, "--images", min=1, help="Images per measurement."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    threads: int | None = typer.Option(
        None, "--threads", min=1, help="Intra-op threads for both backends (default: torch's)."
    ),
    repeats: int = typer.Option(3, "--repeats", min=1, help="Best of this many runs."),
    data_root: Path | None = typer.Option(
        None, "--data-root", help="Where the bundle's data set lives (held-out images)."
    ),
    out: Path | None = typer.Option(None, "--out", help="Write the markdown section here."),
    append: bool = typer.Option(False, "--append", help="Append to --out instead of replacing."),
) -> None:
    """Per-image latency and throughput of early-exit inference, torch eager vs onnxruntime,
    at each calibrated operating point and at the last exit only."""
    from benchmarks.backends import bench_backends, to_markdown
    from exitwise.bundle import load_bundle
    from exitwise.fileio import atomic_write_text

    from .options import parse_ints

    sizes = parse_ints(batch_sizes, "--batch-sizes")
    report = bench_backends(
        load_bundle(bundle),
        batch_sizes=sizes,
        images=images,
        device=device,
        threads=threads,
        repeats=repeats,
        data_root=data_root,
        progress=lambda line: typer.echo(line, err=True),
    )
    args = [str(bundle), "--batch-sizes", batch_sizes, "--images", str(images)]
    args += ["--device", device, "--repeats", str(repeats)]
    args += ["--threads", str(threads)] if threads else []
    args += ["--data-root", str(data_root)] if data_root else []
    command = "exitwise bench backends " + " ".join(shlex.quote(a) for a in args)
    text = to_markdown(report, command)
    typer.echo(text, nl=False)
    if out is not None:
        previous = out.read_text() + "\n" if append and out.exists() else ""
        atomic_write_text(out, previous + text)
