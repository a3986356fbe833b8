"""The live summary behind the playground page: the last minute of classifications, in memory.

Prometheus histograms answer "p99 over five minutes, across replicas" for a dashboard; a page
that polls one server wants something simpler and exact: requests/s and p50/p99 per operating
point over the last 60 s, the exit mix and the realised MFLOPs per image. :class:`LiveStats`
keeps one small record per request and computes all of it only when asked.

``record`` is on the hot path of every classification, so it does the least possible work: read
the clock, append one tuple to a bounded deque under an uncontended lock (well under a
microsecond; the sequences are kept as given, not copied or summed). ``summary`` copies the deque
under the lock and does the arithmetic outside it, so a page polling every few seconds never
holds up a request for longer than that copy.

Percentiles use the nearest-rank definition (the smallest recorded value with at least p % of the
values at or below it): for a page, a value some request really took is clearer than an
interpolation between two of them.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

WINDOW_S = 60.0
BUCKET_S = 5.0
# At most this many requests are kept: a minute at over 800 requests/s. Past it the oldest go
# first, and the summary says which span it really covers (``covered_s``).
MAX_EVENTS = 50_000


# (clock() when recorded, operating point, server seconds, exits (1-based), MFLOPs per image).
# A plain tuple: building it costs a twentieth of a NamedTuple or a frozen dataclass.
_Event = tuple[float, str, float, Sequence[int], Sequence[float]]


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an ascending, non-empty sequence (``p`` in 0..100)."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    rank = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


class LiveStats:
    """Thread-safe record of recent classifications; see the module docstring."""

    def __init__(
        self,
        num_exits: int,
        *,
        window_s: float = WINDOW_S,
        bucket_s: float = BUCKET_S,
        max_events: int = MAX_EVENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if num_exits < 1:
            raise ValueError(f"num_exits must be at least 1, not {num_exits}")
        if not 0 < bucket_s <= window_s:
            raise ValueError("need 0 < bucket_s <= window_s")
        self.num_exits = num_exits
        self.window_s = window_s
        self.bucket_s = bucket_s
        self._clock = clock
        self._lock = threading.Lock()
        self._events: deque[_Event] = deque(maxlen=max_events)
        self._started = clock()

    def record(
        self,
        operating_point: str,
        seconds: float,
        exits: Sequence[int],
        mflops: Sequence[float],
    ) -> None:
        """One successful request: its operating point's name, its server time in seconds, and
        per image the 1-based exit and the MFLOPs spent. Keeps references to ``exits`` and
        ``mflops``: pass sequences that are not changed afterwards."""
        event = (self._clock(), operating_point, seconds, exits, mflops)
        with self._lock:
            self._events.append(event)

    def _recent(self, now: float) -> list[_Event]:
        """The events of the window; older ones are dropped for good (memory stays small while
        the server is idle)."""
        horizon = now - self.window_s
        with self._lock:
            events = self._events
            while events and events[0][0] < horizon:
                events.popleft()
            return list(events)

    def summary(self) -> dict[str, Any]:
        """JSON-ready figures over the last ``window_s`` seconds (see docs/serving.md)."""
        now = self._clock()
        events = self._recent(now)
        # The span the figures cover: the whole window, unless the server started less than a
        # window ago or the deque overflowed (then from its oldest event).
        covered = min(self.window_s, now - self._started)
        if events and len(events) == self._events.maxlen:
            covered = min(covered, now - events[0][0])
        covered = max(covered, 1e-9)

        points: dict[str, list[_Event]] = {}
        for e in events:
            points.setdefault(e[1], []).append(e)
        return {
            "window_s": self.window_s,
            "covered_s": covered,
            "num_exits": self.num_exits,
            **_figures(events, self.num_exits, covered),
            "operating_points": [
                {"name": name, **_figures(evs, self.num_exits, covered)}
                for name, evs in sorted(points.items(), key=lambda kv: -len(kv[1]))
            ],
            "timeline": self._timeline(events, now),
        }

    def _timeline(self, events: list[_Event], now: float) -> dict[str, Any]:
        """Requests/s and realised MFLOPs per image in ``bucket_s`` slices, oldest first (the
        newest slice ends now); a slice without requests has ``None`` MFLOPs."""
        n = max(1, math.ceil(self.window_s / self.bucket_s))
        requests = [0] * n
        images = [0] * n
        spent = [0.0] * n
        for at, _, _, _, mflops in events:
            i = n - 1 - min(n - 1, int((now - at) / self.bucket_s))
            requests[i] += 1
            images[i] += len(mflops)
            spent[i] += sum(mflops)
        return {
            "bucket_s": self.bucket_s,
            "requests_per_s": [r / self.bucket_s for r in requests],
            "mflops_per_image": [s / k if k else None for s, k in zip(spent, images, strict=True)],
        }


def _figures(events: list[_Event], num_exits: int, covered: float) -> dict[str, Any]:
    """Counts, rates, latency percentiles, exit mix and realised MFLOPs of ``events``."""
    exit_counts = [0] * num_exits
    total_mflops = 0.0
    images = 0
    for _, _, _, exits, mflops in events:
        for k in exits:
            if 1 <= k <= num_exits:
                exit_counts[k - 1] += 1
        total_mflops += sum(mflops)
        images += len(mflops)
    latencies = sorted(e[2] * 1000.0 for e in events)
    return {
        "requests": len(events),
        "images": images,
        "requests_per_s": len(events) / covered,
        "images_per_s": images / covered,
        "p50_ms": percentile(latencies, 50) if latencies else None,
        "p99_ms": percentile(latencies, 99) if latencies else None,
        "mflops_per_image": total_mflops / images if images else None,
        "exit_counts": exit_counts,
    }
