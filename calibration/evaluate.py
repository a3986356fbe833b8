"""Anytime and dynamic evaluation of a split's scores, through the core exit rule.

Thresholds are applied with :func:`exitwise.policy.decide_exits`, the function the server's
decisions go through too, so the figures here are what serving reproduces.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from exitwise.policy import decide_exits

from .scores import SplitScores
from .thresholds import ThresholdRule

SWEEP_QS = tuple(p / 20 for p in range(1, 40))  # the seed's 39 points, q = 0.05 .. 1.95


@dataclass(frozen=True)
class SplitEvaluation:
    """What one threshold vector gives on one split."""

    exits: np.ndarray  # int64 [N]: 0-based exit index of every image
    counts: np.ndarray  # int64 [K]
    accuracy: float  # top-1, percent
    mflops: float  # mean cumulative MFLOPs per image

    @property
    def images(self) -> int:
        return int(self.counts.sum())

    @property
    def fractions(self) -> list[float]:
        return [float(c) / self.images for c in self.counts]


def evaluate_thresholds(
    scores: SplitScores, thresholds: np.ndarray, exit_mflops: Sequence[float]
) -> SplitEvaluation:
    """Exit every image with the core rule; accuracy and mean cost of the result."""
    exits = np.asarray(decide_exits(scores.confidence, np.asarray(thresholds, np.float64)))
    n, k = scores.confidence.shape
    counts = np.bincount(exits, minlength=k).astype(np.int64)
    correct = scores.prediction[np.arange(n), exits] == scores.labels
    costs = np.asarray(exit_mflops, dtype=np.float64)
    return SplitEvaluation(
        exits=exits,
        counts=counts,
        accuracy=100.0 * float(correct.mean()),
        mflops=float(counts @ costs) / n,
    )


@dataclass(frozen=True)
class AnytimeResult:
    """Per exit: top-1 and top-5 accuracy (percent) when every image runs to that exit."""

    top1: list[float]
    top5: list[float]


def anytime(scores: SplitScores) -> AnytimeResult:
    return AnytimeResult(
        top1=[100.0 * float(v) for v in scores.correct.mean(axis=0)],
        top5=[100.0 * float(v) for v in scores.top5.mean(axis=0)],
    )


@dataclass(frozen=True)
class DynamicPoint:
    """One q: thresholds found on the held-out split, and what they give on held-out and test."""

    q: float
    thresholds: np.ndarray
    heldout: SplitEvaluation
    test: SplitEvaluation | None


def dynamic_point(
    q: float,
    thresholds: np.ndarray,
    heldout: SplitScores,
    test: SplitScores | None,
    exit_mflops: Sequence[float],
) -> DynamicPoint:
    return DynamicPoint(
        q=q,
        thresholds=thresholds,
        heldout=evaluate_thresholds(heldout, thresholds, exit_mflops),
        test=None if test is None else evaluate_thresholds(test, thresholds, exit_mflops),
    )


def sweep(
    heldout: SplitScores,
    test: SplitScores | None,
    exit_mflops: Sequence[float],
    qs: Sequence[float] = SWEEP_QS,
    rule: ThresholdRule | None = None,
) -> list[DynamicPoint]:
    """The seed's dynamic evaluation: thresholds per q on held-out, applied to both splits."""
    rule = rule or ThresholdRule(heldout.confidence)
    return [dynamic_point(q, rule.walk_q(q).thresholds, heldout, test, exit_mflops) for q in qs]
