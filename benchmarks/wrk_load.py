"""``exitwise bench http --client wrk``: each workload under the C client, rows like the Python
client's, with what the server did taken from its own ``/metrics``."""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from .http import Workload
from .server_metrics import scrape, served
from .wrk import WrkResult, run_wrk, write_bodies, write_script


def _row(
    w: Workload, connections: int, runs: list[WrkResult], did: list[dict[str, Any]]
) -> dict[str, Any]:
    """Rounds pooled: counts and time summed, percentiles the median of the rounds'."""
    seconds = sum(r.seconds for r in runs)
    images = sum(d["images"] for d in did)
    hist: dict[str, int] = {}
    for d in did:
        for k, v in d["exit_histogram"].items():
            hist[k] = hist.get(k, 0) + v
    mflops = [d["mean_mflops"] * d["images"] for d in did if d["images"]]
    requests = sum(r.requests for r in runs)
    non_2xx = sum(r.non_2xx for r in runs)
    return {
        "workload": w.label,
        "params": w.params,
        "client": "wrk",
        "concurrency": connections,
        "images_per_request": 1,
        "requests": requests,
        "ok": requests - non_2xx,
        "statuses": {"non-2xx": non_2xx} if non_2xx else {},
        "transport_errors": sum(r.socket_errors for r in runs),
        "first_error": None,
        "wall_s": seconds,
        "requests_per_s": requests / seconds if seconds else 0.0,
        # One image per request; wrk counts the answers within its duration (the server's
        # /metrics may include the last few in flight when wrk stopped).
        "images_per_s": requests / seconds if seconds else 0.0,
        "p50_ms": statistics.median(r.p50_ms for r in runs),
        "p95_ms": statistics.median(r.p95_ms for r in runs),
        "p99_ms": statistics.median(r.p99_ms for r in runs),
        "max_ms": max(r.max_ms for r in runs),
        "p99_ms_rounds": [r.p99_ms for r in runs],
        "requests_per_s_rounds": [r.requests_per_s for r in runs],
        "mean_mflops": sum(mflops) / images if images else float("nan"),
        "exit_histogram": dict(sorted(hist.items(), key=lambda kv: int(kv[0]))),
        # Server-Timing is not read from the responses (that would slow wrk down).
        "overhead_fraction_p50": None,
        "server_overhead_fraction_p50": None,
    }


def run_wrk_loads(
    url: str,
    images: list[bytes],
    loads: list[Workload],
    *,
    num_exits: int,
    levels: list[int],
    rounds: int,
    duration_s: float,
    headers: dict[str, str] | None = None,
    client_cpus: str | None = None,
    warmup_s: float = 2.0,
) -> list[dict[str, Any]]:
    """Rows per (connections, workload): ``rounds`` interleaved runs of ``duration_s`` each."""
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="exitwise-wrk-") as tmp:
        folder = Path(tmp)
        listing = write_bodies(folder / "bodies", images)
        send = {"Content-Type": "image/png", **(headers or {})}
        scripts = {}
        for i, w in enumerate(loads):
            # A fixed budget's cost is measured: no stepping down if the queue grows.
            query = urlencode({**w.params, "top_k": 0, "degrade": "false"})
            scripts[w.label] = write_script(
                folder / f"w{i}", listing, f"/v1/classify?{query}", send
            )
        base = url.rstrip("/")
        if warmup_s > 0:
            run_wrk(base, scripts[loads[0].label], connections=max(levels), duration_s=warmup_s)
        for c in levels:
            runs: dict[str, list[WrkResult]] = {w.label: [] for w in loads}
            did: dict[str, list[dict[str, Any]]] = {w.label: [] for w in loads}
            for _ in range(rounds):  # interleaved, so machine-load drift hits every workload alike
                for w in loads:
                    before = scrape(base, headers)
                    runs[w.label].append(
                        run_wrk(
                            base,
                            scripts[w.label],
                            connections=c,
                            duration_s=duration_s,
                            cpus=client_cpus,
                        )
                    )
                    did[w.label].append(served(before, scrape(base, headers), num_exits))
            rows.extend(_row(w, c, runs[w.label], did[w.label]) for w in loads)
    return rows
