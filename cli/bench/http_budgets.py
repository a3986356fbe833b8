"""``exitwise bench http`` without a scenario: each budget against the last exit, at each
concurrency, with the Python client (httpx, any request) or wrk (C, one image per request)."""

from __future__ import annotations

from typing import Any

from benchmarks.http import model_info, run_python_loads, workloads_for
from benchmarks.http_report import add_ratios, markdown, oracle_key, read_oracle
from benchmarks.images import load_images
from exitwise.errors import ExitwiseError

from .http_options import BudgetComparison, Load, Report, Target


def check(run: BudgetComparison, load: Load) -> None:
    """The combinations a client cannot run, refused before anything is sent."""
    if run.client not in ("python", "wrk"):
        raise ExitwiseError(f"--client must be python or wrk, not {run.client!r}")
    if run.client == "wrk" and run.images_per_request != 1:
        raise ExitwiseError("--client wrk sends one image per request; use --client python")
    if load.client_cpus is not None and run.client != "wrk":
        raise ExitwiseError("--client-cpus applies to --client wrk")


def run_budgets(target: Target, load: Load, run: BudgetComparison) -> Report:
    """The last exit and every budget at each concurrency, rounds interleaved; each row with its
    speed-up and MFLOPs ratio against the last exit (and oracle efficiency with ``--oracle``)."""
    check(run, load)
    headers = target.headers
    info = model_info(target.url, headers)
    loads = workloads_for(info, load.budgets.split(",") if load.budgets else None)
    dataset = target.dataset or info.get("dataset")
    images = load_images(target.num_images, run.images_dir, dataset, target.data_root)
    oracle_times = read_oracle(run.oracle) if run.oracle else None
    if run.client == "wrk":
        from benchmarks.wrk import find_wrk
        from benchmarks.wrk_load import run_wrk_loads

        find_wrk()
        all_rows = run_wrk_loads(
            target.url,
            images,
            loads,
            num_exits=len(info["exits"]),
            levels=load.levels,
            rounds=load.rounds,
            duration_s=load.duration_s,
            headers=headers,
            client_cpus=load.client_cpus,
        )
    else:
        all_rows = []
        for c in load.levels:
            all_rows += run_python_loads(
                target.url,
                images,
                loads,
                concurrency=c,
                rounds=load.rounds,
                requests=load.requests,
                duration_s=load.duration_s,
                images_per_request=run.images_per_request,
                headers=headers,
            )
    for c in load.levels:
        rows = [r for r in all_rows if r["concurrency"] == c]
        for r in rows:
            if r["ok"] == 0:
                raise ExitwiseError(
                    f"workload {r['workload']!r}: no successful request ({r['first_error']})"
                )
        key = oracle_key(oracle_times, 1 if c == 1 else info["limits"]["max_batch_size"])
        add_ratios(rows, oracle_times[key] if oracle_times and key else None)
    result: dict[str, Any] = {
        "url": target.url,
        "model": info["name"],
        "device": info["device"],
        "client": run.client,
        "rows": all_rows,
    }
    return Report(markdown(all_rows), result)
