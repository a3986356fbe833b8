"""``exitwise bench http --overload 1,2,4``: open-loop arrivals beyond what the server can do.

First two closed-loop capacities are measured (``wrk``, 16 connections): the last exit's, C
(requests/s), and the cheapest calibrated operating point's. Then requests for the full network
(``max_exit=K``) with a ``deadline_ms`` D arrive open loop (Poisson, see :mod:`benchmarks.wrk`)
at each multiple of C, once with ``degrade=false`` (the server sheds: a full queue is a 503) and
once with ``degrade=true`` (it steps down to cheaper operating points first), and at the highest
multiple once more with ``deadline_policy=strict`` (degradation on: a request that not even exit
1 is forecast to answer in time is a 503 at once).

Reported per run, all from the client (wrk) but the server's own counts (``/metrics``): the
offered rate asked and achieved, answers per second, goodput (answers within D per second, and
its ratio to the cheapest point's closed-loop capacity), p50/p99/p99.9 latency of every answer
and of the answered requests (not 503; each request's own latency, paired with its answer by
its ``X-Request-Id``), the share answered within D, D + 2 and D + 5 ms, the slowest refusals,
503s, why images stopped, the exits, and an accuracy estimate: the calibrated test accuracy of
the operating point (or exit) that served each answer, weighted by how many it served (the
server does not see labels; answers stopped by the deadline are counted at their exit's
accuracy). During each run the degradation level (the level given to the latest request), the
images served degraded and the 503s are sampled from ``/metrics`` every 0.25 s; the figure
draws the level over time.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import numpy as np

from . import tcp
from .errors import BenchError
from .overload_report import ms_cell
from .server_metrics import MetricsSampler, load_point, scrape, served
from .wrk import WrkResult, open_connections, run_wrk, write_bodies, write_script

CLOSED_CONNECTIONS = 16


def settle(url: str, body: bytes, params: dict[str, Any], headers: dict[str, str]) -> str | None:
    """Until the engine's queues are empty and the server has stepped all the way back up
    (single requests, at most 30 s: the level comes down a point per calm hold, and after a run
    that tried a dearer point too early the first hold may be 8 s); ``None`` once it has, else
    what it still answered. The requests allow stepping down: only those set the level (the one
    given last)."""
    end = time.monotonic() + 30
    send = {"content-type": "image/png", **headers}
    params = {**params, "degrade": "true"}
    last = ""
    while time.monotonic() < end:
        r = httpx.post(f"{url}/v1/classify", content=body, params=params, headers=send, timeout=30)
        level, _, _, queued = load_point(scrape(url, headers))
        if r.status_code == 200 and level == 0 and queued == 0:
            return None
        last = f"{r.status_code} {r.text[:200]} (level {level:g}, {queued:g} images queued)"
        time.sleep(0.05)
    return last


def accuracy_estimate(info: dict[str, Any], did: dict[str, Any]) -> float | None:
    """Estimated accuracy (percent) of the answers, from the calibration's test figures.

    An answer stepped down to an operating point counts that point's test accuracy. The others
    asked for the full network, so each counts the test accuracy of the exit it came from (a
    ``deadline_ms`` stops them early under load): their exits are the server's exit histogram
    less what the stepped-down answers are expected to have used (the points' test exit
    fractions)."""
    points = {p["name"]: p for p in info["operating_points"]}
    per_exit = [e.get("test_accuracy") for e in info["exits"]]
    total = did["images"]
    if not total or any(a is None for a in per_exit):
        return None
    hist = np.array(
        [did["exit_histogram"].get(str(k + 1), 0) for k in range(len(per_exit))], dtype=float
    )
    weighted, counted = 0.0, 0.0
    for name, n in did["degraded"].items():
        test = (points.get(name) or {}).get("test") or {}
        if "accuracy" not in test:
            continue
        weighted += n * test["accuracy"]
        counted += n
        fractions = test.get("exit_fractions")
        if fractions is not None and len(fractions) == len(hist):
            hist -= n * np.asarray(fractions, dtype=float)
    rest = total - counted
    hist = np.clip(hist, 0.0, None)
    if rest > 0 and hist.sum() > 0:
        weighted += rest * float(np.dot(hist / hist.sum(), per_exit))
        counted += rest
    return weighted / counted if counted else None


def _pct(part: float, whole: float) -> float | None:
    return 100 * part / whole if whole else None


def open_row(
    run: WrkResult,
    did: dict[str, Any],
    info: dict[str, Any],
    *,
    offered_per_s: float,
    connections: int,
    deadline_ms: float | None,
) -> dict[str, Any]:
    """One open-loop run's figures: rates, client latency (every answer; the answered ones,
    without the 503s and other refusals; the refusals), shares within D, D + 2 and D + 5 ms
    of the answered, what the server did, the cores it used (``process_cores``, of which
    ``engine_cores`` its engine worker), and the host's TCP drops at the listening socket and
    retransmission timeouts (:mod:`benchmarks.tcp`; None where not measured)."""
    if run.latency is None or run.sent is None or run.answered is None or run.refused is None:
        raise ValueError("an open-loop run (write_script with a rate) is needed")
    every, answered, refusals = run.latency, run.answered, run.refused
    refused = run.non_2xx  # wrk's count; ``refusals``: their latencies
    secs = run.seconds
    row: dict[str, Any] = {
        "offered_per_s": offered_per_s,
        "sent_per_s": run.sent_per_s,
        "connections": connections,
        "late_sends_pct": _pct(run.late_sends, run.sent),
        "lag_max_ms": run.lag_max_ms,
        "requests": run.requests,
        "refused": refused,
        "answered_per_s": (run.requests - refused) / secs if secs else 0.0,
        "p50_ms": every.quantile_ms(0.5),
        "p99_ms": every.quantile_ms(0.99),
        "p999_ms": every.quantile_ms(0.999),
        "max_ms": every.quantile_ms(1.0),
        "answered_p50_ms": answered.quantile_ms(0.5),
        "answered_p99_ms": answered.quantile_ms(0.99),
        "answered_p999_ms": answered.quantile_ms(0.999),
        "answered_max_ms": answered.quantile_ms(1.0),
        "refused_p99_ms": refusals.quantile_ms(0.99),
        "refused_max_ms": refusals.quantile_ms(1.0),
        "unpaired": run.unpaired,
        "socket_errors": run.socket_errors,
        # Requests slower than 250 ms as the client measured them (answered, refused), and as
        # the server did (from its arrival stamp): a difference is time outside the server.
        "client_over_250ms": every.total - every.count_within(250),
        "answered_over_250ms": answered.total - answered.count_within(250),
        "refused_over_250ms": refusals.total - refusals.count_within(250),
        "server_over_250ms": did.get("over_250ms"),
        "statuses": did["statuses"],
        "stops": did["stops"],
        "exit_histogram": did["exit_histogram"],
        "degraded": did["degraded"],
        "mean_mflops": did["mean_mflops"] if did["images"] else None,
        "accuracy_estimate": accuracy_estimate(info, did),
        # Cores' worth of CPU over the run: the server's, and its engine worker's part of it.
        **{
            f"{name}_cores": None if cpu is None or not secs else cpu / secs
            for name, cpu in did["cpu_s"].items()
        },
        **(did.get("kernel") or tcp.delta(None, None)),  # None: not measured
    }
    if deadline_ms is not None:
        good = answered.count_within(deadline_ms)
        row["goodput_per_s"] = good / secs if secs else 0.0
        row["in_time_pct"] = _pct(good, run.requests)
        for extra, key in ((0, "within_pct"), (2, "within_2ms_pct"), (5, "within_5ms_pct")):
            share = answered.share_within(deadline_ms + extra)
            row[key] = None if share is None else 100 * share
    return row


def closed_capacity(
    url: str,
    folder: Path,
    listing: Path,
    params: dict[str, Any],
    send: dict[str, str],
    *,
    duration_s: float,
    cpus: str | None,
    warmup_s: float = 2.0,
) -> float:
    """Requests/s at ``params`` closed loop (16 connections; no stepping down), after a
    warm-up; a server that refuses them is an error."""
    query = urlencode({**params, "top_k": 0, "degrade": "false"})
    script = write_script(folder, listing, f"/v1/classify?{query}", send)
    if warmup_s > 0:
        run_wrk(url, script, connections=CLOSED_CONNECTIONS, duration_s=warmup_s, cpus=cpus)
    run = run_wrk(url, script, connections=CLOSED_CONNECTIONS, duration_s=duration_s, cpus=cpus)
    if run.non_2xx > 0.01 * run.requests or not run.requests:
        raise BenchError(
            f"measuring the capacity at {params}, the server refused {run.non_2xx} of "
            f"{run.requests} requests: it must answer a closed loop of {CLOSED_CONNECTIONS}"
        )
    return run.requests_per_s


def last_exit_capacity(
    url: str,
    folder: Path,
    images: list[bytes],
    num_exits: int,
    send: dict[str, str],
    *,
    duration_s: float,
    cpus: str | None,
    say: Callable[[str], None],
) -> tuple[Path, float]:
    """The request bodies written under ``folder`` (their listing), and the last exit's
    closed-loop capacity in requests/s: what the open-loop loads are multiples of."""
    listing = write_bodies(folder / "bodies", images)
    capacity = closed_capacity(
        url, folder / "last", listing, {"max_exit": num_exits}, send, duration_s=duration_s,
        cpus=cpus,
    )  # fmt: skip
    say(f"last exit: {capacity:.0f} requests/s (closed loop, {CLOSED_CONNECTIONS})")
    return listing, capacity


def run_open(
    url: str,
    folder: Path,
    listing: Path,
    params: dict[str, Any],
    send: dict[str, str],
    *,
    rate: float,
    duration_s: float,
    cpus: str | None,
    seed: int,
    num_exits: int,
    headers: dict[str, str],
    sample: bool = False,
) -> tuple[WrkResult, dict[str, Any], int, dict[str, list[float]] | None]:
    """One open-loop run at ``rate``: wrk's result, what the server did, the connections, and
    (``sample``) the load over time from /metrics."""
    connections = open_connections(rate)
    script = write_script(
        folder,
        listing,
        f"/v1/classify?{urlencode(params)}",
        send,
        rate=rate,
        connections=connections,
        seed=seed,
    )
    before, kernel = scrape(url, headers), tcp.read()
    sampler = MetricsSampler(url, headers) if sample else None
    if sampler is not None:
        with sampler:
            run = run_wrk(url, script, connections=connections, duration_s=duration_s, cpus=cpus)
    else:
        run = run_wrk(url, script, connections=connections, duration_s=duration_s, cpus=cpus)
    did = served(before, scrape(url, headers), num_exits)
    did["kernel"] = tcp.delta(kernel, tcp.read())  # the host's, not the server's (benchmarks.tcp)
    return run, did, connections, None if sampler is None else sampler.series()


def cheapest_point(info: dict[str, Any]) -> dict[str, Any] | None:
    return min(info["operating_points"], key=lambda p: p["expected_mflops"], default=None)


def run_overload(
    url: str,
    info: dict[str, Any],
    images: list[bytes],
    *,
    multiples: list[float],
    duration_s: float,
    deadline_ms: float,
    client_cpus: str | None = None,
    headers: dict[str, str] | None = None,
    say: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    say = say or (lambda _: None)
    headers = headers or {}
    k = len(info["exits"])
    base = {"max_exit": k, "top_k": 0}
    send = {"Content-Type": "image/png", **headers}
    cheapest = cheapest_point(info)
    rows: list[dict[str, Any]] = []
    stopped = None
    runs = [(m, degrade, "late") for m in multiples for degrade in (False, True)]
    runs.append((max(multiples), True, "strict"))
    with tempfile.TemporaryDirectory(prefix="exitwise-overload-") as tmp:
        folder = Path(tmp)
        listing, capacity = last_exit_capacity(
            url, folder, images, k, send, duration_s=duration_s, cpus=client_cpus, say=say
        )
        cheap_capacity = None
        if cheapest is not None:
            cheap_capacity = closed_capacity(
                url, folder / "cheapest", listing,
                {"budget_mflops": cheapest["expected_mflops"]}, send, duration_s=duration_s,
                cpus=client_cpus, warmup_s=0,
            )  # fmt: skip
            say(f"{cheapest['name']}: {cheap_capacity:.0f} requests/s (closed loop)")
        for i, (m, degrade, policy) in enumerate(runs):
            rate = m * capacity
            params = {
                **base,
                "deadline_ms": deadline_ms,
                "degrade": str(degrade).lower(),
                "deadline_policy": policy,
            }
            unsettled = settle(url, images[0], base, headers)
            if unsettled is not None:
                stopped = f"before {m:g}x, degrade {degrade}, {policy}: {unsettled}"
                say(f"stopped: the server did not settle {stopped}")
                break
            run, did, connections, series = run_open(
                url, folder / f"run{i}", listing, params, send, rate=rate,
                duration_s=duration_s, cpus=client_cpus, seed=1000 + i, num_exits=k,
                headers=headers, sample=True,
            )  # fmt: skip
            row = {
                "multiple": m,
                "degrade": degrade,
                "policy": policy,
                **open_row(
                    run,
                    did,
                    info,
                    offered_per_s=rate,
                    connections=connections,
                    deadline_ms=deadline_ms,
                ),
                "timeline": series,
            }
            row["status_503"] = did["statuses"].get("503", 0)
            row["refused_by"] = did["refused"]
            row["goodput_vs_cheapest"] = (
                row["goodput_per_s"] / cheap_capacity if cheap_capacity else None
            )
            rows.append(row)
            say(
                f"{m:g}x ({rate:.0f}/s asked, {row['sent_per_s']:.0f}/s sent), degrade "
                f"{'on' if degrade else 'off'}, {policy}: {row['goodput_per_s']:.0f} good/s, "
                f"p99 {ms_cell(row['answered_p99_ms'])} ms (answered), {row['refused']} refused"
            )
    return {
        "cheapest_point": None if cheapest is None else cheapest["name"],
        "cheapest_point_accuracy": None
        if cheapest is None
        else (cheapest.get("test") or {}).get("accuracy"),
        "points_test_accuracy": [
            (p.get("test") or {}).get("accuracy") for p in info["operating_points"]
        ],
        "capacity_per_s": capacity,
        "cheapest_capacity_per_s": cheap_capacity,
        "closed_connections": CLOSED_CONNECTIONS,
        "deadline_ms": deadline_ms,
        "duration_s": duration_s,
        "rows": rows,
        # Why the runs stopped early: a server that does not come back after a run (its queues
        # empty, it still refuses) would make every later figure meaningless.
        "stopped": stopped,
    }
