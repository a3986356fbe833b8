"""The C load client: ``wrk`` driven by a generated Lua script that rotates over real images.

A Python client spends more CPU per request than the server it measures; on a small machine it
becomes the bottleneck and its cost is charged to the server. ``wrk`` (C, one thread, keep-alive
connections) costs a few microseconds per request. Images are written to files once; the Lua
script reads them in ``init`` and sends them in turn, each connection starting at its own offset.

Closed loop (the default): each connection sends its next request when the last is answered.

Open loop (``rate``): one Poisson schedule of arrivals at ``rate`` requests/s for all the
connections together. A connection that comes free takes the next arrival nobody has taken yet
and waits for it (wrk's ``delay()`` is in whole milliseconds: rounded down, so a send goes
within a millisecond before its arrival, wrk's timers being a millisecond late at most); the
arrivals are sent when they are due whatever the server does, as long as
a connection is free, so there must be more connections than requests in flight
(:func:`open_connections`). Each send is paired with the earliest arrival not yet sent (both
go in time order) to measure how late the client sent it; the run reports what it sent per
second (the offered rate achieved) and how many sends were more than 1 ms late. The latency of
each request is wrk's own: from writing the request to the last byte of the answer, on the
client, so it includes the kernel's queues and whatever the server did before it read the
request. wrk adds "coordinated omission" samples to its histogram before the script sees it
(right for a closed loop, where a slow answer holds back the requests the connection did not
send); an open schedule sent them anyway, so the script takes them out again, exactly as wrk
put them in, and hands the whole histogram (microseconds, counts) to :class:`Latency`. wrk's
histogram does not tell the statuses apart, so the script also measures each request itself:
every request carries an ``X-Request-Id``, which the server echoes, and the answer's latency
(from its send to its last byte parsed) goes to the answered (2xx) or the refused histogram.

What the server did (exits taken, MFLOPs per image, stop reasons, answers by status) is not
parsed from the responses, which would make wrk call into Lua for every response: it comes from
the server's own ``/metrics`` (:mod:`benchmarks.server_metrics`).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from exitwise.errors import ExitwiseError

from .wrk_lua import LUA, MARK, OPEN


def _lua_string(text: str) -> str:
    return json.dumps(text)  # a JSON string literal is a valid Lua string literal for ASCII


@dataclass(frozen=True)
class Latency:
    """Client-measured latencies: each distinct value (microseconds, ascending) and how many
    answers took it."""

    values_us: np.ndarray  # int64, ascending
    counts: np.ndarray  # int64, > 0

    @classmethod
    def from_flat(cls, flat: list[int]) -> Latency:
        """From wrk's ``[value, count, value, count, ...]`` in any order."""
        pairs = np.asarray(flat, dtype=np.int64).reshape(-1, 2)
        pairs = pairs[np.argsort(pairs[:, 0], kind="stable")]
        return cls(pairs[:, 0].copy(), pairs[:, 1].copy())

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def quantile_ms(self, q: float) -> float | None:
        """The smallest latency (ms) that at least ``q`` (0..1) of the answers took at most."""
        n = self.total
        if n == 0:
            return None
        rank = max(1, math.ceil(q * n - 1e-9))
        i = int(np.searchsorted(np.cumsum(self.counts), rank))
        return float(self.values_us[min(i, len(self.values_us) - 1)]) / 1000

    def count_within(self, ms: float) -> int:
        """Answers that took at most ``ms``."""
        return int(self.counts[self.values_us <= ms * 1000].sum())

    def share_within(self, ms: float) -> float | None:
        """The share (0..1) of answers that took at most ``ms``."""
        n = self.total
        return self.count_within(ms) / n if n else None


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    non_2xx: int
    socket_errors: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    # Open loop only: requests sent (arrivals), sends more than 1 ms after their arrival, the
    # mean and largest lag (ms), and the whole latency histogram.
    sent: int | None = None
    late_sends: int = 0
    lag_mean_ms: float = 0.0
    lag_max_ms: float = 0.0
    omission_samples: int = 0  # samples wrk added for coordinated omission, taken out again
    latency: Latency | None = field(default=None, compare=False)
    # Open loop only: the script's own latencies of the answers (2xx) and of the rest (503s,
    # ...), each answer paired with its send by its X-Request-Id; answers it could not pair.
    answered: Latency | None = field(default=None, compare=False)
    refused: Latency | None = field(default=None, compare=False)
    unpaired: int = 0

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def sent_per_s(self) -> float | None:
        """The offered rate achieved (open loop)."""
        if self.sent is None:
            return None
        return self.sent / self.seconds if self.seconds else 0.0


def find_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise ExitwiseError(
            "the C load client needs `wrk` (Debian/Ubuntu: apt-get install wrk); or use "
            "--client python"
        )
    return path


