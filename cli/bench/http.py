"""``exitwise bench http --url URL``: load a running server at each budget and at the last exit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from exitwise.errors import ExitwiseError


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
    client: str = typer.Option(
        "python", help="python (httpx, any request) or wrk (C, one image per request)."
    ),
    client_cpus: str | None = typer.Option(
        None, help="wrk: pin the client to these CPUs (taskset), e.g. 0; pin the server apart."
    ),
    images_dir: Path | None = typer.Option(None, "--images", help="Send these image files."),
    dataset: str | None = typer.Option(None, help="Send test images of this data set."),
    data_root: Path | None = typer.Option(None, help="Where that data set lives."),
    num_images: int = typer.Option(500, min=1, help="Distinct images to cycle through."),
    api_key: str | None = typer.Option(None, envvar="EXITWISE_API_KEY", help="API key to send."),
    oracle: Path | None = typer.Option(
        None, help="`bench engine --json` output: adds oracle efficiency."
    ),
    overload: str | None = typer.Option(
        None,
        help="Overload scenario: open-loop arrivals at these multiples of the last exit's "
        "capacity (e.g. 1,2,4), degradation off and on (wrk).",
    ),
    overload_deadline_ms: float = typer.Option(
        100.0, help="Overload scenario: the requests' deadline_ms."
    ),
    deadlines: str | None = typer.Option(
        None,
        help="Deadline sweep: deadline_ms values (e.g. 5,10,20,50), at the first "
        "--concurrency (Python client: server time, accuracy, stop reasons).",
    ),
    figure: Path | None = typer.Option(
        None, "--figure", help="Overload scenario: write its PNG figure here."
    ),
    json_out: Path | None = typer.Option(None, "--json", help="Write the results as JSON."),
    markdown_out: Path | None = typer.Option(None, "--markdown", help="Write a markdown table."),
) -> None:
    """Throughput, p50/p95/p99 and served exits per budget vs the last exit, one invocation.

    ``--client wrk`` drives the C load generator (closed loop, one PNG per request, rotating
    over the images; ``--duration`` seconds per workload and round) and reads what the server
    did from its /metrics; the Python client also sends several images per request.
    """
    from benchmarks.http import (
        add_ratios,
        load_images,
        markdown,
        model_info,
        workloads_for,
    )
    from exitwise.fileio import atomic_write_json, atomic_write_text

    from .options import parse_ints

    levels = parse_ints(concurrency, "--concurrency")
    if overload is not None or deadlines is not None:
        from .http_scenarios import scenarios

        scenarios(
            url=url,
            overload=overload,
            overload_deadline_ms=overload_deadline_ms,
            deadlines=deadlines,
            concurrency=levels[0],
            requests=requests,
            duration=duration,
            budgets=budgets,
            client_cpus=client_cpus,
            dataset=dataset,
            data_root=data_root,
            num_images=num_images,
            api_key=api_key,
            json_out=json_out,
            markdown_out=markdown_out,
            figure=figure,
        )
        return
    if client not in ("python", "wrk"):
        raise ExitwiseError(f"--client must be python or wrk, not {client!r}")
    if client == "wrk" and images_per_request != 1:
        raise ExitwiseError("--client wrk sends one image per request; use --client python")
    if client_cpus is not None and client != "wrk":
        raise ExitwiseError("--client-cpus applies to --client wrk")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    info = model_info(url, headers)
    loads = workloads_for(info, budgets.split(",") if budgets else None)
    images = load_images(num_images, images_dir, dataset or info.get("dataset"), data_root)
    oracle_times = _oracle(oracle) if oracle else None
    if client == "wrk":
        from benchmarks.wrk import find_wrk
        from benchmarks.wrk_load import run_wrk_loads

        find_wrk()
        all_rows = run_wrk_loads(
            url,
            images,
            loads,
            num_exits=len(info["exits"]),
            levels=levels,
            rounds=rounds,
            duration_s=duration,
            headers=headers,
            client_cpus=client_cpus,
        )
    else:
        all_rows = []
        for c in levels:
            all_rows += _python_rows(
                url, images, loads, c, rounds, requests, duration, images_per_request, headers
            )
    for c in levels:
        rows = [r for r in all_rows if r["concurrency"] == c]
        for r in rows:
            if r["ok"] == 0:
                raise ExitwiseError(
                    f"workload {r['workload']!r}: no successful request ({r['first_error']})"
                )
        key = _oracle_key(oracle_times, 1 if c == 1 else info["limits"]["max_batch_size"])
        add_ratios(rows, oracle_times[key] if oracle_times and key else None)
    table = markdown(all_rows)
    typer.echo(table)
    out = {
        "url": url,
        "model": info["name"],
        "device": info["device"],
        "client": client,
        "rows": all_rows,
    }
    if json_out is not None:
        atomic_write_json(json_out, out)
    if markdown_out is not None:
        atomic_write_text(markdown_out, table + "\n")


def _python_rows(
    url: str,
    images: list[bytes],
    loads: list[Any],
    concurrency: int,
    rounds: int,
    requests: int,
    duration: float,
    images_per_request: int,
    headers: dict[str, str] | None,
) -> list[dict[str, Any]]:
    """The Python client's rows at one concurrency: the rounds of each workload pooled."""
    import asyncio

    from benchmarks.http import run_load

    pooled: dict[str, Any] = {}
    for _ in range(rounds):  # interleaved, so machine-load drift hits every workload alike
        for w in loads:
            result = asyncio.run(
                run_load(
                    url.rstrip("/"),
                    images,
                    w,
                    concurrency=concurrency,
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
    return [pooled[w.label].summary() for w in loads]


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
