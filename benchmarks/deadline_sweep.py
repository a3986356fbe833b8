"""``exitwise bench http --deadlines 5,10,20,50``: how well each deadline is kept, and what it buys.

First the last exit's closed-loop capacity C (requests/s, ``wrk``, 16 connections) is measured.
Then, at each load of ``--deadline-loads`` (default 0.5 and 0.9 x C), requests for the full
network (``max_exit=K``, ``degrade=false``) arrive open loop (Poisson, see
:mod:`benchmarks.wrk`), without a deadline and with ``deadline_ms`` D for each D. The latency is
the client's (wrk: from writing the request to the last byte of the answer), so it includes what
the server cannot see (the kernel's queues, a loop busy elsewhere) as well as what it does.

Reported per run: the offered rate asked and achieved, p50/p99/p99.9 latency, the share answered
within D and within D + 2 ms, why images stopped and the exits they left at (the server's
``/metrics``), 503s, and an accuracy estimate: each exit's test accuracy (``/v1/model``) weighted
by the images it served (wrk does not read the answers, and the server does not see labels).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .overload import (
    CLOSED_CONNECTIONS,
    last_exit_capacity,
    open_row,
    run_open,
    settle,
)
from .overload_report import stops_cell


def run_deadline_sweep(
    url: str,
    info: dict[str, Any],
    images: list[bytes],
    *,
    loads: list[float],
    deadlines_ms: list[float],
    duration_s: float,
    client_cpus: str | None = None,
    headers: dict[str, str] | None = None,
    say: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    say = say or (lambda _: None)
    headers = headers or {}
    k = len(info["exits"])
    base = {"max_exit": k, "top_k": 0, "degrade": "false"}
    send = {"Content-Type": "image/png", **headers}
    rows: list[dict[str, Any]] = []
    stopped = None
    with tempfile.TemporaryDirectory(prefix="exitwise-deadlines-") as tmp:
        folder = Path(tmp)
        listing, capacity = last_exit_capacity(
            url, folder, images, k, send, duration_s=duration_s, cpus=client_cpus, say=say
        )
        runs = [(load, d) for load in loads for d in [None, *deadlines_ms]]
        for i, (load, d) in enumerate(runs):
            rate = load * capacity
            params: dict[str, Any] = dict(base)
            if d is not None:
                params["deadline_ms"] = d
            unsettled = settle(url, images[0], base, headers)
            if unsettled is not None:
                when = "none" if d is None else f"{d:g} ms"
                stopped = f"before {load:g}x, deadline {when}: {unsettled}"
                say(f"stopped: the server did not settle {stopped}")
                break
            run, did, connections, _ = run_open(
                url, folder / f"run{i}", listing, params, send, rate=rate,
                duration_s=duration_s, cpus=client_cpus, seed=2000 + i, num_exits=k,
                headers=headers,
            )  # fmt: skip
            row = {
                "load": load,
                "deadline_ms": d,
                **open_row(
                    run, did, info, offered_per_s=rate, connections=connections, deadline_ms=d
                ),
            }
            rows.append(row)
            say(
                f"{load:g}x ({rate:.0f}/s asked, {row['sent_per_s']:.0f}/s sent), deadline "
                f"{'none' if d is None else f'{d:g} ms'}: p99 {row['p99_ms']:.1f} ms, "
                f"stops {row['stops']}"
            )
    return {
        "capacity_per_s": capacity,
        "closed_connections": CLOSED_CONNECTIONS,
        "loads": loads,
        "deadlines_ms": deadlines_ms,
        "duration_s": duration_s,
        "params": base,
        "rows": rows,
        "stopped": stopped,  # why the runs stopped early (a server that did not settle)
    }


def markdown(result: dict[str, Any]) -> str:
    from .tables import markdown_table

    header = [
        "load (asked / sent per s)", "deadline_ms", "p50 ms", "p99 ms", "p99.9 ms", "within D",
        "within D+2 ms", "stopped: confident / cap / deadline / overload", "exits",
        "accuracy (est.)", "503s",
    ]  # fmt: skip

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}%"

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    cells = []
    for r in result["rows"]:
        cells.append(
            [
                f"{r['load']:g}x ({r['offered_per_s']:.0f} / {r['sent_per_s']:.0f})",
                "none" if r["deadline_ms"] is None else f"{r['deadline_ms']:g}",
                ms(r["p50_ms"]),
                ms(r["p99_ms"]),
                ms(r["p999_ms"]),
                pct(r.get("within_pct")),
                pct(r.get("within_2ms_pct")),
                stops_cell(r["stops"]),
                " ".join(f"{k}:{v}" for k, v in r["exit_histogram"].items()),
                "-" if r["accuracy_estimate"] is None else f"{r['accuracy_estimate']:.2f}",
                r["statuses"].get("503", 0),
            ]
        )
    note = (
        f"Last exit closed loop ({result['closed_connections']} connections): "
        f"{result['capacity_per_s']:.0f} requests/s; latencies are the client's."
    )
    table = markdown_table(header, cells, "llrrrrrllrr")
    if result.get("stopped"):
        table += f"\n\nStopped: the server did not settle {result['stopped']}."
    return note + "\n\n" + table
