"""Degrade before shedding: under load, requests that allow it are served at cheaper calibrated
operating points, chosen from the pressure on the engine's queue when they are admitted.

The level (how many points cheaper than asked) is a function of that pressure: the engine's
forecast of the work queued ahead of the request over ``degrade_queue_ms``, or the share of
``max_queue_images`` taken, whichever is higher. 0 up to a pressure of one half, then rising
one point per step to the cheapest at 1: so the cheapest point is in force before a full queue
refuses anyone (degrade before shedding), however short the wait a full queue means. It acts
the moment work is admitted, before any request has waited, and it has no memory: when the
load sits between two points' capacities, the wait settles where the level changes between
them and requests get a mix of the two, in the share the capacity allows. No hold time, so no
cycle: a step up lowers the wait at once, a step down raises it at once, and the wait stays
within a band as wide as one level's step.

The time a request spent before admission is not counted: from the server's side it cannot be
told apart from a client's slow upload.
"""

from __future__ import annotations

import math


class Degrader:
    def __init__(self, max_level: int, queue_s: float) -> None:
        if max_level < 0:
            raise ValueError(f"max_level must be 0 or more, not {max_level}")
        if not queue_s > 0:
            raise ValueError(f"queue_s must be positive, not {queue_s}")
        self.max_level = max_level
        self.queue_s = queue_s
        self.last = 0  # the level given last (for /v1/model and the metric)

    def level(self, wait_s: float, fill: float = 0.0) -> int:
        """Points to step down for a request that would wait ``wait_s`` seconds, with ``fill``
        of the engine's queue bound taken."""
        pressure = max(wait_s / self.queue_s, fill)
        if pressure <= 0.5 or self.max_level == 0:
            level = 0
        else:
            level = min(self.max_level, math.ceil((pressure - 0.5) * 2 * self.max_level))
        self.last = level
        return level
