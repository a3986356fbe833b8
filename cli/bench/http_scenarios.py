"""``exitwise bench http --overload ... | --deadlines ...``: the open-loop load scenarios for
deadlines and degradation (benchmarks.overload, benchmarks.deadline_sweep), both with wrk."""

from __future__ import annotations

import os
from typing import Any

import typer

from benchmarks import deadline_sweep, overload, overload_report
from benchmarks.http import model_info
from benchmarks.images import load_labelled_images
from benchmarks.wrk import find_wrk
from exitwise.errors import ExitwiseError

from .http_options import Load, Overload, Report, Scenarios, Target
from .options import parse_floats


def _say(line: str) -> None:
    typer.echo(line, err=True)


def run_scenarios(target: Target, load: Load, scenarios: Scenarios) -> Report:
    """The chosen scenarios in turn, against one server with one set of test images."""
    over, sweep = scenarios.overload, scenarios.deadlines
    # The options are read before any request, so a typo costs nothing.
    multiples = None if over is None else parse_floats(over.multiples, "--overload")
    values = None if sweep is None else parse_floats(sweep.deadlines_ms, "--deadlines")
    loads = None if sweep is None else parse_floats(sweep.loads, "--deadline-loads")
    find_wrk()
    info = model_info(target.url, target.headers)
    name = target.dataset or info.get("dataset")
    if name is None:
        raise ExitwiseError("the model names no data set: pass --dataset")
    images, _ = load_labelled_images(target.num_images, name, target.data_root)
    if load.client_cpus:  # wrk pins itself; this process samples /metrics on the same CPUs
        os.sched_setaffinity(0, {int(c) for c in load.client_cpus.split(",")})
    result: dict[str, Any] = {"url": target.url, "model": info["name"], "device": info["device"]}
    text: list[str] = []
    if over is not None and multiples is not None:
        done = run_overload(target, load, over, multiples, info, images)
        result["overload"] = done
        text.append("Overload, open loop.\n\n" + overload_report.markdown(done))
    if values is not None and loads is not None:
        swept = run_deadlines(target, load, values, loads, info, images)
        result["deadlines"] = swept
        text.append("Deadline sweep, open loop.\n\n" + deadline_sweep.markdown(swept))
    return Report("\n\n".join(text), result)


def run_overload(
    target: Target,
    load: Load,
    scenario: Overload,
    multiples: list[float],
    info: dict[str, Any],
    images: list[bytes],
) -> dict[str, Any]:
    """Open-loop arrivals at multiples of the last exit's capacity, degradation off and on,
    and deadline_policy=strict at the highest."""
    result = overload.run_overload(
        target.url.rstrip("/"),
        info,
        images,
        multiples=multiples,
        duration_s=load.duration_s,
        deadline_ms=scenario.deadline_ms,
        client_cpus=load.client_cpus,
        headers=target.headers or {},
        say=_say,
    )
    if scenario.figure is not None:
        overload_report.plot(result, scenario.figure)
    return result


def run_deadlines(
    target: Target,
    load: Load,
    deadlines_ms: list[float],
    loads: list[float],
    info: dict[str, Any],
    images: list[bytes],
) -> dict[str, Any]:
    """Client latency, stop reasons, exits and estimated accuracy per deadline_ms, at each
    load (open loop)."""
    return deadline_sweep.run_deadline_sweep(
        target.url.rstrip("/"),
        info,
        images,
        loads=loads,
        deadlines_ms=deadlines_ms,
        duration_s=load.duration_s,
        client_cpus=load.client_cpus,
        headers=target.headers or {},
        say=_say,
    )
