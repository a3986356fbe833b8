"""How long each stage takes, per batch size, on the device being served: the latency model.

Deadlines (``deadline_ms``) need a forecast: will the next stage finish in time? The engine
measures every stage at warm-up for batch sizes 1, 2, 4, ... up to its largest batch, and then
keeps the figures current with every stage batch it runs (an exponentially weighted mean per
stage and size bucket; a bucket holds the batches of more than half its size up to it). A
forecast for ``n`` rows interpolates between the buckets around ``n``.
"""

from __future__ import annotations

import math
import threading
from typing import Any


def buckets_up_to(max_batch: int) -> list[int]:
    """1, 2, 4, ... and ``max_batch`` itself."""
    out = [1]
    while out[-1] * 2 < max_batch:
        out.append(out[-1] * 2)
    if out[-1] != max_batch:
        out.append(max_batch)
    return out


class LatencyModel:
    """Seconds per stage batch, by stage and batch size bucket (thread-safe)."""

    def __init__(self, num_stages: int, max_batch: int, alpha: float = 0.1) -> None:
        if num_stages < 1 or max_batch < 1:
            raise ValueError("need at least one stage and a batch size of at least one")
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], not {alpha}")
        self.buckets = buckets_up_to(max_batch)
        self.alpha = alpha
        self._seconds: list[list[float | None]] = [
            [None] * len(self.buckets) for _ in range(num_stages)
        ]
        # What warm-up measured, on the idle device: what a stage takes at the least.
        self._floor: list[list[float | None]] = [
            [None] * len(self.buckets) for _ in range(num_stages)
        ]
        self._lock = threading.Lock()

    def _bucket(self, rows: int) -> int:
        for i, b in enumerate(self.buckets):
            if rows <= b:
                return i
        return len(self.buckets) - 1

    def observe(self, stage: int, rows: int, seconds: float) -> None:
        """One stage batch of ``rows`` rows took ``seconds``."""
        if rows < 1 or not math.isfinite(seconds) or seconds < 0:
            return
        i = self._bucket(rows)
        with self._lock:
            old = self._seconds[stage][i]
            self._seconds[stage][i] = seconds if old is None else old + self.alpha * (seconds - old)

    def set(self, stage: int, rows: int, seconds: float) -> None:
        """A warm-up measurement: replaces what the bucket held, and is its floor from now on."""
        with self._lock:
            self._seconds[stage][self._bucket(rows)] = seconds
            self._floor[stage][self._bucket(rows)] = seconds

    def floor(self, stage: int, rows: int) -> float:
        """What warm-up measured for ``rows`` rows at ``stage`` on the idle device (0.0: not
        measured): a batch cannot be expected to take less, whatever the load."""
        with self._lock:
            value = self._floor[stage][self._bucket(rows)]
        return 0.0 if value is None else value

    def estimate(self, stage: int, rows: int) -> float:
        """Forecast seconds for a batch of ``rows`` at ``stage`` (0.0 with nothing measured)."""
        with self._lock:
            known = [
                (b, s)
                for b, s in zip(self.buckets, self._seconds[stage], strict=True)
                if s is not None
            ]
        if not known:
            return 0.0
        rows = max(1, rows)
        below = [(b, s) for b, s in known if b <= rows]
        above = [(b, s) for b, s in known if b >= rows]
        if not below:
            return above[0][1]
        if not above:  # beyond the largest measured size: per-row cost of the largest
            b, s = below[-1]
            return s * rows / b
        (b0, s0), (b1, s1) = below[-1], above[0]
        if b1 == b0:
            return s0
        return s0 + (s1 - s0) * (rows - b0) / (b1 - b0)

    def describe(self) -> list[dict[str, Any]]:
        """Per stage (1-based): milliseconds per batch for each measured size."""
        with self._lock:
            table = [list(row) for row in self._seconds]
        return [
            {
                "stage": k + 1,
                "ms_per_batch": {
                    str(b): round(s * 1000, 4)
                    for b, s in zip(self.buckets, row, strict=True)
                    if s is not None
                },
            }
            for k, row in enumerate(table)
        ]
