"""``deadline_ms``, from admission to late answers: the one place that decides what a deadline
does to a request.

A request may say "answer within D ms of arrival". The clock starts when the server first sees
the request (``serving.protocol`` stamps it when its bytes came in, by the kernel's clock where
the socket can say, else by when uvicorn read them less how late the event loop was). A multi-exit
network can always answer from the last exit it finished, so a deadline is kept by stopping
early, and by refusing only what cannot be helped:

- **Up front** (:func:`check`): a deadline shorter than exit 1 takes on the idle device, or
  longer than the request timeout, is a 422.
- **At admission** (:func:`admit`): the engine's :class:`Forecast` says when each exit of a new
  request's images would be done, given the work queued ahead of it, the batches its own images
  fill, and the per-stage latency model. The
  request gets the deepest exit that finishes in time as a cap. If not even exit 1 does, the
  default policy answers from exit 1, late, and says so (behind the requests still in time, up
  to those due one deadline after its own: :func:`behind`); ``deadline_policy=strict``
  refuses at once (:func:`refused`: 503 with ``Retry-After``) so the client can go elsewhere,
  and so does a degradable request while degradation is at its cheapest point and the overload
  has stood (:class:`Overload`; the service decides which: shedding comes after degrading).
- **In the engine**: a stage's batch takes the rows with the earliest deadlines first
  (:func:`order`; a request without one last until it has waited as long as the deadline
  traffic asks: :meth:`~serving.jobs.Slots.order_keys`), smaller when a full batch would end
  too late (:func:`batch_limit`); rows that can no longer finish their next stage in time,
  waiting or just out of a stage, are answered from the exit they passed last
  (:func:`late`), stop reason ``deadline``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .errors import DeadlineUnmeetableError, InvalidParameterError

# The least time an answer is due before its deadline: building and sending the response.
ANSWER_MARGIN_S = 0.001
# The time an answer ready in the service still needs to reach the socket (encoding, sending).
SEND_S = 0.0005


@dataclass(frozen=True)
class Forecast:
    """When a new request's exits would be done, as the engine sees its queues now."""

    now: float  # time.monotonic()
    wait: float  # seconds of work queued ahead of it
    stage: np.ndarray  # float64 [K]: seconds of each stage's batches its images would run in
    # Seconds of all the work queued, the rows sharing its batches included: the pressure the
    # degrader reads, the same for every request (with or without a deadline).
    queued: float

    def finish(self) -> np.ndarray:
        """float64 ``[K]``: the moment each exit (0-based) would be done."""
        return self.now + self.wait + np.cumsum(self.stage)


@dataclass(frozen=True)
class Refusal:
    """Why a request whose deadline not even exit 1 can meet is refused rather than answered
    late: ``reason`` labels ``exitwise_refused_total``, ``why`` ends the client's message."""

    reason: str
    why: str


STRICT = Refusal("deadline_strict", "deadline_policy=strict")
SHED = Refusal(
    "deadline_shed", "overloaded at the cheapest operating point: retry later or elsewhere"
)


# How long, in intervals, the shedding gate holds the last forecast through a pause in
# admissions (:meth:`Overload._now`): 1 s at the default 100 ms.
HOLD_INTERVALS = 10


