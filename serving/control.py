"""Closed-loop budget control: keep an operating point's realised MFLOPs per image on target.

Calibration promises an operating point's expected cost E on the held-out distribution. When
traffic drifts (noisier, blurrier, dimmer images), fewer images are confident early and the
realised cost rises. A :class:`BudgetController` watches the cost of the images served with its
point and moves the thresholds along calibration's control table (thresholds solved on the
held-out split for budgets about 1 % apart, :class:`exitwise.bundle.ControlPoint`): it serves
the thresholds calibrated for a held-out budget ``b`` that realises E on today's traffic.

The loop, per operating point:

- It accumulates the cost of the images served since its last move (count, sum, sum of
  squares). At checkpoints of 250, 500, 1000, ... images, up to ``window``, it compares their
  mean m with E. It moves only when the difference is both larger than ``tolerance`` (relative)
  and significant: more than ``z`` standard errors of the mean at rest (3.5), ``z_moved`` once
  it has moved (2.5). A sample of a few hundred images is noisy (the per-image cost varies by a
  factor of ten between exits, and is skewed), and the test is repeated at every checkpoint, so
  the bar at rest is high: no move in 540,000 images drawn from a synthetic held-out split, nor
  in 180,000 clean test images of the demo model (simulated); the drifts it is for exceed it
  within a few hundred images. Once traffic has been seen to differ, the lower bar lets it
  finish the correction sooner. A stream that looks
  like the held-out split therefore leaves it where it is: at ``b = E`` it serves exactly the
  calibrated thresholds, image for image what calibration simulated. After ``window`` images
  without a significant difference the count starts again.
- A move is multiplicative: ``b <- b * (E / m) ** gain``, at most a factor ``max_step`` either
  way, and bounded to ``[b_min, b_max]`` (never cheaper than the cheapest point calibration
  evaluated, never dearer than the last exit). Then the count starts again, so every decision
  is made on images served with the current thresholds only.

Why it converges without oscillating: write the realised cost as m = f(b), increasing in b,
and its local elasticity ε = d log f / d log b (about 1: a held-out budget x % higher realises
about x % more on shifted traffic too). A move changes the log error e = log(m / E) into
(1 - gain * ε) e. With ``gain`` 0.7 and ε up to about 1.4 the error shrinks without changing
sign; it keeps its sign and shrinks as long as gain * ε < 1, and still shrinks, alternating,
up to gain * ε < 2. The step bound caps the first moves after a large shift; the significance
test keeps noise from moving it; the deadband ends the moves.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CHECKPOINTS = (250, 500, 1000, 2000, 4000, 8000, 16000, 32000)


@dataclass(frozen=True)
class ControlSettings:
    window: int = 4000  # images: the longest run of images a decision looks at
    tolerance: float = 0.02  # relative deadband around the target
    gain: float = 0.85
    z: float = 3.5  # standard errors a difference must exceed to count, at rest
    z_moved: float = 2.5  # the same once it has moved: the traffic is known to differ
    max_step: float = 1.5  # a move changes b by at most this factor

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"the window must hold at least one image, not {self.window}")
        if not self.tolerance >= 0 or not math.isfinite(self.tolerance):
            raise ValueError(f"the tolerance must be 0 or more, not {self.tolerance}")
        if not 0 < self.gain <= 1:
            raise ValueError(f"the gain must be in (0, 1], not {self.gain}")
        if not (self.z > 0 and self.z_moved > 0):
            raise ValueError(f"z must be positive, not {self.z} / {self.z_moved}")
        if not self.max_step > 1:
            raise ValueError(f"max_step must be above 1, not {self.max_step}")


class ControlTable:
    """Calibration's control table: rows of (held-out cost, thresholds), cheapest first."""

    def __init__(self, mflops: Sequence[float], thresholds: Sequence[np.ndarray]) -> None:
        if not mflops or len(mflops) != len(thresholds):
            raise ValueError("one threshold vector per cost, at least one")
        self.mflops = np.asarray(mflops, dtype=np.float64)
        if np.any(np.diff(self.mflops) < 0):
            raise ValueError("the table's costs must be ascending")
        self.thresholds = [np.asarray(t, dtype=np.float64) for t in thresholds]
        for t in self.thresholds:
            t.setflags(write=False)

    def at(self, budget: float) -> tuple[np.ndarray, float]:
        """The row with the largest held-out cost not above ``budget`` (else the cheapest)."""
        i = max(0, int(np.searchsorted(self.mflops, budget, side="right")) - 1)
        return self.thresholds[i], float(self.mflops[i])


