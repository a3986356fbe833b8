"""Synthetic scores with the shape of a real early-exit network's (for tests and benchmarks).

Every image has a difficulty; later exits are more skilled, so confidence rises with the exit
and, as in a trained network, confident predictions are more often right.
"""

from __future__ import annotations

import numpy as np

from .scores import SplitScores


def synthetic_scores(
    n: int, num_exits: int, num_classes: int = 10, seed: int = 0, ties: bool = False
) -> SplitScores:
    """``n`` images; with ``ties`` the confidences are rounded to 2 decimals (many ties)."""
    rng = np.random.default_rng(seed)
    difficulty = rng.uniform(0.0, 1.0, n)
    skill = np.linspace(0.3, 0.9, num_exits)
    logit = 6.0 * (skill[None, :] - difficulty[:, None]) + rng.normal(0.0, 0.8, (n, num_exits))
    floor = 1.0 / num_classes
    confidence = floor + (1.0 - floor) / (1.0 + np.exp(-logit))
    if ties:
        confidence = np.clip(np.round(confidence, 2), floor, 1.0)
    labels = rng.integers(0, num_classes, n)
    correct = rng.uniform(size=(n, num_exits)) < confidence
    wrong = (labels[:, None] + rng.integers(1, num_classes, (n, num_exits))) % num_classes
    prediction = np.where(correct, labels[:, None], wrong)
    top5 = correct | (rng.uniform(size=(n, num_exits)) < min(1.0, 4.0 / max(num_classes - 1, 1)))
    return SplitScores(
        confidence=confidence.astype(np.float64),
        prediction=prediction.astype(np.int64),
        top5=top5,
        labels=labels.astype(np.int64),
    )