class Overload:
    """Whether an overload past the cheapest operating point stands: shedding's gate.

    At the cheapest point a request that not even exit 1 can serve in time is refused (503)
    rather than answered late, but only while such forecasts have been the rule for about
    ``interval_s``: the share of the time the last deadline admission at the cheapest point was
    forecast late, a moving mean with that time constant, is above one half (CoDel's idea: a
    queue above its target for an interval is a standing one; a shorter spell is a burst, and
    drains). A step in load is such a burst: the work admitted at dearer points before the
    degrader reached the cheapest one is still queued, and for a few milliseconds new requests
    are forecast late although the cheapest point serves the load. Refused at once, they were
    most of a 2x overload's 503s (all 29 in its first quarter second, in the docs run before
    this gate); answered late, they cost a few late answers. A load past what the cheapest
    point can serve keeps most forecasts late, and is shed after about the interval. A mean,
    not a run of late forecasts since the last one in time: under a 4x overload about a third
    of the requests, those the event loop took up soon enough, were still forecast in time, and
    a run broken by each of them let a third to half of the answers through late. With
    ``interval_s`` 0 every such forecast is refused at once."""

    def __init__(
        self, interval_s: float = 0.1, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not interval_s >= 0:
            raise ValueError(f"interval_s must be 0 or more, not {interval_s}")
        self.interval_s, self.clock = interval_s, clock
        self._share = 0.0  # of the time, as of ``_at``, the last admission was forecast late
        self._late = False  # the last admission's forecast, in force since ``_at``
        self._at = clock()

    def _now(self, now: float) -> float:
        """The share as of ``now``: the last forecast held since ``_at``, for at most
        ``HOLD_INTERVALS`` intervals. A standing overload shows itself in admissions, many an
        interval; a pause with none that long is no overload, and counts as in time. Held for
        good, the idle minute after an overload that ended on a late forecast counted as a
        minute of late forecasts, and the next load's first burst was refused at once."""
        held = min(now - self._at, HOLD_INTERVALS * self.interval_s)
        keep = math.exp(-held / self.interval_s)
        share = keep * self._share + (1 - keep) * self._late
        return share * math.exp(-(now - self._at - held) / self.interval_s)

    def standing(self) -> bool:
        """Whether the next late forecast at the cheapest point is refused."""
        return self.interval_s == 0 or self._now(self.clock()) > 0.5

    def saw(self, late: bool) -> None:
        """A deadline request was admitted: ``late``, at the cheapest point and not even exit 1
        forecast in time; else in time, or at a dearer point (no overload past the cheapest)."""
        if self.interval_s > 0:
            now = self.clock()
            self._share, self._late, self._at = self._now(now), late, now


def check(
    deadline_s: float, timeout_s: float, first_exit_s: float, client_timeout_s: float | None = None
) -> None:
    """A 422 for a deadline known up front to be impossible or meaningless: shorter than exit 1
    on the idle device and sending the answer take, or past the request's timeout (the
    server's, or the client's own when shorter: the 504 would come first)."""
    client = timeout_s if client_timeout_s is None else client_timeout_s
    if deadline_s > client < timeout_s:  # past the client's own timeout, the shorter one
        raise InvalidParameterError(
            f"deadline_ms must be at most the request's timeout ({client * 1000:g}"
            " ms): past it the request fails with a 504 before the deadline"
        )
    if deadline_s > timeout_s:
        raise InvalidParameterError(
            f"deadline_ms must be at most the server's request timeout, {timeout_s * 1000:g}"
        )
    # The least margin (Margin's floor) is the time to build and send the answer: a deadline
    # shorter than exit 1 and that would be forecast late on an idle server, every time.
    if deadline_s < (least := first_exit_s + ANSWER_MARGIN_S):
        raise InvalidParameterError(
            f"deadline_ms {deadline_s * 1000:g} is shorter than the first exit takes on this "
            f"server and sending its answer (about {least * 1000:.2g} ms)"
        )


class Margin:
    """How long before its deadline a request's answer is due, learned from the answers.

    What the engine and the admission forecast cannot see makes answers later than they plan: on one
    core, the event loop's HTTP work for other requests slows a stage batch down, a batch already
    running is never preempted, and an answer waits for the loop to resume its request. The margin
    is the due moment's distance from the deadline, tracked so that a share ``1 - quantile`` of
    answers is ready after ``deadline - SEND_S`` (a stochastic-approximation quantile: up
    ``step_s * quantile`` for each late answer, down ``step_s * (1 - quantile)`` for each one in
    time). A
    deadline shorter than the margin over ``room`` gets a smaller one; such a request, and one
    admitted late (not even exit 1 was forecast in time), does not say whether the whole margin
    would have been enough: it counts only when it was in time. ``room`` leaves every deadline at
    least a tenth of itself for the work. That also bounds the margin: it rises only while ``room``
    of some deadline is above it, so it never passes ``room`` of the longest deadline asked (plus a
    step). Under a 4x overload on one core, answers ready on plan reached the client 60-90 ms later
    (the event loop's backlog), so a fixed ceiling (50 ms once) left a fifth of the strict answers
    late.

    Coming home: the quantile comes down ``step_s * (1 - quantile)`` per answer in time, some
    8,000 answers from 80 ms, so a server left idle after an overload planned its next requests
    as if the backlog were still there (shallow exits, strict refusals) however long the pause.
    With no deadline request for ``quiet_s`` there is no backlog left for it to cover: from then
    on, the margin above its floor halves every ``half_life_s`` until the next one. Steady
    traffic never leaves such a pause, and the quantile alone decides. The pause is long (30 s):
    a margin kept through a short one spares a returning overload its first second of late
    answers (a 4x overload starting from the floor answered with twice the p99 in the runs
    that measured it).

    Only answers a client is still connected to get are observed (``ModelService.classify``):
    when clients drop their connections at once, the loop's work on the disconnects makes the
    answers still in flight late, and those nobody receives say nothing about the next request.
    """

    def __init__(
        self,
        quantile: float = 0.995,
        step_s: float = 0.002,
        floor_s: float = ANSWER_MARGIN_S,
        room: float = 0.9,
        *,
        quiet_s: float = 30.0,
        half_life_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not (0 < quantile < 1 and step_s > 0 and floor_s > 0 and 0 < room < 1):
            raise ValueError("need 0 < quantile < 1, step_s > 0, floor_s > 0, 0 < room < 1")
        if not (quiet_s >= 0 and half_life_s > 0):
            raise ValueError("need quiet_s >= 0 and half_life_s > 0")
        self.quantile, self.step_s, self.room = quantile, step_s, room
        self.floor_s = floor_s
        self.seconds = floor_s
        self.quiet_s, self.half_life_s, self.clock = quiet_s, half_life_s, clock
        self._busy_at = self._at = clock()  # the last deadline request seen; the last settling

    def current(self) -> float:
        """The margin now (for ``/v1/model`` and the metric; reading it is no request)."""
        self._settle(busy=False)
        return self.seconds

    def of(self, deadline_s: float) -> float:
        """The margin a request with ``deadline_ms`` = ``deadline_s`` gets."""
        self._settle(busy=True)
        return max(self.floor_s, min(self.seconds, self.room * deadline_s))

    def observe(self, deadline_s: float, elapsed_s: float, late: bool) -> None:
        """A request with ``deadline_ms`` = ``deadline_s`` was answered ``elapsed_s`` after its
        arrival (admitted late: ``late``)."""
        self._settle(busy=True)
        if elapsed_s > deadline_s - SEND_S:
            if late or self.room * deadline_s < self.seconds:
                return
            self.seconds += self.step_s * self.quantile
        else:
            self.seconds -= self.step_s * (1 - self.quantile)
        self.seconds = max(self.floor_s, self.seconds)

    def _settle(self, busy: bool) -> None:
        """The halvings due for the pause past ``quiet_s`` since the last settling."""
        now = self.clock()
        pause = now - max(self._at, self._busy_at + self.quiet_s)
        if pause > 0 and self.seconds > self.floor_s:
            excess = (self.seconds - self.floor_s) * 0.5 ** (pause / self.half_life_s)
            self.seconds = self.floor_s + excess
        self._at = now
        if busy:
            self._busy_at = now


def due(arrived: float, deadline_s: float, margin_s: float) -> float:
    """The moment an answer is due for a request that arrived at ``arrived``, ``margin_s``
    before its deadline (:meth:`Margin.of`)."""
    return arrived + deadline_s - margin_s


def admit(forecast: Forecast, deadline: float) -> tuple[int, bool]:
    """``(deepest exit that finishes by deadline, late)``; late: not even exit 1 does, and the
    request is answered from it, unless it is refused (:func:`refused`)."""
    fits = np.flatnonzero(forecast.finish() <= deadline)
    if len(fits):
        return int(fits[-1]), False
    return 0, True


def refused(forecast: Forecast, refusal: Refusal) -> DeadlineUnmeetableError:
    """The 503 for a request that not even exit 1 can serve in time and ``refusal`` (strict, or
    shedding: an overload past the cheapest point) refuses."""
    return DeadlineUnmeetableError(
        f"deadline_ms cannot be met: exit 1 would answer in about "
        f"{(forecast.finish()[0] - forecast.now) * 1000:.0f} ms from now ({refusal.why})",
        forecast.wait,
        refusal.reason,
    )


def refused_late() -> DeadlineUnmeetableError:
    """The 503 for a ``deadline_policy=strict`` request admitted in time whose images, still
    waiting for stage 1, can no longer reach exit 1 by the deadline (the work ahead of them
    ran longer than forecast): refused then, before the deadline, rather than answered after
    it."""
    return DeadlineUnmeetableError(
        "deadline_ms can no longer be met: the work ahead of this request ran longer than "
        "forecast (deadline_policy=strict)",
        0.0,
        STRICT.reason,
    )


def late(deadlines: np.ndarray, finish: float) -> np.ndarray:
    """Which rows would miss their deadline if their next stage ended at ``finish``."""
    return deadlines < finish


def behind(arrived: float, deadline: float, expires: float = math.inf) -> float:
    """Where a request admitted late (``deadline``: its due moment) stands in the deadline
    order (:func:`order`): as if due one deadline after its own. Its deadline is lost whatever
    happens, so it goes behind the requests still in time (first, it made them late too), but
    not behind all of them: under a standing load of requests in time it waited until the load
    ended (in a 4x overload run, nine answers 9 s after their arrival). Nor behind its own
    timeout (``expires``): the late answer it was promised must come before the 504, so it is
    due an answer's margin before then, when that is sooner."""
    return min(deadline + (deadline - arrived), expires - ANSWER_MARGIN_S)


def order(deadlines: np.ndarray, limit: int) -> np.ndarray:
    """The positions of the ``limit`` rows to run first: earliest deadline, then oldest."""
    return np.sort(np.argsort(deadlines, kind="stable")[:limit])


def batch_limit(room_s: float, rows: int, estimate: Callable[[int], float]) -> int:
    """Rows for the next batch of a stage whose earliest deadline is ``room_s`` away, of the
    ``rows`` it could take: the most whose ``estimate`` (seconds) fits in the room (by bisection:
    a batch costs more the more rows it has). When not even one row fits, that deadline is lost
    whatever the batch, and a small batch would only make every row behind it later, so the
    batch takes them all. (Halved from a full batch, the limit once split three rows that fit
    in time together 2 + 1, because a batch of four did not fit, and answered them late.)"""
    if estimate(1) > room_s:
        return rows
    lo, hi = 1, rows  # estimate(lo) fits; find the largest that does
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if estimate(mid) <= room_s else (lo, mid - 1)
    return lo