@dataclass(frozen=True)
class Move:
    """A decision: the new held-out budget and what it was made on."""

    budget: float
    previous: float
    realised: float  # the mean cost of the images it looked at
    images: int


class BudgetController:
    """One operating point's loop (see the module docstring). Thread-safe."""

    def __init__(
        self,
        target: float,
        bounds: tuple[float, float],
        settings: ControlSettings | None = None,
        sliding: int | None = None,
    ) -> None:
        lo, hi = bounds
        if not 0 < lo <= hi:
            raise ValueError(f"bad bounds {bounds}")
        self.target = float(target)
        self.lo, self.hi = float(lo), float(hi)
        self.settings = settings or ControlSettings()
        self.budget = self.target  # held-out budget whose thresholds are served
        self.moves = 0
        self._lock = threading.Lock()
        self._n = 0
        self._sum = 0.0
        self._sumsq = 0.0
        self._checkpoints = [c for c in CHECKPOINTS if c < self.settings.window]
        self._checkpoints.append(self.settings.window)
        self._next = 0
        # The last ``sliding`` images' costs, for the realised-cost gauge (whatever the moves).
        self._recent: deque[float] = deque(maxlen=sliding or self.settings.window)
        self._recent_sum = 0.0

    @property
    def moved(self) -> bool:
        return self.budget != self.target

    def realised(self) -> float | None:
        """Mean cost of the last ``sliding`` images served with this point (None: none yet)."""
        with self._lock:
            return self._recent_sum / len(self._recent) if self._recent else None

    def record(self, costs: Sequence[float]) -> None:
        """Only keep the sliding mean (what ``realised`` reports), as when control is off."""
        with self._lock:
            self._slide(costs)

    def _slide(self, costs: Sequence[float]) -> None:
        for c in costs:
            if len(self._recent) == self._recent.maxlen:
                self._recent_sum -= self._recent[0]
            self._recent.append(c)
            self._recent_sum += c

    def observe(self, costs: Sequence[float]) -> Move | None:
        """Record the costs (MFLOPs) of images just served; a :class:`Move` when it moved."""
        with self._lock:
            self._slide(costs)
            for c in costs:
                self._n += 1
                self._sum += c
                self._sumsq += c * c
            if self._n < self._checkpoints[self._next]:
                return None
            while self._next < len(self._checkpoints) and self._n >= self._checkpoints[self._next]:
                self._next += 1
            move = self._decide()
            if move is not None or self._next >= len(self._checkpoints):
                self._restart()
            if move is not None:
                self.budget = move.budget
                self.moves += 1
            return move

    def _decide(self) -> Move | None:
        s = self.settings
        n, target = self._n, self.target
        mean = self._sum / n
        var = max(0.0, self._sumsq / n - mean * mean) * n / max(1, n - 1)
        stderr = math.sqrt(var / n)
        diff = mean - target
        z = s.z_moved if self.moved else s.z
        if abs(diff) <= s.tolerance * target or abs(diff) <= z * stderr or mean <= 0:
            return None
        factor = (target / mean) ** s.gain
        factor = min(max(factor, 1 / s.max_step), s.max_step)
        budget = min(max(self.budget * factor, self.lo), self.hi)
        if budget == self.budget:
            return None  # at a bound already
        return Move(budget=budget, previous=self.budget, realised=mean, images=n)

    def _restart(self) -> None:
        self._n, self._sum, self._sumsq, self._next = 0, 0.0, 0.0, 0
