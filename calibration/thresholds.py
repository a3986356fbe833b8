"""The threshold rule: from a target exit distribution to one confidence threshold per exit.

For q > 0 the target share of images leaving at exit k (1-based) is p_k = q^k / sum_j q^j. On
``n`` held-out images, walking the exits in order over the images not yet exited, exit k < K
takes the floor(n p_k) most confident of them by their exit-k confidence; images tied with the
last one taken leave too; if that count is zero, or fewer images remain, nobody leaves at k. The
last exit takes the rest. This is the seed's rule (MSDNet/L2W ``dynamic_eval_find_threshold``).

Threshold *values* differ from the seed on purpose. The seed sets T_k to the confidence of the
last image taken. We place T_k halfway between that confidence and the highest exit-k confidence
among the images that stay (or at the former when every remaining image leaves). Both give the
same partition of the held-out split; ours leaves the widest margin on both sides, so that the
last-bit differences in logits between batch sizes (oneDNN/MKL pick other kernels) cannot move a
held-out image across a threshold when the server runs the same images.

Everything here is pure numpy on arrays: no IO, no device, no per-image Python loop.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Counts are floor(n p_k + _FLOOR_SLACK): n p_k that is an integer in exact arithmetic must not
# be floored one lower because p_k was rounded down in its last bit.
_FLOOR_SLACK = 1e-6


def exit_distribution(q: float, num_exits: int) -> np.ndarray:
    """p_k = q^k / sum_j q^j for k = 1..K, float64, computed in log space (no overflow)."""
    if not (math.isfinite(q) and q > 0):
        raise ValueError(f"q must be a positive finite number, not {q!r}")
    if num_exits < 1:
        raise ValueError("at least one exit")
    logw = np.arange(1, num_exits + 1, dtype=np.float64) * math.log(q)
    w = np.exp(logw - logw.max())
    p: np.ndarray = w / w.sum()
    return p


def exit_quota(q: float, n: int, num_exits: int) -> np.ndarray:
    """floor(n p_k) for the first K-1 exits (int64 ``[K-1]``); the last exit takes the rest."""
    p = exit_distribution(q, num_exits)[:-1]
    quota: np.ndarray = np.floor(n * p + _FLOOR_SLACK).astype(np.int64)
    return quota


@dataclass(frozen=True)
class Walk:
    """The result of the rule for one quota vector on one set of confidences."""

    thresholds: np.ndarray  # float64 [K]: +inf where nobody exits, -inf at the last exit
    counts: np.ndarray  # int64 [K]: images leaving at each exit
    boundaries: np.ndarray  # float64 [K]: confidence of the last image taken (the seed's T_k)

    def cost(self, exit_mflops: np.ndarray) -> float:
        """Mean cumulative MFLOPs per image."""
        return float(self.counts @ exit_mflops) / float(self.counts.sum())


def midpoint(low: float, high: float) -> float:
    """A value in (low, high], as central as float64 allows."""
    mid = low + (high - low) / 2.0
    return mid if low < mid <= high else high


class ThresholdRule:
    """The rule on one ``[N, K]`` confidence matrix, with per-exit sort orders computed once.

    Each :meth:`walk` costs O(N K) (a gather, a ``flatnonzero`` and a few comparisons per exit),
    so the solver can try many quota vectors.
    """

    def __init__(self, confidences: np.ndarray) -> None:
        conf = np.asarray(confidences, dtype=np.float64)
        if conf.ndim != 2 or conf.shape[0] < 1 or conf.shape[1] < 1:
            raise ValueError("confidences must be a non-empty [N, K] array")
        if not np.isfinite(conf).all():
            raise ValueError("confidences must be finite")
        self.n, self.num_exits = conf.shape
        # [K, N] so that one exit's column is contiguous; descending confidence, stable on ties.
        self._order = np.argsort(-conf.T, axis=1, kind="stable")
        self._sorted = np.take_along_axis(conf.T, self._order, axis=1)
        self._negated = -self._sorted  # ascending, for searchsorted

    def walk(self, quota: Sequence[int] | np.ndarray) -> Walk:
        """Thresholds and exit counts for ``quota`` (images wanted at exits 1..K-1)."""
        k_all = self.num_exits
        quota = np.asarray(quota, dtype=np.int64)
        if quota.shape != (k_all - 1,):
            raise ValueError(f"one quota per exit but the last ({k_all - 1}), got {quota.shape}")
        thresholds = np.full(k_all, math.inf)
        thresholds[-1] = -math.inf
        boundaries = np.full(k_all, math.inf)
        boundaries[-1] = -math.inf
        counts = np.zeros(k_all, dtype=np.int64)
        remaining = np.ones(self.n, dtype=bool)
        left = self.n
        for k in range(k_all - 1):
            want = int(quota[k])
            if want <= 0 or want > left:
                continue  # the seed leaves T_k at "never": nobody exits here
            # Positions, in exit k's descending order, of the images still running.
            pos = np.arange(self.n) if left == self.n else np.flatnonzero(remaining[self._order[k]])
            boundary = self._sorted[k, pos[want - 1]]
            # Every remaining image tied with the boundary leaves too: those before the first
            # position (over all images) whose confidence is below the boundary.
            first_below = int(np.searchsorted(self._negated[k], -boundary, side="right"))
            taken = int(np.searchsorted(pos, first_below))
            below = self._sorted[k, pos[taken]] if taken < left else None
            thresholds[k] = boundary if below is None else midpoint(float(below), float(boundary))
            boundaries[k] = boundary
            counts[k] = taken
            remaining[self._order[k, pos[:taken]]] = False
            left -= taken
        counts[-1] = left
        return Walk(thresholds=thresholds, counts=counts, boundaries=boundaries)

    def quota(self, q: float) -> np.ndarray:
        return exit_quota(q, self.n, self.num_exits)

    def walk_q(self, q: float) -> Walk:
        return self.walk(self.quota(q))


def find_thresholds(confidences: np.ndarray, q: float) -> np.ndarray:
    """Thresholds (float64 ``[K]``, +inf = nobody exits, -inf at the last exit) for ``q``."""
    return ThresholdRule(confidences).walk_q(q).thresholds
