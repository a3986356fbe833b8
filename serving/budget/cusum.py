"""Budget control's evidence: the images fed to a point's controller, and the change detector
over their cost (see :mod:`serving.budget.controller`)."""

from __future__ import annotations

import numpy as np

from .table import Traffic


class AnswerLog:
    """The last ``capacity`` images fed to a controller, by sequence number."""

    def __init__(self, capacity: int, num_exits: int) -> None:
        self.capacity = capacity
        self.confidence = np.full((capacity, num_exits), np.nan)
        self.reached = np.zeros(capacity, dtype=np.int64)
        self.censored = np.zeros(capacity, dtype=bool)
        self.epoch = np.zeros(capacity, dtype=np.int64)
        self.count = 0  # images ever added

    def add(self, parts: list[tuple[Traffic, int]]) -> None:
        """Requests' images and the epoch each was served in, in one write."""
        conf = np.concatenate([t.confidence for t, _ in parts])
        reached = np.concatenate([t.reached for t, _ in parts])
        censored = np.concatenate([t.censored for t, _ in parts])
        epochs = np.concatenate([np.full(len(t), e) for t, e in parts])
        total = len(reached)
        n = min(total, self.capacity)
        at = (self.count + total - n + np.arange(n)) % self.capacity
        self.confidence[at] = conf[-n:]
        self.reached[at] = reached[-n:]
        self.censored[at] = censored[-n:]
        self.epoch[at] = epochs[-n:]
        self.count += total

    def since(self, start: int) -> tuple[Traffic, np.ndarray]:
        """The images from sequence number ``start`` on (the last ``capacity`` at most)."""
        first = max(start, self.count - self.capacity)
        at = np.arange(first, self.count) % self.capacity
        traffic = Traffic(self.confidence[at], self.reached[at], self.censored[at])
        return traffic, self.epoch[at]


class Cusum:
    """Two-sided CUSUM of standardised increments; an alarm dates the change."""

    def __init__(self, allowance: float, threshold: float) -> None:
        self.allowance, self.threshold = allowance, threshold
        self.reset(0)

    def reset(self, seq: int) -> None:
        self.high = self.low = 0.0
        self.high_zero = self.low_zero = seq  # sequence number after the last zero

    def update(self, x: np.ndarray, seq: np.ndarray, scale: float = 1.0) -> tuple[int, int] | None:
        """Feed increments ``x`` (their sequence numbers ``seq``); on an alarm ``(sign, change)``:
        +1 when the cost went up, -1 down, and the sequence number where the change began.
        ``scale``: a share of the threshold to alarm at."""
        for sign in (1, -1):
            level = self.high if sign > 0 else self.low
            walk = level + np.cumsum(sign * x - self.allowance)
            floor = np.minimum.accumulate(np.minimum(walk, 0.0))
            sums = walk - floor
            zeros = np.flatnonzero(sums <= 0.0)
            zero = int(seq[zeros[-1]]) + 1 if len(zeros) else None
            limit = self.threshold * scale
            if sums.max() > limit:  # an alarm (rare: the test first, the search only then)
                over = np.flatnonzero(sums > limit)
                before = zeros[zeros < over[0]]
                start = int(seq[before[-1]]) + 1 if len(before) else None
                if start is None:
                    start = self.high_zero if sign > 0 else self.low_zero
                return sign, start
            if sign > 0:
                self.high = float(sums[-1])
                self.high_zero = zero if zero is not None else self.high_zero
            else:
                self.low = float(sums[-1])
                self.low_zero = zero if zero is not None else self.low_zero
        return None
