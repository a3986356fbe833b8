"""The HTTP load client behind ``exitwise bench http``.

``C`` concurrent clients (httpx, async, closed loop: each sends its next request when the last
one is answered) post images to ``/v1/classify`` until ``N`` requests are done or ``S`` seconds
have passed, whichever comes first. Each budget is one workload; the last-exit workload
(``max_exit = K``) is the baseline, so every ratio comes from the same invocation and the same
server.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import BenchError


@dataclass(frozen=True)
class Workload:
    label: str  # "q0.5 (3.20 MFLOPs)", "last exit"
    params: dict[str, Any]  # query parameters: budget_mflops / max_exit


@dataclass
class LoadResult:
    workload: Workload
    concurrency: int
    images_per_request: int
    wall_seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests
    statuses: Counter[int] = field(default_factory=Counter)
    exits: Counter[int] = field(default_factory=Counter)
    mflops: list[float] = field(default_factory=list)  # per image served
    compute: list[float] = field(default_factory=list)  # Server-Timing compute, seconds
    overhead: list[float] = field(default_factory=list)  # 1 - compute / latency, per request
    server_overhead: list[float] = field(default_factory=list)  # 1 - compute / handler time
    transport_errors: int = 0
    first_error: str | None = None  # the first non-200 answer, to say why a workload failed

    @property
    def images(self) -> int:
        return len(self.mflops)

    def merge(self, other: LoadResult) -> None:
        """Add another run of the same workload (rounds interleaved with other workloads)."""
        self.wall_seconds += other.wall_seconds
        self.latencies += other.latencies
        self.statuses.update(other.statuses)
        self.exits.update(other.exits)
        self.mflops += other.mflops
        self.compute += other.compute
        self.overhead += other.overhead
        self.server_overhead += other.server_overhead
        self.transport_errors += other.transport_errors
        self.first_error = self.first_error or other.first_error

    def summary(self) -> dict[str, Any]:
        lat = np.array(self.latencies) * 1000 if self.latencies else np.array([np.nan])
        return {
            "workload": self.workload.label,
            "params": self.workload.params,
            "concurrency": self.concurrency,
            "images_per_request": self.images_per_request,
            "requests": sum(self.statuses.values()) + self.transport_errors,
            "ok": self.statuses.get(200, 0),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "transport_errors": self.transport_errors,
            "first_error": self.first_error,
            "wall_s": self.wall_seconds,
            "images_per_s": self.images / self.wall_seconds if self.wall_seconds else 0.0,
            "p50_ms": float(np.percentile(lat, 50)),
            "p95_ms": float(np.percentile(lat, 95)),
            "p99_ms": float(np.percentile(lat, 99)),
            "mean_mflops": float(np.mean(self.mflops)) if self.mflops else float("nan"),
            "exit_histogram": {str(k): v for k, v in sorted(self.exits.items())},
            "server_compute_ms_p50": float(np.median(self.compute) * 1000)
            if self.compute
            else float("nan"),
            "overhead_fraction_p50": float(np.median(self.overhead))
            if self.overhead
            else float("nan"),
            "server_overhead_fraction_p50": float(np.median(self.server_overhead))
            if self.server_overhead
            else float("nan"),
        }


def server_timings(header: str | None) -> dict[str, float]:
    """The entries of a Server-Timing header, in seconds."""
    out = {}
    for part in (header or "").split(","):
        name, _, rest = part.strip().partition(";")
        if rest.startswith("dur="):
            out[name] = float(rest[4:]) / 1000
    return out


def _multipart(images: list[bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("image", (f"{i}.png", img, "image/png")) for i, img in enumerate(images)]


async def run_load(
    url: str,
    images: list[bytes],
    workload: Workload,
    *,
    concurrency: int,
    requests: int,
    duration_s: float,
    images_per_request: int = 1,
    headers: dict[str, str] | None = None,
    timeout_s: float = 60.0,
) -> LoadResult:
    """One workload: closed-loop clients until ``requests`` are done or ``duration_s`` passed."""
    import httpx

    result = LoadResult(workload, concurrency, images_per_request)
    # A fixed budget's cost is what is measured: no stepping down if the queue grows.
    params = {**workload.params, "top_k": 0, "degrade": "false"}
    next_index = 0
    start = time.perf_counter()
    stop_at = start + duration_s
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal next_index
        while next_index < requests and time.perf_counter() < stop_at:
            i = next_index
            next_index += 1
            first = i * images_per_request
            batch = [images[(first + j) % len(images)] for j in range(images_per_request)]
            t0 = time.perf_counter()
            try:
                if images_per_request == 1:
                    r = await client.post(
                        "/v1/classify",
                        content=batch[0],
                        params=params,
                        headers={"content-type": "image/png"},
                    )
                else:
                    r = await client.post("/v1/classify", files=_multipart(batch), params=params)
            except httpx.TransportError:
                result.transport_errors += 1
                continue
            elapsed = time.perf_counter() - t0
            result.statuses[r.status_code] += 1
            if r.status_code != 200:
                if result.first_error is None:
                    result.first_error = f"{r.status_code}: {r.text[:300]}"
                continue
            result.latencies.append(elapsed)
            for item in r.json()["results"]:
                result.exits[int(item["exit"])] += 1
                result.mflops.append(float(item["mflops"]))
            timing = server_timings(r.headers.get("server-timing"))
            if "compute" in timing:
                compute = timing["compute"]
                result.compute.append(compute)
                result.overhead.append(max(0.0, 1.0 - compute / elapsed))
                if timing.get("app"):
                    result.server_overhead.append(max(0.0, 1.0 - compute / timing["app"]))

    async with httpx.AsyncClient(
        base_url=url, headers=headers, limits=limits, timeout=timeout_s
    ) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
    result.wall_seconds = time.perf_counter() - start
    return result


def run_python_loads(
    url: str,
    images: list[bytes],
    loads: list[Workload],
    *,
    concurrency: int,
    rounds: int,
    requests: int,
    duration_s: float,
    images_per_request: int,
    headers: dict[str, str] | None,
) -> list[dict[str, Any]]:
    """Every workload at one concurrency, ``rounds`` times, interleaved so machine-load drift
    hits every workload alike; a row per workload with its rounds pooled."""
    pooled: dict[str, LoadResult] = {}
    for _ in range(rounds):
        for w in loads:
            result = asyncio.run(
                run_load(
                    url.rstrip("/"),
                    images,
                    w,
                    concurrency=concurrency,
                    requests=requests,
                    duration_s=duration_s,
                    images_per_request=images_per_request,
                    headers=headers,
                )
            )
            if w.label in pooled:
                pooled[w.label].merge(result)
            else:
                pooled[w.label] = result
    return [pooled[w.label].summary() for w in loads]


def model_info(url: str, headers: dict[str, str] | None, timeout_s: float = 10.0) -> Any:
    import httpx

    try:
        r = httpx.get(f"{url.rstrip('/')}/v1/model", headers=headers, timeout=timeout_s)
    except httpx.TransportError as err:
        raise BenchError(f"cannot reach {url}: {err}") from err
    if r.status_code != 200:
        raise BenchError(f"{url}/v1/model answered {r.status_code}: {r.text[:200]}")
    return r.json()


def workloads_for(info: dict[str, Any], budgets: list[str] | None) -> list[Workload]:
    """The budgets to run; the last-exit baseline always comes first."""
    k = len(info["exits"])
    out = [Workload("last exit", {"max_exit": k})]
    if budgets is None:
        budgets = [repr(p["expected_mflops"]) for p in info["operating_points"]]
    for b in budgets:
        b = b.strip()
        if b in ("last", ""):
            continue
        if b.startswith("exit"):
            m = int(b.removeprefix("exit").lstrip("=-:"))
            out.append(Workload(f"exit {m}", {"max_exit": m}))
            continue
        try:
            value = float(b)
        except ValueError:
            raise BenchError(f"bad budget {b!r}: a number (MFLOPs), 'exitM' or 'last'") from None
        names = [p["name"] for p in info["operating_points"] if p["expected_mflops"] <= value]
        label = f"{names[-1]} ({value:.4g} MFLOPs)" if names else f"{value:.4g} MFLOPs"
        out.append(Workload(label, {"budget_mflops": value}))
    return out
