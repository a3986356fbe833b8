"""Calibration's control table, and what a row of it would cost on the traffic seen lately.

The server cannot solve budgets (it has neither the held-out confidences nor, by the packages'
dependency rule, the solver), so calibration writes a **control table**: thresholds solved on the
held-out split for budgets about 1 % apart (``calibration.json``'s ``control``). Budget control
moves an operating point along it.

:func:`estimate` answers "what would these thresholds cost on the images served lately?" from
what the engine recorded of each image: its confidence at every exit it passed. For thresholds
that stop an image at or before the exit it reached, its exit is known exactly (the exit rule on
its recorded confidences). An image that would go on past the exit it reached is *censored*:
its cost is only known to be higher. So are images a deadline stopped early. The estimate is the
Kaplan-Meier one: per exit, the share of the images known to reach it that stop there, chained.
With nothing censored it is exactly the mean cost of those images under the thresholds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


class ControlTable:
    """Rows of (held-out cost, thresholds), cheapest first."""

    def __init__(self, mflops: Sequence[float], thresholds: Sequence[np.ndarray]) -> None:
        if not len(mflops) or len(mflops) != len(thresholds):
            raise ValueError("one threshold vector per cost, at least one")
        self.mflops = np.asarray(mflops, dtype=np.float64)
        if np.any(np.diff(self.mflops) < 0):
            raise ValueError("the table's costs must be ascending")
        self.thresholds = np.stack([np.asarray(t, dtype=np.float64) for t in thresholds])
        self.thresholds.setflags(write=False)

    def __len__(self) -> int:
        return len(self.mflops)

    def row_at(self, budget: float) -> int:
        """The row with the largest held-out cost not above ``budget`` (else the cheapest)."""
        return max(0, int(np.searchsorted(self.mflops, budget, side="right")) - 1)

    def at(self, budget: float) -> tuple[np.ndarray, float]:
        i = self.row_at(budget)
        return self.thresholds[i], float(self.mflops[i])


@dataclass(frozen=True)
class Traffic:
    """Recent images as the engine recorded them (one row each)."""

    confidence: np.ndarray  # float64 [n, K]: at each exit passed; nan beyond the exit reached
    reached: np.ndarray  # int64 [n]: the last exit (0-based) the image was judged at
    # bool [n]: a deadline or an overload stopped it there, not its thresholds (its cost is not
    # what its thresholds would have spent). :func:`estimate` needs no flag: an image whose recorded
    # confidences do not stop it is censored whatever stopped it.
    censored: np.ndarray

    def __len__(self) -> int:
        return len(self.reached)


@dataclass(frozen=True)
class Estimate:
    mflops: float  # expected cost per image
    stderr: float  # its standard error (as if uncensored)
    hazards: np.ndarray  # float64 [K]: share of the images reaching each exit that stop there


def estimate(
    traffic: Traffic,
    thresholds: np.ndarray,
    costs: np.ndarray,
    prior: np.ndarray | None = None,
    weight: float = 5.0,
) -> Estimate:
    """What ``thresholds`` would cost per image on ``traffic`` (see the module docstring).

    ``prior``: hazards to fall back on at exits that few images are known to reach (counted
    as ``weight`` images): with every image stopped before an exit, the traffic says nothing
    about it."""
    n, k = traffic.confidence.shape
    exits = np.arange(k)
    seen = exits[None, :] <= traffic.reached[:, None]
    stops = seen & (traffic.confidence >= thresholds[None, :])  # nan never stops
    stops[:, -1] |= seen[:, -1]  # the last exit takes every image that reaches it
    hit = stops.any(axis=1)
    first = np.where(hit, stops.argmax(axis=1), k)  # k: not within what was seen
    # At risk at exit j: known to reach it (an exact exit at or after j, or seen up to j).
    last = np.where(hit, first, traffic.reached)
    at_risk = np.bincount(last, minlength=k + 1)[:k][::-1].cumsum()[::-1].astype(np.float64)
    events = np.bincount(first[hit], minlength=k)[:k].astype(np.float64)
    if prior is None:
        hazards = np.divide(events, at_risk, out=np.zeros(k), where=at_risk > 0)
    else:
        hazards = (events + weight * prior) / (at_risk + weight)
    hazards[-1] = 1.0
    survive = np.concatenate([[1.0], np.cumprod(1.0 - hazards)[:-1]])
    share = survive * hazards
    mean = float(share @ costs)
    spread = math.sqrt(max(0.0, float(share @ costs**2) - mean * mean))
    return Estimate(mean, spread / math.sqrt(max(1, n)), hazards)


def hazards_of(fractions: Sequence[float] | np.ndarray) -> np.ndarray:
    """Per exit, the share of the images reaching it that stop there, from exit fractions."""
    f = np.asarray(fractions, dtype=np.float64)
    reaching = 1.0 - np.concatenate([[0.0], np.cumsum(f)[:-1]])
    out = np.divide(f, reaching, out=np.ones_like(f), where=reaching > 1e-12)
    out[-1] = 1.0
    return np.clip(out, 0.0, 1.0)


def cost_after(hazards: np.ndarray, costs: np.ndarray) -> np.ndarray:
    """``[K]``: expected cost of an image known to have passed exits ``0..j`` without stopping
    (the last entry is unused): what a censored image is counted as."""
    k = len(costs)
    out = np.empty(k)
    expected = costs[-1]
    for j in range(k - 2, -1, -1):
        out[j] = expected
        expected = hazards[j] * costs[j] + (1.0 - hazards[j]) * expected
    out[-1] = costs[-1]
    return out
