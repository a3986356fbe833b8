"""How long each stage takes, per batch size, on the device being served: the latency model.

Deadlines and the admission forecast need it. :meth:`LatencyModel.measure` times every stage
at warm-up for batch sizes 1, 2, 4, ... up to the largest batch; the engine keeps the figures
current with every stage batch it runs (an exponentially weighted mean per stage and size
bucket; a bucket holds the batches of more than half its size up to it). A forecast for ``n``
rows interpolates between the buckets around ``n``. Written by the engine's worker, read by the
event loop: plain floats in lists, no lock.
"""

from __future__ import annotations

import bisect
import math
import time
from typing import Any

import torch

from exitwise.runtime import StageRunner


def buckets_up_to(max_batch: int) -> list[int]:
    """1, 2, 4, ... and ``max_batch`` itself."""
    out = [1]
    while out[-1] * 2 < max_batch:
        out.append(out[-1] * 2)
    if out[-1] != max_batch:
        out.append(max_batch)
    return out


class LatencyModel:
    def __init__(self, num_stages: int, max_batch: int, alpha: float = 0.1) -> None:
        if num_stages < 1 or max_batch < 1:
            raise ValueError("need at least one stage and a batch size of at least one")
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], not {alpha}")
        self.buckets = buckets_up_to(max_batch)
        self.alpha = alpha
        # Seconds per batch by stage and bucket (nan: not measured), and what warm-up measured
        # on the idle device: what a stage takes at the least.
        self._seconds = [[math.nan] * len(self.buckets) for _ in range(num_stages)]
        self._floor = [[math.nan] * len(self.buckets) for _ in range(num_stages)]
        # Seconds per row of a full batch, by stage (0.0: not measured): the admission
        # forecast's unit of queued work, read for every request.
        self.per_row_full = [0.0] * num_stages

    def _bucket(self, rows: int) -> int:
        return min(bisect.bisect_left(self.buckets, rows), len(self.buckets) - 1)

    @torch.inference_mode()
    def measure(self, runner: StageRunner, input_shape: tuple[int, ...], repeats: int = 2) -> None:
        """Time every stage at every bucket's batch size (the best of ``repeats``)."""
        for n in self.buckets:
            best = [math.inf] * runner.num_exits
            for _ in range(repeats):
                state = runner.initial_state(torch.zeros((n, *input_shape)))
                for stage in range(runner.num_exits):
                    start = time.perf_counter()
                    state, logits = runner.run_stage(stage, state)
                    logits.cpu()  # the confidences' sync point, as served
                    best[stage] = min(best[stage], time.perf_counter() - start)
            for stage, seconds in enumerate(best):
                self.set(stage, n, seconds)

    def observe(self, stage: int, rows: int, seconds: float) -> None:
        """One stage batch of ``rows`` rows took ``seconds``."""
        if rows < 1 or not math.isfinite(seconds) or seconds < 0:
            return
        row, i = self._seconds[stage], self._bucket(rows)
        row[i] = seconds if math.isnan(row[i]) else row[i] + self.alpha * (seconds - row[i])
        if i == len(self.buckets) - 1:
            self.per_row_full[stage] = row[i] / self.buckets[-1]

    def set(self, stage: int, rows: int, seconds: float) -> None:
        """A warm-up measurement: replaces what the bucket held, and is its floor from now on."""
        i = self._bucket(rows)
        self._seconds[stage][i] = self._floor[stage][i] = seconds
        self.per_row_full[stage] = self.estimate(stage, self.buckets[-1]) / self.buckets[-1]

    def floor(self, stage: int, rows: int) -> float:
        """What warm-up measured for ``rows`` rows at ``stage`` (0.0: not measured)."""
        value = self._floor[stage][self._bucket(rows)]
        return 0.0 if math.isnan(value) else value

    def estimate(self, stage: int, rows: int) -> float:
        """Forecast seconds for a batch of ``rows`` at ``stage`` (0.0 with nothing measured)."""
        rows = max(1, rows)
        below = above = None
        for b, s in zip(self.buckets, self._seconds[stage], strict=True):
            if math.isnan(s):
                continue
            if b <= rows:
                below = (b, s)
            if b >= rows and above is None:
                above = (b, s)
        if below is None:
            return 0.0 if above is None else above[1]
        if above is None:  # beyond the largest measured size: per-row cost of the largest
            return below[1] * rows / below[0]
        (b0, s0), (b1, s1) = below, above
        return s0 if b1 == b0 else s0 + (s1 - s0) * (rows - b0) / (b1 - b0)

    def describe(self) -> list[dict[str, Any]]:
        """Per stage (1-based): milliseconds per batch for each measured size."""
        return [
            {
                "stage": k + 1,
                "ms_per_batch": {
                    str(b): round(s * 1000, 4)
                    for b, s in zip(self.buckets, row, strict=True)
                    if not math.isnan(s)
                },
            }
            for k, row in enumerate(self._seconds)
        ]
