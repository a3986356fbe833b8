"""``exitwise bench peer BUNDLE``: exitwise against LitServe: same network, cores and client."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import typer

from exitwise.errors import ExitwiseError


def register(app: typer.Typer) -> None:
    app.command("peer")(bench_peer)


def bench_peer(
    bundle: Path = typer.Argument(..., help="A calibrated bundle."),
    connections: str = typer.Option("1,16", help="wrk connections; a comma list runs each."),
    duration: float = typer.Option(10.0, min=1.0, help="Seconds per workload and round."),
    rounds: int = typer.Option(2, min=1, help="Rounds, alternating the servers."),
    budgets: str | None = typer.Option(
        None, help="Comma list of MFLOPs budgets for exitwise [every operating point]."
    ),
    num_images: int = typer.Option(512, min=1, help="Test images to rotate over."),
    data_root: Path | None = typer.Option(None, help="Where the bundle's data set lives."),
    port: int = typer.Option(8190, help="Port each server listens on, in turn."),
    server_cpus: str | None = typer.Option("1", help="CPUs for the servers (taskset); '' for all."),
    client_cpus: str | None = typer.Option("0", help="CPUs for wrk (taskset); '' for all."),
    torch_threads: int = typer.Option(1, min=1, help="torch threads in both servers."),
    litserve_batch: int = typer.Option(32, min=1, help="LitServe's max_batch_size."),
    litserve_timeout_ms: float = typer.Option(2.0, min=0, help="LitServe's batch_timeout."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the results as JSON."),
    markdown_out: Path | None = typer.Option(None, "--markdown", help="Write a markdown table."),
) -> None:
    """Requests/s and p50/p99 of exitwise (last exit and each budget) and of LitServe serving the
    same bundle's full network with its own batching: one server at a time, each pinned to the
    server CPUs and stopped with its whole process group, wrk pinned to the client CPUs."""
    import importlib.util

    from benchmarks.images import load_images
    from benchmarks.machine import describe_machine
    from benchmarks.peer import compare, markdown
    from benchmarks.wrk import find_wrk
    from exitwise.bundle import load_bundle
    from exitwise.fileio import atomic_write_json, atomic_write_text

    from .options import parse_ints

    find_wrk()
    if importlib.util.find_spec("litserve") is None:
        raise ExitwiseError("the peer needs LitServe: pip install 'exitwise[peer]'")
    levels = parse_ints(connections, "--connections")
    b = load_bundle(bundle)
    if not b.has_calibration and budgets is None:
        raise ExitwiseError(
            f"{bundle} is not calibrated: run `exitwise calibrate` or pass --budgets"
        )
    chosen = (
        [float(x) for x in budgets.split(",") if x.strip()]
        if budgets
        else [p.expected_mflops for p in b.calibration().operating_points]
    )
    if b.manifest.dataset is None:
        raise ExitwiseError(f"{bundle}: the manifest names no data set to draw test images from")
    images = load_images(num_images, None, b.manifest.dataset, data_root, b.manifest.folder)
    result = compare(
        bundle,
        images,
        exit_mflops=b.manifest.exit_mflops,
        budgets=sorted(chosen, reverse=True),
        connections=levels,
        rounds=rounds,
        duration_s=duration,
        port=port,
        server_cpus=server_cpus or None,
        client_cpus=client_cpus or None,
        torch_threads=torch_threads,
        litserve_batch=litserve_batch,
        litserve_timeout_ms=litserve_timeout_ms,
        say=lambda line: typer.echo(line, err=True),
    )
    import litserve

    result["command"] = "exitwise " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    result["machine"] = describe_machine() | {
        "litserve": litserve.__version__,
        "server_cpus": server_cpus,
        "client_cpus": client_cpus,
    }
    result["bundle"] = {
        "name": b.name,
        "preset": b.manifest.preset,
        "exits": b.manifest.exit_mflops,
    }
    table = markdown(result["rows"])
    typer.echo(table)
    if json_out is not None:
        atomic_write_json(json_out, result)
    if markdown_out is not None:
        atomic_write_text(markdown_out, table + "\n")
