"""``exitwise bench http --url URL``: load a running server at each budget and at the last exit."""

from __future__ import annotations

from pathlib import Path

import typer

from .http_options import BudgetComparison, Deadlines, Load, Overload, Report, Scenarios, Target
from .options import parse_ints


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
        help="Overload scenario: open-loop (Poisson) arrivals at these multiples of the last "
        "exit's closed-loop capacity (e.g. 1,2,4), degradation off and on, and "
        "deadline_policy=strict at the highest (wrk; --duration seconds each).",
    ),
    overload_deadline_ms: float = typer.Option(
        100.0, help="Overload scenario: the requests' deadline_ms."
    ),
    deadlines: str | None = typer.Option(
        None,
        help="Deadline sweep: deadline_ms values (e.g. 5,10,20,50), each (and none) at every "
        "--deadline-loads, open loop (wrk; --duration seconds each).",
    ),
    deadline_loads: str = typer.Option(
        "0.5,0.9",
        help="Deadline sweep: offered loads, as multiples of the last exit's closed-loop capacity.",
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

    ``--overload`` and ``--deadlines`` run the open-loop scenarios instead: wrk sends Poisson
    arrivals at multiples of the last exit's closed-loop capacity (measured first, in the same
    invocation), and the latencies are the client's.
    """
    target = Target(url, api_key, dataset, data_root, num_images)
    load = Load(
        parse_ints(concurrency, "--concurrency"), requests, duration, rounds, budgets, client_cpus
    )
    scenarios = Scenarios(
        Overload(overload, overload_deadline_ms, figure) if overload is not None else None,
        Deadlines(deadlines, deadline_loads) if deadlines is not None else None,
    )
    if scenarios.chosen:
        from .http_scenarios import run_scenarios

        report = run_scenarios(target, load, scenarios)
    else:
        from .http_budgets import run_budgets

        run = BudgetComparison(client, images_per_request, images_dir, oracle)
        report = run_budgets(target, load, run)
    _write(report, json_out, markdown_out)


def _write(report: Report, json_out: Path | None, markdown_out: Path | None) -> None:
    from exitwise.fileio import atomic_write_json, atomic_write_text

    typer.echo(report.table)
    if json_out is not None:
        atomic_write_json(json_out, report.result)
    if markdown_out is not None:
        atomic_write_text(markdown_out, report.table + "\n")
