"""Learning-rate schedules as pure functions of the iteration (one iteration = one loader batch).

The lr is set once per loader batch and shared by its two halves, as in the seed. Being a pure
function of the iteration, a schedule needs no state beyond the iteration count to resume.

- ``cosine``: ``0.5 * lr0 * (1 + cos(pi * t / T))`` per iteration (the seed's only schedule);
- ``multistep``: ``lr0 * gamma^(number of milestones passed)``, milestones in epochs (the seed
  parses ``--lr-type multistep`` and ignores it; here it is honoured);
- ``constant``.

An optional linear warm-up runs from ``lr0 * warmup_start`` to ``lr0`` over ``warmup_epochs``,
after which the schedule runs over the remaining iterations. The meta lr of the weight-prediction
network always follows the cosine over all iterations, as in the seed.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

from .config import OptimSpec


@dataclass(frozen=True)
class Schedule:
    spec: OptimSpec
    iters_per_epoch: int
    epochs: int

    @property
    def total(self) -> int:
        return self.iters_per_epoch * self.epochs

    @property
    def warmup(self) -> int:
        return min(self.total, round(self.spec.warmup_epochs * self.iters_per_epoch))

    def lr(self, it: int) -> float:
        """The backbone lr at iteration ``it`` (0-based, counted over the whole run)."""
        spec = self.spec
        if it < self.warmup:
            frac = it / self.warmup
            return spec.lr * (spec.warmup_start + (1.0 - spec.warmup_start) * frac)
        if spec.schedule == "constant":
            return spec.lr
        if spec.schedule == "multistep":
            epoch = it / self.iters_per_epoch
            return spec.lr * spec.gamma ** bisect.bisect_right(spec.milestones, epoch)
        span = max(1, self.total - self.warmup)
        return 0.5 * spec.lr * (1.0 + math.cos(math.pi * (it - self.warmup) / span))


def cosine(base: float, it: int, total: int) -> float:
    """``0.5 * base * (1 + cos(pi * it / total))``: the meta lr of the seed."""
    return 0.5 * base * (1.0 + math.cos(math.pi * it / max(1, total)))
