"""``exitwise bench http --url URL``: load a running server at each budget and at the last exit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from ..errors import ExitwiseError


def register(app: typer.Typer) -> None:
    app.command("http")(bench_http)


def bench_http(
    url: str = typer.Option(..., help="Server base URL, e.g. http://127.0.0.1:8000."),
    concurrency: str = typer.Option("8", help="Concurrent clients; a comma list runs each."),
    requests: int = typer.Option(400, min=1, help="Requests per workload and round (upper bound)."),
    duration: float = typer.Option(60.0, min=0.1, help="Seconds per workload and round (bound)."),
    rounds: int = typer.Option(
        1, min=1, help="Run the workloads this many times, interleaved, and pool the results."
    ),
    budgets: str | None = typer.Option(
        None, help="Comma list of MFLOPs budgets or exitM [every operating point]."
    ),
    images_per_request: int = typer.Option(1, min=1, help="Images in each request."),
    images_dir: Path | None = typer.Option(None, "--images", help="Send these image files."),
    dataset: str | None = typer.Option(None, help="Send test images of this data set."),
    data_root: Path | None = typer.Option(None, help="Where that data set lives."),
    num_images: int = typer.Option(500, min=1, help="Distinct images to cycle through."),
    api_key: str | None = typer.Option(None, envvar="EXITWISE_API_KEY", help="API key to send."),
    oracle: Path | None = typer.Option(
        None, help="`bench engine --json` output: adds oracle efficiency."
    ),
    json_out: Path | None = typer.Option(None, "--json", help="Write the results as JSON."),
    markdown_out: Path | None = typer.Option(None, "--markdown", help="Write a markdown table."),
) -> None:
    """Throughput, p50/p95/p99 and served exits per budget vs the last exit, one invocation."""
    import asyncio

    from exitwise.benchkit import parse_ints
    from exitwise.fileio import atomic_write_json, atomic_write_text
    from serving.bench.http import (
        add_ratios,
        load_images,
        markdown,
        model_info,
        run_load,
        workloads_for,
    )

    levels = parse_ints(concurrency, "--concurrency")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    info = model_info(url, headers)
    loads = workloads_for(info, budgets.split(",") if budgets else None)
    images = load_images(num_images, images_dir, dataset or info.get("dataset"), data_root)
    oracle_times = _oracle(oracle) if oracle else None
    all_rows: list[dict[str, Any]] = []
    for c in levels:
        pooled: dict[str, Any] = {}
        for _ in range(rounds):  # interleaved, so machine-load drift hits every workload alike
            for w in loads:
                result = asyncio.run(
                    run_load(
                        url.rstrip("/"),
                        images,
                        w,
                        concurrency=c,
                        requests=requests,
                        duration_s=duration,
                        images_per_request=images_per_request,
                        headers=headers,
                    )
                )
                if w.label in pooled:
                    pooled[w.label].merge(result)
                else:
                    pooled[w.label] = result
        rows = []
        for w in loads:
            summary = pooled[w.label].summary()
            if summary["ok"] == 0:
                raise ExitwiseError(
                    f"workload {w.label!r}: no successful request ({summary['first_error']})"
                )
            rows.append(summary)
        key = _oracle_key(oracle_times, 1 if c == 1 else info["limits"]["max_batch_size"])
        add_ratios(rows, oracle_times[key] if oracle_times and key else None)
        all_rows.extend(rows)
    table = markdown(all_rows)
    typer.echo(table)
    out = {"url": url, "model": info["name"], "device": info["device"], "rows": all_rows}
    if json_out is not None:
        atomic_write_json(json_out, out)
    if markdown_out is not None:
        atomic_write_text(markdown_out, table + "\n")


def _oracle(path: Path) -> dict[str, list[float]]:
    try:
        data = json.loads(path.read_text())
        return {str(k): [float(x) for x in v] for k, v in data["oracle_seconds_per_image"].items()}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ExitwiseError(f"{path}: not a `bench engine --json` result ({err})") from None


def _oracle_key(times: dict[str, list[float]] | None, batch: int) -> str | None:
    """The measured batch size closest to ``batch`` from below (else the smallest)."""
    if not times:
        return None
    sizes = sorted(int(k) for k in times)
    below = [s for s in sizes if s <= batch]
    return str(below[-1] if below else sizes[0])
