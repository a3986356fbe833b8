"""One operating point's budget controller: its realised MFLOPs per image kept on its
calibrated cost while traffic changes, and the calibrated thresholds served again once it is
clean. The server's side (plans, answers, what ``/v1/model`` shows) is in ``control.py``; the
answer log and the change detector are in ``cusum.py``.

Calibration promises an operating point's expected cost E on the held-out distribution. Harder
traffic (noise, blur, dim light) makes fewer images confident early and the cost rises; easier
traffic lowers it. A :class:`BudgetController` per point does three things:

- **Detects** a change wherever it starts: a two-sided CUSUM of the served images' cost against
  E, in units of the per-image spread the point has on the held-out split. It alarms when the
  evidence that the mean moved by more than ``allowance`` spreads adds up to ``threshold``,
  and dates the change (the last moment the sum was zero). On clean traffic it stays still: no
  alarm in 100,000 images in ``exitwise bench drift --simulate``'s clean runs.
- **Corrects** from the images since the change: what each row of calibration's control table
  would cost on them (:func:`serving.budget.table.estimate`, exact for rows that stop images no
  later than they stopped), and a move to the dearest row whose estimate is within E, in one
  step. Where the estimate is not exact (a dearer row: images may go further than anyone saw),
  the move is bounded to ``max_step`` in held-out cost. The table's rows are about 1 % apart in
  held-out cost, but shifted traffic can put two neighbours far apart (on noisy images the two
  cheapest can cost 5 % under and 20 % over E); so a share of the images is served the next
  dearer row, the share whose estimated mix costs E (dithering: whole requests, spread evenly,
  counted in images). It checks again every ``first_check`` images (up to ``window`` after the
  change), with every image since the change: each check has more evidence than the last, and
  a check is a few estimates (a gallop from the row served, then a bisection).
- **Comes home**: when the images since a change, or the last ``window / 4`` (once those all
  came after the change), cost under the thresholds served what those thresholds cost on the
  held-out split, the traffic is clean again and the calibrated thresholds are served, exactly
  what calibration simulated. The second look finds the end of a shift that was seen late in
  it, while the change being measured still began inside the shift.

Images served with thresholds from before a move (admitted earlier, answered later) still tell
what the traffic is like, but do not count for the detection of the next change. Images stopped
by a deadline, or answered early to make room in a full queue (``overload``), are censored: their
cost says nothing of the thresholds (see ``table.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from exitwise.bundle import OperatingPoint

from .cusum import AnswerLog, Cusum
from .table import ControlTable, Estimate, Traffic, cost_after, estimate, hazards_of

CALIBRATED = -1  # the row index that stands for the point's own calibrated thresholds


# Images between two checks after a change; a window holds at least four of them, since going
# home looks at its last quarter (ControlSettings, and the server's budget_control_window).
FIRST_CHECK = 250
LEAST_WINDOW = 4 * FIRST_CHECK


@dataclass(frozen=True)
class ControlSettings:
    window: int = 4000  # the most recent images an estimate looks at
    tolerance: float = 0.02  # relative deadband around the target
    allowance: float = 0.07  # CUSUM: the drift ignored, in per-image spreads
    threshold: float = 110.0  # CUSUM: the evidence that makes an alarm, same unit
    z: float = 2.5  # standard errors a difference must exceed to move
    max_step: float = 1.5  # the most a move where the estimate is not exact changes b
    first_check: int = FIRST_CHECK  # images between two checks after a change

    def __post_init__(self) -> None:
        # Every judgement needs first_check images, and going home looks at the last quarter
        # of the window: with less, a controller that moved never came back (window 200), or
        # only after thousands of clean images (window 800).
        if self.window < 4 * self.first_check:
            raise ValueError(
                f"the window must hold at least {4 * self.first_check} images (four checks of "
                f"{self.first_check}), not {self.window}"
            )
        if not self.tolerance >= 0 or not math.isfinite(self.tolerance):
            raise ValueError(f"the tolerance must be 0 or more, not {self.tolerance}")
        if not (self.allowance >= 0 and self.threshold > 0 and self.z > 0):
            raise ValueError("allowance must be 0 or more, threshold and z positive")
        if not self.max_step > 1:
            raise ValueError(f"max_step must be above 1, not {self.max_step}")


@dataclass(frozen=True)
class Move:
    """A decision: the held-out budget whose thresholds are served from now on."""

    budget: float
    previous: float
    realised: float  # the estimated cost of the thresholds served before, on recent images
    images: int  # how many images the decision looked at
    home: bool = False  # back to the calibrated thresholds


class BudgetController:
    """One operating point's loop (see the module docstring). Not thread-safe: the server
    drives it from its event loop."""

    def __init__(
        self,
        point: OperatingPoint,
        costs: Sequence[float],
        table: ControlTable,
        settings: ControlSettings | None = None,
    ) -> None:
        self.settings = s = settings or ControlSettings()
        self.target = point.expected_mflops
        self.costs = np.asarray(costs, dtype=np.float64)
        self.table = table
        self.calibrated = point.threshold_array()
        fractions = np.asarray(point.heldout.exit_fractions, dtype=np.float64)
        self._home_fractions = fractions
        self._home_hazards = hazards_of(fractions)
        spread = math.sqrt(max(0.0, float(fractions @ self.costs**2) - self.target**2))
        self.spread = max(spread, 1e-3 * self.target)
        self.row = CALIBRATED
        self.share = 0.0  # of images served the next dearer row (row + 1)
        self._credit = 0.0  # the dither's running remainder
        self.epoch = 0
        self.moves = 0
        self._log = AnswerLog(s.window, len(self.costs))
        self._cusum = Cusum(s.allowance, s.threshold)
        self._fed = 0  # images the CUSUM has seen (by sequence number)
        self._pending: list[tuple[Traffic, int]] = []  # images not logged yet
        self._waiting = 0
        self._after = cost_after(self._home_hazards, self.costs)
        self._segment: int | None = None  # sequence number where the current change began
        self._check = 0  # images into the segment of the next re-check
        self._home_check = 0  # sequence number of the next look for clean traffic

    @property
    def budget(self) -> float:
        """The held-out cost of the base row's thresholds (E when calibrated)."""
        return self.budget_of(self.row)

    @property
    def mixed_budget(self) -> float:
        """The held-out cost of what is served: the base row and its share of the next."""
        if not self.share:
            return self.budget
        return (1 - self.share) * self.budget + self.share * self.budget_of(self.row + 1)

    def budget_of(self, row: int) -> float:
        return self.target if row == CALIBRATED else float(self.table.mflops[row])

    def thresholds_of(self, row: int) -> np.ndarray:
        return self.calibrated if row == CALIBRATED else self.table.thresholds[row]

    def next_row(self, images: int = 1) -> int:
        """The row the next request, of ``images`` images, is served: the base row, or the
        next dearer one, so that ``share`` of the images (evenly spread) are served that row.
        Images, not requests: the share is of the cost, and counted per request a batch of 32
        took a turn as a single image did, so a mix of sizes got whatever share the dither's
        turns fell on (one image in eight, where every fourth request was a single one)."""
        if not self.share:
            return self.row
        self._credit += self.share * images
        if self._credit < images / 2:  # rounded: within half a request of the share
            return self.row
        self._credit -= images
        return self.row + 1

    def refund(self, images: int, dearer: bool) -> None:
        """A request given its row by :meth:`next_row` (``dearer``: the next dearer one) failed
        before it was served: its turn is given back, so the share holds for the images
        served. Kept, requests refused after admission (a full queue turns away big ones first;
        an undecodable image) took the turns, and the images served got another share than
        the one reported."""
        if self.share:
            self._credit += images * (float(dearer) - self.share)

    @property
    def moved(self) -> bool:
        return self.row != CALIBRATED

    def thresholds(self) -> np.ndarray:
        """The base row's thresholds."""
        return self.thresholds_of(self.row)

    def observe(self, traffic: Traffic, epoch: int) -> Move | None:
        """Images just served with the thresholds of ``epoch``; a :class:`Move` when it moved.
        They are taken in groups of 64 or more: a request pays next to nothing."""
        self._pending.append((traffic, epoch))
        self._waiting += len(traffic)
        if self._waiting < 64:
            return None
        self._log.add(self._pending)
        self._pending, self._waiting = [], 0
        self._watch()
        if self._may_go_home() and (move := self._home()) is not None:
            return move
        if self._segment is None or self._log.count - self._segment < self._check:
            return None
        return self._decide()

    def _may_go_home(self) -> bool:
        """Away from home, due for a look, and the last ``window / 4`` images all came after
        the latest change (fewer would mix the traffic before it in)."""
        if self.row == CALIBRATED or self._log.count < self._home_check:
            return False
        recent = self._log.count - self.settings.window // 4
        return self._segment is None or self._segment <= recent

    def _home(self) -> Move | None:
        """Every ``first_check`` images away from home: are the last ``window / 4`` clean? (A
        small shift ending moves the cost too little for the CUSUM to see soon.)"""
        s = self.settings
        self._home_check = self._log.count + s.first_check
        traffic, _ = self._log.since(self._log.count - s.window // 4)
        now = self._estimate(traffic, self.thresholds())
        if not self._clean(now, traffic):
            return None
        self._segment = None  # the next change is the CUSUM's to find
        return self._move(CALIBRATED, now.mflops, len(traffic), traffic)

    def _watch(self) -> None:
        """Feed the CUSUM the images served with the current thresholds since it last ran."""
        start = self._fed
        self._fed = self._log.count
        seq, x = self._increments(start)
        if not len(x):
            return
        # At home an alarm moves the thresholds, so it must be rare on clean traffic; away from
        # home it only asks the estimate again (which moves nothing if the traffic has not
        # changed), so half the evidence will do: the end of a shift is seen sooner.
        alarm = self._cusum.update(x, seq, 1.0 if self.row == CALIBRATED else 0.5)
        if alarm is None:
            return
        sign, since = alarm
        self._cusum.reset(self._log.count)
        # The CUSUM dates a change at its last zero, which a random excursion of the clean
        # traffic before it can put too early; the likelihood ratio of a shift of unknown size
        # starting at each image since then dates it better.
        seq, x = self._increments(since)
        tail = np.cumsum(sign * x[::-1])[::-1]
        score = np.where(tail > 0, tail**2 / np.arange(len(x), 0, -1), 0.0)
        self._segment, self._check = int(seq[int(np.argmax(score))]), 0

    def _increments(self, start: int) -> tuple[np.ndarray, np.ndarray]:
        """Sequence numbers and standardised cost minus target of the images from ``start`` on
        that were served with the current thresholds (a censored image counts its expected
        cost given the exits it passed)."""
        recent, epochs = self._log.since(start)
        seq = np.arange(self._log.count - len(recent), self._log.count)
        mine = epochs == self.epoch
        reached = recent.reached[mine]
        cost = np.where(recent.censored[mine], self._after[reached], self.costs[reached])
        return seq[mine], (cost - self.target) / self.spread

    def _decide(self) -> Move | None:
        assert self._segment is not None
        s = self.settings
        traffic, _ = self._log.since(self._segment)
        n = len(traffic)
        self._check = n + s.first_check
        if n >= s.window:
            self._segment = None  # settled: the next change is the CUSUM's to find
        now = self._estimate(traffic, self.thresholds())
        if self.row != CALIBRATED and self._clean(now, traffic):
            # Home. The next change is the CUSUM's to find (this segment may begin a little
            # before the traffic turned clean).
            self._segment = None
            return self._move(CALIBRATED, now.mflops, n, traffic)
        # The alarm was the significance test; from here the estimate only gets better with
        # more images, so any difference beyond the deadband is worth a move.
        gap = now.mflops - self.target  # of the base row alone
        if abs(gap) <= s.tolerance * self.target and not self.share:
            return None
        here = self.table.row_at(self.target) if self.row == CALIBRATED else self.row
        top = max(here + 1, self.table.row_at(self.budget * s.max_step))
        known = {} if self.row == CALIBRATED else {here: now.mflops}
        row, share = self._search(traffic, here, min(top, len(self.table) - 1), known)
        if row == self.row and abs(share - self.share) < 0.05:
            return None
        return self._move(row, now.mflops, n, traffic, share)

    def _search(
        self, traffic: Traffic, here: int, top: int, cost: dict[int, float]
    ) -> tuple[int, float]:
        """The dearest row up to ``top`` whose estimated cost on ``traffic`` is within the
        target (the cheapest row when none is), and the share of images to serve the next
        dearer row so that the mix's estimate is the target. The estimate rises with the row's
        held-out cost, so a gallop from ``here`` (the row served: a decision mostly moves a
        row or two) and a bisection find it in a few estimates. ``cost``: the estimates
        known already, by row."""

        def of(i: int) -> float:
            if i not in cost:
                cost[i] = self._estimate(traffic, self.table.thresholds[i]).mflops
            return cost[i]

        def fits(i: int) -> bool:
            return of(i) <= self.target

        # Bracket it (``lo`` fits or is -1, ``hi`` does not or is past ``top``), then bisect.
        step = 1
        if fits(here):
            lo, hi = here, top + 1
            while lo + step <= top:
                if not fits(lo + step):
                    hi = lo + step
                    break
                lo, step = lo + step, 2 * step
        else:
            lo, hi = -1, here
            while hi - step >= 0:
                if fits(hi - step):
                    lo = hi - step
                    break
                hi, step = hi - step, 2 * step
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        if lo < 0 or lo + 1 >= len(self.table):
            return max(lo, 0), 0.0
        low, high = of(lo), of(lo + 1)
        return lo, (min(1.0, (self.target - low) / (high - low)) if high > low else 0.0)

    def _clean(self, now: Estimate, traffic: Traffic) -> bool:
        """Whether ``traffic`` looks like the held-out split: the thresholds served cost on it
        what they cost there, and as many images as there are confident at exit 1 by the
        calibrated thresholds. (The served ones alone can be blind: at the cheapest rows nearly
        every image leaves at exit 1, whatever the traffic. Exit 1 is the one exit every image
        passes, so its share is known exactly whatever thresholds served them.)"""
        n = len(traffic)
        if n < self.settings.first_check:
            return False
        first = float(self._home_fractions[0])
        share = float(np.mean(traffic.confidence[:, 0] >= self.calibrated[0]))
        spread = math.sqrt(max(first * (1 - first), 1e-4) / n)
        same_first = abs(share - first) <= self.settings.z * spread + 0.01
        return same_first and self._matches(now, self.budget)

    def _matches(self, found: Estimate, expected: float) -> bool:
        noise = max(self.settings.z * found.stderr, self.settings.tolerance * expected)
        return abs(found.mflops - expected) <= noise

    def _estimate(self, traffic: Traffic, thresholds: np.ndarray) -> Estimate:
        return estimate(traffic, thresholds, self.costs, self._home_hazards)

    def _move(
        self, row: int, realised: float, images: int, traffic: Traffic, share: float = 0.0
    ) -> Move:
        previous = self.mixed_budget
        self.row, self.share, self._credit = row, share, 0.0
        self.epoch += 1
        self.moves += 1
        hazards = (
            self._home_hazards
            if row == CALIBRATED
            else self._estimate(traffic, self.thresholds()).hazards
        )
        self._after = cost_after(hazards, self.costs)
        self._cusum.reset(self._log.count)
        return Move(self.mixed_budget, previous, realised, images, home=row == CALIBRATED)
