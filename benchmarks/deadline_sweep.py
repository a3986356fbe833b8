"""``exitwise bench http --deadlines 5,10,20,50``: how well each deadline is kept, and what it buys.

For each ``deadline_ms`` D, ``concurrency`` closed-loop clients send single test images (PNG)
with that deadline. The Python client is used here because it can read what wrk cannot: each
answer's server time (the ``app`` entry of ``Server-Timing``: the handler from the first byte to
the response, without the client or the socket), the class against the image's label, and why
each image stopped. Reported: the share answered within D and within D + 2 ms of server time,
p50/p99 server time, accuracy, the exits and the stop reasons.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import numpy as np

from .http import server_timings


async def _sweep_one(
    url: str,
    images: list[bytes],
    labels: list[int],
    params: dict[str, Any],
    concurrency: int,
    requests: int,
    headers: dict[str, str] | None,
) -> dict[str, Any]:
    import httpx

    server_s: list[float] = []
    engine_s: list[float] = []
    correct: list[bool] = []
    reasons: Counter[str] = Counter()
    exits: Counter[int] = Counter()
    statuses: Counter[int] = Counter()
    nxt = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def client(c: httpx.AsyncClient) -> None:
        nonlocal nxt
        while nxt < requests:
            i = nxt
            nxt += 1
            j = i % len(images)
            r = await c.post(
                "/v1/classify",
                content=images[j],
                params={**params, "top_k": 0, "degrade": "false"},
                headers={"content-type": "image/png"},
            )
            statuses[r.status_code] += 1
            if r.status_code != 200:
                continue
            timing = server_timings(r.headers.get("server-timing"))
            server_s.append(timing.get("app", float("nan")))
            engine_s.append(timing.get("queue", float("nan")) + timing.get("compute", float("nan")))
            result = r.json()["results"][0]
            correct.append(result["class_id"] == labels[j])
            reasons[result["stopped"]] += 1
            exits[result["exit"]] += 1

    start = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=60) as c:
        await asyncio.gather(*(client(c) for _ in range(concurrency)))
    wall = time.perf_counter() - start
    ms = np.array(server_s) * 1000
    return {
        "requests": requests,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "wall_s": wall,
        "server_ms": ms,
        "engine_ms": np.array(engine_s) * 1000,
        "accuracy": 100 * float(np.mean(correct)) if correct else None,
        "reasons": dict(reasons),
        "exit_histogram": {str(k): v for k, v in sorted(exits.items())},
    }


def run_deadline_sweep(
    url: str,
    images: list[bytes],
    labels: list[int],
    *,
    deadlines_ms: list[float],
    concurrency: int,
    requests: int,
    params: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    say: Any = None,
) -> list[dict[str, Any]]:
    say = say or (lambda _: None)
    rows = []
    for d in [None, *deadlines_ms]:
        query = dict(params or {})
        if d is not None:
            query["deadline_ms"] = d
        out = asyncio.run(_sweep_one(url, images, labels, query, concurrency, requests, headers))
        ms = out.pop("server_ms")
        engine = out.pop("engine_ms")
        row = {
            "deadline_ms": d,
            **out,
            "p50_ms": float(np.percentile(ms, 50)) if ms.size else None,
            "p99_ms": float(np.percentile(ms, 99)) if ms.size else None,
            "engine_p50_ms": float(np.percentile(engine, 50)) if engine.size else None,
            "engine_p99_ms": float(np.percentile(engine, 99)) if engine.size else None,
            "within_pct": None if d is None else float(np.mean(ms <= d) * 100),
            "within_2ms_pct": None if d is None else float(np.mean(ms <= d + 2) * 100),
        }
        rows.append(row)
        say(
            f"deadline {'none' if d is None else f'{d:g} ms'}: p99 {row['p99_ms']:.1f} ms, "
            f"accuracy {row['accuracy']:.1f} %, stops {row['reasons']}"
        )
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    from .tables import markdown_table

    header = [
        "deadline_ms", "p50 ms", "p99 ms", "engine p50 / p99 ms", "within D", "within D+2 ms",
        "accuracy %",
        "stopped: confident / cap / deadline", "exits",
    ]  # fmt: skip

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}%"

    cells = []
    for r in rows:
        reasons = r["reasons"]
        stops = " / ".join(str(reasons.get(k, 0)) for k in ("confident", "cap", "deadline"))
        cells.append(
            [
                "none" if r["deadline_ms"] is None else f"{r['deadline_ms']:g}",
                f"{r['p50_ms']:.2f}",
                f"{r['p99_ms']:.2f}",
                f"{r['engine_p50_ms']:.2f} / {r['engine_p99_ms']:.2f}",
                pct(r["within_pct"]),
                pct(r["within_2ms_pct"]),
                "-" if r["accuracy"] is None else f"{r['accuracy']:.1f}",
                stops,
                " ".join(f"{k}:{v}" for k, v in r["exit_histogram"].items()),
            ]
        )
    return markdown_table(header, cells, "lrrrrrrll")