def write_bodies(folder: Path, bodies: list[bytes]) -> Path:
    """The request bodies as files, and a list of them for the Lua script."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, body in enumerate(bodies):
        p = folder / f"{i:05d}.bin"
        p.write_bytes(body)
        paths.append(str(p.resolve()))
    listing = folder / "bodies.txt"
    listing.write_text("\n".join(paths) + "\n")
    return listing


def open_connections(rate: float, horizon_s: float = 1.25, most: int = 2000) -> int:
    """Connections for an open loop at ``rate`` requests/s: enough for ``horizon_s`` of arrivals
    in flight at once (a free connection must be there when an arrival is due), and few enough
    that one waits about ``horizon_s`` for its next arrival, well inside the server's keep-alive
    timeout (uvicorn: 5 s). At most ``most`` (the server's listen backlog is 2048)."""
    return max(4, min(most, math.ceil(rate * horizon_s)))


def write_script(
    folder: Path,
    listing: Path,
    path: str,
    headers: dict[str, str],
    *,
    rate: float | None = None,
    connections: int = 1,
    seed: int = 0,
) -> Path:
    """A Lua script that POSTs the listed bodies to ``path`` in turn; ``rate`` (requests/s over
    ``connections``, which the run must use) makes it open loop."""
    lines = "\n".join(
        f"  wrk.headers[{_lua_string(k)}] = {_lua_string(v)}" for k, v in headers.items()
    )
    folder.mkdir(parents=True, exist_ok=True)
    opened = ""
    if rate is not None:
        if not rate > 0:
            raise ValueError(f"rate must be positive, not {rate}")
        opened = OPEN % {
            "rate": rate,
            "mean_ms": 1000.0 / rate,
            "connections": connections,
            "seed": seed,
        }
    text = LUA % {
        "list": _lua_string(str(listing)),
        "path": _lua_string(path),
        "headers": lines,
        "mark": MARK,
        "open": opened,
    }
    script = folder / "rotate.lua"
    script.write_text(text)
    return script


def run_wrk(
    url: str,
    script: Path,
    *,
    connections: int,
    duration_s: float,
    cpus: str | None = None,
    timeout_s: float = 10.0,
) -> WrkResult:
    """One run of ``wrk`` (one thread); ``cpus`` pins it with ``taskset``."""
    cmd = [
        find_wrk(),
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        f"--timeout={max(1, round(timeout_s))}s",
        "-s",
        str(script),
        url,
    ]
    _room_for(connections)
    if cpus is not None:
        taskset = shutil.which("taskset")
        if taskset is None:
            raise ExitwiseError("--client-cpus needs `taskset` (util-linux)")
        cmd = [taskset, "-c", cpus, *cmd]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=duration_s + timeout_s + 30, check=False
    )
    line = next((x for x in proc.stdout.splitlines() if x.startswith(MARK)), None)
    if proc.returncode != 0 or line is None:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ExitwiseError(f"wrk failed (exit {proc.returncode}): {tail[0]}")
    return parse_result(json.loads(line[len(MARK) :]))


def _room_for(connections: int) -> None:
    """Raise this process's open-file limit (wrk inherits it) to fit ``connections`` sockets,
    as far as the hard limit allows."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = connections + 64
    if soft == resource.RLIM_INFINITY or soft >= need:
        return
    resource.setrlimit(
        resource.RLIMIT_NOFILE, (need if hard == resource.RLIM_INFINITY else min(need, hard), hard)
    )


def parse_result(data: dict[str, Any]) -> WrkResult:
    """A :class:`WrkResult` from the script's JSON line."""
    sent = data.get("sent")
    histogram = data.get("histogram")
    return WrkResult(
        requests=int(data["requests"]),
        seconds=data["duration_us"] / 1e6,
        non_2xx=int(data["non_2xx"]),
        socket_errors=sum(int(data[k]) for k in ("connect", "read", "write", "timeout")),
        p50_ms=data["p50_us"] / 1000,
        p95_ms=data["p95_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        mean_ms=data["mean_us"] / 1000,
        sent=None if sent is None else int(sent),
        late_sends=int(data.get("late", 0)),
        lag_mean_ms=float(data.get("lag_sum_ms", 0.0)) / sent if sent else 0.0,
        lag_max_ms=float(data.get("lag_max_ms", 0.0)),
        omission_samples=int(data.get("removed", 0)),
        latency=None if histogram is None else Latency.from_flat(histogram),
        answered=None if "answered" not in data else Latency.from_flat(data["answered"]),
        refused=None if "refused" not in data else Latency.from_flat(data["refused"]),
        unpaired=int(data.get("unpaired", 0)),
    )
