"""``exitwise bench http --overload ... | --deadlines ...``: the load scenarios for deadlines
and degradation (benchmarks.overload, benchmarks.deadline_sweep)."""

from __future__ import annotations

import os
from typing import Any

import typer

from benchmarks import deadline_sweep, overload
from benchmarks.http import model_info
from benchmarks.images import load_labelled_images
from benchmarks.wrk import find_wrk
from exitwise.errors import ExitwiseError

from .http_options import Load, Overload, Report, Scenarios, Target
from .options import parse_floats


def _say(line: str) -> None:
    typer.echo(line, err=True)


def run_scenarios(target: Target, load: Load, scenarios: Scenarios) -> Report:
    """The chosen scenarios in turn, against one server with one set of labelled images."""
    info = model_info(target.url, target.headers)
    name = target.dataset or info.get("dataset")
    if name is None:
        raise ExitwiseError("the model names no data set: pass --dataset")
    images, labels = load_labelled_images(target.num_images, name, target.data_root)
    result: dict[str, Any] = {"url": target.url, "model": info["name"], "device": info["device"]}
    text: list[str] = []
    if scenarios.overload is not None:
        over = run_overload(target, load, scenarios.overload, info, images)
        result["overload"] = over
        text.append(
            f"Overload: last exit {over['capacity_per_s']:.0f} requests/s closed loop; "
            f"open loop below.\n\n" + overload.markdown(over)
        )
    if scenarios.deadlines is not None:
        sweep = run_deadlines(target, load, scenarios.deadlines, images, labels)
        result["deadlines"] = sweep
        text.append(
            f"Deadline sweep, {sweep['concurrency']} clients.\n\n"
            + deadline_sweep.markdown(sweep["rows"])
        )
    return Report("\n\n".join(text), result)


def run_overload(
    target: Target, load: Load, scenario: Overload, info: dict[str, Any], images: list[bytes]
) -> dict[str, Any]:
    """Open-loop arrivals at multiples of the last exit's capacity, degradation off and on
    (wrk)."""
    find_wrk()
    result = overload.run_overload(
        target.url.rstrip("/"),
        info,
        images,
        multiples=parse_floats(scenario.multiples, "--overload"),
        duration_s=load.duration_s,
        deadline_ms=scenario.deadline_ms,
        client_cpus=load.client_cpus,
        headers=target.headers or {},
        say=_say,
    )
    if scenario.figure is not None:
        overload.plot(result, scenario.figure)
    return result


def run_deadlines(
    target: Target, load: Load, deadlines: str, images: list[bytes], labels: list[int]
) -> dict[str, Any]:
    """Server time, accuracy and stop reasons per deadline_ms, at the first concurrency (the
    Python client)."""
    if load.client_cpus:  # the Python client pins itself
        os.sched_setaffinity(0, {int(c) for c in load.client_cpus.split(",")})
    params: dict[str, Any] = {}
    if load.budgets:
        params["budget_mflops"] = parse_floats(load.budgets, "--budgets")[0]
    concurrency = load.levels[0]
    rows = deadline_sweep.run_deadline_sweep(
        target.url.rstrip("/"),
        images,
        labels,
        deadlines_ms=parse_floats(deadlines, "--deadlines"),
        concurrency=concurrency,
        requests=load.requests,
        params=params,
        headers=target.headers,
        say=_say,
    )
    return {"concurrency": concurrency, "params": params, "rows": rows}
