"""``exitwise bench engine BUNDLE``: the serving engine's speed at each operating point vs the
last exit, at batch 1 and batched, with MFLOPs- and oracle efficiency (no HTTP)."""

from __future__ import annotations

from pathlib import Path

import typer

from exitwise.errors import ExitwiseError


def register(app: typer.Typer) -> None:
    app.command("engine")(bench_engine)


def bench_engine(
    bundle: Path = typer.Argument(..., help="The bundle to benchmark."),
    data_root: Path | None = typer.Option(None, help="Where the bundle's data set lives."),
    images: int = typer.Option(2000, help="Test images for the batched runs."),
    batch1_images: int = typer.Option(300, help="Test images for the batch-1 runs."),
    batch_sizes: str = typer.Option("1,32", help="Comma-separated batch sizes."),
    repeats: int = typer.Option(3, min=1, help="Runs per workload (interleaved; mean reported)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    backend: str = typer.Option("torch", help="torch or onnx."),
    threads: int | None = typer.Option(None, help="torch intra-op threads (default: as serve)."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the results as JSON."),
    markdown_out: Path | None = typer.Option(None, "--markdown", help="Write a markdown table."),
) -> None:
    """Images/s and latency per operating point vs the last exit (engine only, no HTTP)."""
    import numpy as np
    import torch

    from benchmarks.engine import alone_line, markdown, run_engine_bench
    from benchmarks.machine import describe_machine
    from exitwise.datasets import EvalImages, open_dataset
    from exitwise.fileio import atomic_write_json, atomic_write_text
    from exitwise.preprocess import normalize
    from serving.loading import load_model
    from serving.settings import Settings
    from serving.threads import default_torch_threads

    from .options import parse_ints

    sizes = parse_ints(batch_sizes, "--batch-sizes")
    # The server's default when not given, so the engine is measured as it is served.
    torch.set_num_threads(threads or default_torch_threads(workers=1))
    try:
        settings = Settings(bundle=bundle, device=device, backend=backend)  # type: ignore[arg-type]
    except ValueError as err:
        raise ExitwiseError(f"invalid option: {str(err).splitlines()[-1].strip()}") from None
    loaded = load_model(settings)
    m = loaded.bundle.manifest
    if m.dataset is None:
        raise ExitwiseError(f"{bundle}: the manifest names no data set to draw test images from")
    test = open_dataset(m.dataset, "test", data_root, source=m.folder)
    view = EvalImages(test, m.preprocessing)
    n = min(max(images, max(sizes)), len(view))
    pixels = torch.from_numpy(np.stack([view[i][0].numpy() for i in range(n)]))
    x = normalize(pixels, m.preprocessing)
    result = run_engine_bench(loaded.runner, loaded.resolver, x, sizes, repeats, batch1_images)
    result["machine"] = describe_machine(loaded.runner.device) | {
        "provider": loaded.runner.provider
    }
    result["bundle"] = {"name": m.name, "preset": m.preset, "exit_mflops": m.exit_mflops}
    table = "\n\n".join(
        filter(None, [markdown(result["rows"]), alone_line(result["engine_alone"])])
    )
    typer.echo(table)
    if json_out is not None:
        atomic_write_json(json_out, result)
    if markdown_out is not None:
        atomic_write_text(markdown_out, table + "\n")
