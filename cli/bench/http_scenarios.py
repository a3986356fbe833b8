"""``exitwise bench http --overload ... | --deadlines ...``: the load scenarios for deadlines
and degradation (benchmarks.overload, benchmarks.deadline_sweep)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer

from exitwise.errors import ExitwiseError


def scenarios(
    *,
    url: str,
    overload: str | None,
    overload_deadline_ms: float,
    deadlines: str | None,
    concurrency: int,
    requests: int,
    duration: float,
    budgets: str | None,
    client_cpus: str | None,
    dataset: str | None,
    data_root: Path | None,
    num_images: int,
    api_key: str | None,
    json_out: Path | None,
    markdown_out: Path | None,
    figure: Path | None = None,
) -> None:
    from benchmarks.http import load_labelled_images, model_info
    from exitwise.fileio import atomic_write_json, atomic_write_text

    from .options import parse_floats

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    info = model_info(url, headers or None)
    name = dataset or info.get("dataset")
    if name is None:
        raise ExitwiseError("the model names no data set: pass --dataset")
    images, labels = load_labelled_images(num_images, name, data_root)

    def say(line: str) -> None:
        typer.echo(line, err=True)

    out: dict[str, Any] = {"url": url, "model": info["name"], "device": info["device"]}
    text: list[str] = []
    if overload is not None:
        from benchmarks.overload import markdown, plot, run_overload
        from benchmarks.wrk import find_wrk

        find_wrk()
        multiples = parse_floats(overload, "--overload")
        result = run_overload(
            url.rstrip("/"),
            info,
            images,
            multiples=multiples,
            duration_s=duration,
            deadline_ms=overload_deadline_ms,
            client_cpus=client_cpus,
            headers=headers,
            say=say,
        )
        out["overload"] = result
        if figure is not None:
            plot(result, figure)
        text.append(
            f"Overload: last exit {result['capacity_per_s']:.0f} requests/s closed loop; "
            f"open loop below.\n\n" + markdown(result)
        )
    if deadlines is not None:
        from benchmarks.deadline_sweep import markdown as sweep_markdown
        from benchmarks.deadline_sweep import run_deadline_sweep

        if client_cpus:  # the Python client pins itself
            os.sched_setaffinity(0, {int(c) for c in client_cpus.split(",")})
        params: dict[str, Any] = {}
        if budgets:
            params["budget_mflops"] = parse_floats(budgets, "--budgets")[0]
        rows = run_deadline_sweep(
            url.rstrip("/"),
            images,
            labels,
            deadlines_ms=parse_floats(deadlines, "--deadlines"),
            concurrency=concurrency,
            requests=requests,
            params=params,
            headers=headers or None,
            say=say,
        )
        out["deadlines"] = {"concurrency": concurrency, "params": params, "rows": rows}
        text.append(f"Deadline sweep, {concurrency} clients.\n\n" + sweep_markdown(rows))
    table = "\n\n".join(text)
    typer.echo(table)
    if json_out is not None:
        atomic_write_json(json_out, out)
    if markdown_out is not None:
        atomic_write_text(markdown_out, table + "\n")
