"""Degrade before shedding: step down to cheaper operating points while the queue is long.

When images wait longer than ``high_s`` before their first stage, the server serves the
requests that allow it (``degrade``) one calibrated operating point cheaper, then another, as
long as the wait stays high; it steps back up, one point at a time, once the wait has fallen
below ``low_s``. Each step holds for ``hold_s`` at least, and the two thresholds are far apart
(hysteresis), so the level does not flap on a noisy queue. Only when even the cheapest point
cannot keep up does the queue fill and requests get a 503 with Retry-After.

:class:`Degrader` is the state machine alone, driven by the measured wait and a clock, so a
unit test can play any load curve through it.
"""

from __future__ import annotations

import threading


class Degrader:
    def __init__(self, max_level: int, high_s: float, low_s: float, hold_s: float) -> None:
        if max_level < 0:
            raise ValueError(f"max_level must be 0 or more, not {max_level}")
        if not 0 <= low_s < high_s:
            raise ValueError(f"need 0 <= low_s < high_s, not {low_s} and {high_s}")
        if hold_s < 0:
            raise ValueError(f"hold_s must be 0 or more, not {hold_s}")
        self.max_level = max_level
        self.high_s, self.low_s, self.hold_s = high_s, low_s, hold_s
        self.level = 0
        self._changed = float("-inf")
        self._lock = threading.Lock()

    def update(self, wait_s: float, now: float) -> int:
        """The level (points to step down) after seeing a queueing wait of ``wait_s``."""
        with self._lock:
            if now - self._changed >= self.hold_s:
                if wait_s > self.high_s and self.level < self.max_level:
                    self.level += 1
                    self._changed = now
                elif wait_s < self.low_s and self.level > 0:
                    self.level -= 1
                    self._changed = now
            return self.level
