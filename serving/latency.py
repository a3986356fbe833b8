"""How long each stage takes, per batch size, on the device being served: the latency model.

Deadlines and the admission forecast need it. Its shape comes from warm-up and its level from
now: :meth:`LatencyModel.measure` times every stage on the idle device for batch sizes 1, 2, 4,
... up to the largest batch (the floor), and every stage batch the engine runs moves that
stage's pace, a moving mean of how much slower than the floor its batches take now. A forecast
for ``n`` rows is the floor interpolated between the sizes around ``n``, times the pace.

One pace per stage, not a mean per size: under load the event loop shares the core with the
stage batches and makes all of them slower alike, and a mean per size is moved only by batches
of that size. After an overload (full batches, slowed down) the full-batch figures stayed twice
the floor while the load that followed ran only smaller batches, and the deadline rules, which
size batches to fit, kept them small for good. Written by the engine's worker, read by the
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
        # Seconds per batch by stage and bucket on the idle device (nan: not measured; a
        # bucket warm-up did not measure takes the first batch of its size, less the pace).
        self._floor = [[math.nan] * len(self.buckets) for _ in range(num_stages)]
        # The floor interpolated for every batch size 0 .. max_batch, by stage: the worker and
        # the admission forecast read it for every batch and request, so it is built only when
        # a bucket's floor changes.
        self._table = [[0.0] * (max_batch + 1) for _ in range(num_stages)]
        self.pace = [1.0] * num_stages
        # The fastest batch served by stage and bucket, for batches of exactly a bucket's size:
        # with warm-up's figure, the least a stage has been seen to take (:meth:`floor`).
        self._fastest = [[math.inf] * len(self.buckets) for _ in range(num_stages)]
        # Seconds per row of a full batch, by stage (0.0: not measured): the admission
        # forecast's unit of queued work, read for every request.
        self.per_row_full = [0.0] * num_stages

    def _bucket(self, rows: int) -> int:
        return min(bisect.bisect_left(self.buckets, rows), len(self.buckets) - 1)

    @torch.inference_mode()
    def measure(self, runner: StageRunner, input_shape: tuple[int, ...], repeats: int = 3) -> None:
        """Time every stage at every bucket's batch size (the best of ``repeats``). The repeats
        are passes over all the sizes, not back to back per size: a stall on a shared machine
        (another process taking the core for tens of milliseconds) then spoils one repeat of a
        size, not all of them."""
        best = [[math.inf] * runner.num_exits for _ in self.buckets]
        for _ in range(repeats):
            for n, times in zip(self.buckets, best, strict=True):
                state = runner.initial_state(torch.zeros((n, *input_shape)))
                for stage in range(runner.num_exits):
                    start = time.perf_counter()
                    state, logits = runner.run_stage(stage, state)
                    logits.cpu()  # the confidences' sync point, as served
                    times[stage] = min(times[stage], time.perf_counter() - start)
        for n, times in zip(self.buckets, best, strict=True):
            for stage, seconds in enumerate(times):
                self.set(stage, n, seconds)

    def set(self, stage: int, rows: int, seconds: float) -> None:
        """A warm-up measurement: the floor of its bucket."""
        self._floor[stage][self._bucket(rows)] = seconds
        self._rebuild(stage)

    def observe(self, stage: int, rows: int, seconds: float) -> None:
        """One stage batch of ``rows`` rows took ``seconds``."""
        if rows < 1 or not math.isfinite(seconds) or seconds < 0:
            return
        floor, i = self._floor[stage], self._bucket(rows)
        if rows == self.buckets[i] and seconds < self._fastest[stage][i]:
            self._fastest[stage][i] = seconds
        if math.isnan(floor[i]):
            floor[i] = seconds / self.pace[stage]
            self._rebuild(stage)
        elif (base := self.floor_estimate(stage, rows)) > 0:
            self.pace[stage] += self.alpha * (seconds / base - self.pace[stage])
        self.per_row_full[stage] = self.estimate(stage, self.buckets[-1]) / self.buckets[-1]

    def _rebuild(self, stage: int) -> None:
        """The stage's table from its measured buckets: linear between the sizes around each
        batch size, the nearest measured one below the smallest, the per-row cost of the
        largest beyond it (0.0 with nothing measured)."""
        known = [
            (b, s)
            for b, s in zip(self.buckets, self._floor[stage], strict=True)
            if not math.isnan(s)
        ]
        table = self._table[stage]
        for rows in range(1, len(table)):
            below = next(((b, s) for b, s in reversed(known) if b <= rows), None)
            above = next(((b, s) for b, s in known if b >= rows), None)
            if below is None:
                table[rows] = 0.0 if above is None else above[1]
            elif above is None:
                table[rows] = below[1] * rows / below[0]
            else:
                (b0, s0), (b1, s1) = below, above
                table[rows] = s0 if b1 == b0 else s0 + (s1 - s0) * (rows - b0) / (b1 - b0)
        table[0] = table[1]
        self.per_row_full[stage] = self.estimate(stage, self.buckets[-1]) / self.buckets[-1]

    def floor(self, stage: int, rows: int) -> float:
        """The least ``rows`` rows at ``stage`` have taken: warm-up's figure, or a batch of that
        bucket's size served faster since (0.0: not measured). On a machine shared with other
        work, a stall during warm-up once spoiled both back-to-back timings of batch 1 (59 ms
        for a stage of a fifth of a millisecond), and a 20 ms deadline was refused up front as
        shorter than exit 1. The forecasts keep warm-up's shape: a fastest batch is a record
        low of thousands, below what a batch takes, and lowering one bucket's floor by it skews
        the one pace all sizes share."""
        i = self._bucket(rows)
        warm, fastest = self._floor[stage][i], self._fastest[stage][i]
        value = fastest if math.isnan(warm) else min(warm, fastest)
        return value if math.isfinite(value) else 0.0

    def floor_estimate(self, stage: int, rows: int) -> float:
        """Seconds for a batch of ``rows`` at ``stage`` on the idle device (0.0 with nothing
        measured); past the largest batch, the largest batch's cost per row."""
        table = self._table[stage]
        if rows < len(table):
            return table[rows]
        return table[-1] * rows / (len(table) - 1)

    def estimate(self, stage: int, rows: int) -> float:
        """Forecast seconds for a batch of ``rows`` at ``stage`` now: the floor times the pace."""
        return self.floor_estimate(stage, rows) * self.pace[stage]

    def describe(self) -> list[dict[str, Any]]:
        """Per stage (1-based): the pace, and milliseconds per batch now for each measured size."""
        return [
            {
                "stage": k + 1,
                "pace": round(self.pace[k], 3),
                "ms_per_batch": {
                    str(b): round(s * self.pace[k] * 1000, 4)
                    for b, s in zip(self.buckets, row, strict=True)
                    if not math.isnan(s)
                },
            }
            for k, row in enumerate(self._floor)
        ]
