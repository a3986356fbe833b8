"""Degrade before shedding: under load, requests that allow it are served at cheaper calibrated
operating points, chosen from the pressure on the engine's queue when they are admitted.

The pressure is the engine's forecast of the work queued ahead of the request over
``degrade_queue_ms``, or the share of ``max_queue_images`` taken, whichever is higher. It asks
for a level (how many points cheaper than asked): 0 up to a pressure of one half, then one point
more per step up to the cheapest at 1, so the cheapest point is in force before a full queue
refuses anyone (degrade before shedding), however short the wait a full queue means.

A level asked for is given at once (attack), and held: it comes down one point for each
``hold_s`` the pressure has stayed below one half (release), counted from the last admission
that saw it higher. Between admissions nothing is seen; no admission means no new work, so a
server left idle after an overload is home when the next request comes (a point per hold
passed), not a point per hold after it. Without the hold the
level would follow the queue, and the engine empties its queue a batch at a time: the pressure
falls from full to nothing as a batch starts, requests admitted then get the dearest point, and
their work fills the queue again, so the level swings between the two ends and a full queue
refuses requests the cheap point could have served. A step down is on trial for a hold: if the
pressure leaves calm (rises past one half) within it, the level steps back up at once, before the
dearer point's work has filled the queue (the ladder alone would give the point back only near a
full queue). Such a step down was too early (the load still needs the cheaper point): the next
hold is twice as long, up to ``max_hold_s`` (8 holds unless set), so a load between two points'
capacities sits at the cheaper one and tries the dearer one ever more rarely instead of cycling.
A step down that lasts a hold resets it.

At the cheapest level the server sheds: a degradable request whose deadline not even exit 1 can
meet is refused (503) rather than answered late (``ModelService._refusal``).

The time a request spent before admission is not counted: from the server's side it cannot be
told apart from a client's slow upload.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class Degrader:
    def __init__(
        self,
        max_level: int,
        queue_s: float,
        *,
        hold_s: float = 1.0,
        max_hold_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_level < 0:
            raise ValueError(f"max_level must be 0 or more, not {max_level}")
        if not queue_s > 0:
            raise ValueError(f"queue_s must be positive, not {queue_s}")
        max_hold_s = 8 * hold_s if max_hold_s is None else max_hold_s
        if not 0 <= hold_s <= max_hold_s:
            raise ValueError("need 0 <= hold_s <= max_hold_s")
        self.max_level, self.queue_s = max_level, queue_s
        self.base_hold_s, self.max_hold_s, self.clock = hold_s, max_hold_s, clock
        self.hold_s = hold_s  # the hold in force (doubled after a step down undone early)
        self.last = 0  # the level held, given to the last request
        self._calm_since = 0.0  # the last admission that saw the pressure above one half
        self._stepped: float | None = None  # when the held level last came down a point

    def asked(self, wait_s: float, fill: float = 0.0) -> int:
        """The level the pressure alone asks for (no memory)."""
        pressure = max(wait_s / self.queue_s, fill)
        if pressure <= 0.5 or self.max_level == 0:
            return 0
        return min(self.max_level, math.ceil((pressure - 0.5) * 2 * self.max_level))

    def level(self, wait_s: float, fill: float = 0.0) -> int:
        """Points to step down for a request that would wait ``wait_s`` seconds, with ``fill``
        of the engine's queue bound taken."""
        now, asked = self.clock(), self.asked(wait_s, fill)
        if asked and self._stepped is not None and now - self._stepped < self.hold_s:
            asked = max(asked, self.last + 1)  # the pressure left calm on trial: step back up
        if asked > self.last:
            if self._stepped is not None:  # a step down undone: early, or after a whole hold
                early = now - self._stepped < self.hold_s
                self.hold_s = min(2 * self.hold_s, self.max_hold_s) if early else self.base_hold_s
            self.last, self._stepped = asked, None
        if asked:
            self._calm_since = now
        elif (down := self._released(now)) > 0:
            if self._stepped is not None:  # the last step down lasted a whole hold
                self.hold_s = self.base_hold_s
            self.last -= down
            self._calm_since = self._stepped = now
        return self.last

    def _released(self, now: float) -> int:
        """Points the calm since the last pressure has released by ``now`` (one per hold)."""
        if not self.last or self.hold_s <= 0:
            return self.last
        return min(self.last, int((now - self._calm_since) // self.hold_s))

    def current(self) -> int:
        """The level in force now, as the next calm admission would find it (for /v1/model
        and the metric, which an idle server would otherwise show stuck at the last level)."""
        return self.last - self._released(self.clock())
