"""What the engine keeps of every request and every image in it.

- :class:`Ticket`: what admission decided for a request (its plan, top-k, timeout, deadline and
  the deepest exit the deadline allows); it travels to the engine whole.
- :class:`Slots`: one row per image inside the engine, in arrays. A request's images hold a
  contiguous run of slots from admission to answer: their thresholds and caps, the deadline, and
  what the network said at the last exit each passed (exit, class, confidence, top-k) and at
  every exit before (confidences). Answering rows, moving survivors and dropping the rows of a
  request that went away are index operations on these arrays, a batch at a time.
- :class:`Rows`: a group of images waiting for a stage or running it: their slots and their
  state tensors (or still-encoded images before stage 1).
- :class:`Job` and :class:`Outcome`: a request in the engine, and what it gets back.
- :class:`Answer`: the future a request's handler awaits, which the engine completes.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from exitwise.models import State, select_rows

from . import deadlines
from .budget.resolve import ExitPlan
from .errors import QueueFullError

StopReason = Literal["confident", "cap", "deadline", "overload"]
REASONS: tuple[StopReason, ...] = ("confident", "cap", "deadline", "overload")
# ``overload``: a degradable image answered from the exit it had passed to make room in a full
# queue (:meth:`~serving.engine.Engine.submit`). Deadline and overload stops are the server's
# doing, not the thresholds': budget control does not learn from them.
CONFIDENT, CAP, DEADLINE, OVERLOAD = 0, 1, 2, 3
SERVER_STOPS = (DEADLINE, OVERLOAD)


@dataclass(frozen=True)
class Ticket:
    plan: ExitPlan
    top_k: int
    arrived: float  # time.monotonic() when the server first saw the request
    expires: float  # the hard timeout: past it the request fails with a 504
    deadline: float = math.inf  # deadline_ms as a moment: answered by then
    limit: int | None = None  # deepest exit (0-based) admission expects to finish in time
    late: bool = False  # admitted although not even exit 1 was forecast to make the deadline
    # deadline_policy=strict: deadline_ms itself as a moment (``deadline`` is the due moment,
    # a margin earlier). Refused in the engine once exit 1 can no longer make it.
    strict_by: float = math.inf
    # The request allows degradation (``degrade``): under overload its images may be answered
    # from an exit they passed before their plan stops them (reason ``overload``).
    degrade: bool = False


@dataclass(slots=True)  # not frozen: a frozen init cost a microsecond per request
class Outcome:
    """A request's answer, one entry per image (exits 0-based)."""

    exit: np.ndarray  # int64 [n]
    class_id: np.ndarray  # int64 [n]
    confidence: np.ndarray  # float64 [n]
    reason: np.ndarray  # int64 [n]: index into REASONS
    top_ids: np.ndarray  # int64 [n, top_k]
    top_probs: np.ndarray  # float64 [n, top_k]
    trace: np.ndarray  # float64 [n, K]: the confidence at every exit passed (nan beyond)
    queue_seconds: float  # the request's time in the engine not decoding or computing
    compute_seconds: float  # summed over the stage batches its images ran in
    decode_seconds: float = 0.0

    def reasons(self) -> list[StopReason]:
        return [REASONS[r] for r in self.reason.tolist()]


class Answer(asyncio.Future[Outcome]):
    """A request's future: :meth:`deliver` wakes the tasks awaiting it at once, in the callback
    that completes it.

    An asyncio future schedules its waiters' wake-ups with ``call_soon``: they run in the loop's
    next pass over its ready callbacks, after it has read whatever the sockets hold. The engine
    completes futures from a callback of its own (``call_soon_threadsafe``), which already waited
    one such pass. So an answer waited two, and under overload on one core a pass takes tens of
    milliseconds: time between the engine's last stage and the handler sending the response,
    which the deadline margin then had to cover for every request. Waking the handler in the
    engine's callback saves the second pass.

    Only :meth:`deliver` wakes in place, and only outside any task (a task cannot start while
    another runs); completing it any other way (``set_result``, ``set_exception``, ``cancel``)
    schedules the wake-ups as a plain future does.
    """

    def __init__(self, *, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop=loop)
        # The done callbacks added while pending: held here, not by the future, so that
        # completing it does not schedule them.
        self._waiters: list[tuple[Callable[[Any], object], contextvars.Context | None]] = []

    def add_done_callback(  # type: ignore[override]
        self, fn: Callable[[Any], object], *, context: contextvars.Context | None = None
    ) -> None:
        if self.done():
            super().add_done_callback(fn, context=context)
        else:
            self._waiters.append((fn, context))

    def remove_done_callback(self, fn: Callable[[Any], object]) -> int:  # type: ignore[override]
        kept = [(f, c) for f, c in self._waiters if f != fn]
        removed, self._waiters = len(self._waiters) - len(kept), kept
        return removed + super().remove_done_callback(fn)

    def set_result(self, result: Outcome) -> None:
        super().set_result(result)
        self._wake(now=False)

    def set_exception(self, exception: type | BaseException) -> None:
        super().set_exception(exception)
        self._wake(now=False)

    def cancel(self, msg: Any | None = None) -> bool:
        cancelled = super().cancel(msg)
        self._wake(now=False)
        return cancelled

    def deliver(self, result: Outcome | BaseException) -> None:
        """Complete with ``result`` (an exception fails it) and wake its waiters now."""
        if isinstance(result, BaseException):
            super().set_exception(result)
        else:
            super().set_result(result)
        self._wake(now=asyncio.current_task(self.get_loop()) is None)

    def _wake(self, now: bool) -> None:
        waiters, self._waiters = self._waiters, []
        loop = self.get_loop()
        for fn, context in waiters:
            if not now:
                loop.call_soon(fn, self, context=context)
                continue
            try:
                fn(self) if context is None else context.run(fn, self)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as err:  # as the loop does for a failing callback
                loop.call_exception_handler(
                    {"message": "a callback of a request's answer failed", "exception": err}
                )


@dataclass(eq=False)
class Job:
    ticket: Ticket
    start: int  # its slots: start .. start + n - 1
    n: int
    loop: asyncio.AbstractEventLoop
    future: Answer
    labels: Sequence[str] | None = None  # per image, for decoding errors
    enqueued: float = 0.0
    remaining: int = 0  # images not answered (nor dropped) yet
    cancelled: bool = False
    started: bool = False  # some image of it began stage 1
    compute_seconds: float = 0.0
    decode_seconds: float = 0.0
    result: Outcome | BaseException | None = None  # set when it completes


class Slots:
    """Per-image arrays for up to ``capacity`` images (see the module docstring)."""

    def __init__(self, capacity: int, num_exits: int) -> None:
        self.capacity = capacity
        k = num_exits
        self.job = np.zeros(capacity, dtype=np.int64)
        self.thresholds = np.zeros((capacity, k))
        self.max_index = np.zeros(capacity, dtype=np.int64)  # the request's exit cap
        self.cap = np.zeros(capacity, dtype=np.int64)  # that or the deadline's, if lower
        self.deadline = np.full(capacity, math.inf)
        self.arrived = np.zeros(capacity)  # when the server first saw its request
        self.strict_by = np.full(capacity, math.inf)  # Ticket.strict_by
        self.degrade = np.zeros(capacity, dtype=bool)  # Ticket.degrade
        self.top_k = np.zeros(capacity, dtype=np.int64)
        self.live = np.zeros(capacity, dtype=bool)  # its request still wants it
        self.queued = np.full(capacity, -1, dtype=np.int64)  # the stage it waits for, or -1
        self.exit = np.full(capacity, -1, dtype=np.int64)  # the last exit passed
        self.class_id = np.zeros(capacity, dtype=np.int64)  # its class there
        self.trace = np.full((capacity, k), np.nan)  # the confidence at every exit passed
        self.reason = np.zeros(capacity, dtype=np.int64)
        self.top_ids = np.zeros((capacity, 0), dtype=np.int64)  # widened on demand
        self.top_probs = np.zeros((capacity, 0))
        self._used = np.zeros(capacity, dtype=bool)
        self._next = 0
        # Slots given to requests with a deadline and with top-k: the work for either runs
        # only while some slot needs it.
        self.timed = self.topped = 0
        # The deadline the deadline traffic asks (seconds; a moving mean): where requests
        # without one stand in the deadline order (:meth:`order_keys`).
        self.patience = math.inf

    def allocate(self, job_id: int, ticket: Ticket, n: int) -> int:
        """``n`` contiguous slots for a request, filled from its ticket; their first index."""
        start = self._find(n)
        end = start + n
        plan = ticket.plan
        self._used[start:end] = True
        self.job[start:end] = job_id
        self.thresholds[start:end] = plan.thresholds
        self.max_index[start:end] = plan.max_index
        self.cap[start:end] = (
            plan.max_index if ticket.limit is None else min(plan.max_index, ticket.limit)
        )
        deadline = ticket.deadline
        if math.isfinite(deadline):
            asked = deadline - ticket.arrived
            first = math.isinf(self.patience)
            self.patience = asked if first else self.patience + 0.05 * (asked - self.patience)
        if ticket.late:  # lost to its deadline: behind those in time (deadlines.behind)
            deadline = deadlines.behind(ticket.arrived, deadline, ticket.expires)
        self.deadline[start:end] = deadline
        self.arrived[start:end] = ticket.arrived
        self.strict_by[start:end] = ticket.strict_by
        self.degrade[start:end] = ticket.degrade
        self.timed += n * math.isfinite(deadline)
        self.topped += n * (ticket.top_k > 0)
        self.top_k[start:end] = ticket.top_k
        self.live[start:end] = True  # exit and trace were reset when the slots were freed
        self._next = end % self.capacity
        return start

    def order_keys(self, slots: np.ndarray, now: float) -> np.ndarray:
        """Where ``slots`` stand in the deadline order (:func:`deadlines.order`): their
        deadline. A request without one goes behind those with one until it has waited as long
        as the deadline traffic asks (``patience``), then ahead of all still in time (its key,
        its arrival plus that wait, is past). Behind them for good, a standing load of deadline
        requests more than a batch kept it waiting until the load ended, or its timeout (a
        504); ahead of them at once, it took the room of a batch shrunk for a deadline."""
        deadline = self.deadline[slots]
        aged = self.arrived[slots] + self.patience
        return np.where(np.isfinite(deadline), deadline, np.where(aged <= now, aged, math.inf))

    def _find(self, n: int) -> int:
        for start in (self._next, 0):
            if start + n <= self.capacity and not self._used[start : start + n].any():
                return start
        free = np.concatenate([[False], ~self._used, [False]]).astype(np.int8)
        edges = np.flatnonzero(np.diff(free))
        runs = edges.reshape(-1, 2)
        fits = runs[runs[:, 1] - runs[:, 0] >= n]
        if not len(fits):
            raise QueueFullError("the server is holding too many images; retry later")
        return int(fits[0, 0])

    def free(self, jobs: Sequence[Job]) -> None:
        """The slots of ``jobs`` (complete requests) are free again: in one call per array."""
        one = len(jobs) == 1  # a slice for one request's run: cheaper than an index (batch 1)
        index = slice(jobs[0].start, jobs[0].start + jobs[0].n) if one else spans(jobs)
        self.timed -= int(np.isfinite(self.deadline[index]).sum())
        self.topped -= int(np.count_nonzero(self.top_k[index]))
        self._used[index] = False
        self.live[index] = False
        self.queued[index] = -1
        self.exit[index] = -1  # clean for the next request (here, a batch at a time)
        self.trace[index] = np.nan

    def passed(self, slots: np.ndarray, index: int, classes: np.ndarray, conf: np.ndarray) -> None:
        """``slots`` ran stage ``index``: what its exit said."""
        self.exit[slots] = index
        self.class_id[slots] = classes
        self.trace[slots, index] = conf

    def set_top(self, slots: np.ndarray, ids: np.ndarray, probs: np.ndarray) -> None:
        width = ids.shape[1]
        if width > self.top_ids.shape[1]:
            pad = width - self.top_ids.shape[1]
            self.top_ids = np.pad(self.top_ids, ((0, 0), (0, pad)))
            self.top_probs = np.pad(self.top_probs, ((0, 0), (0, pad)))
        self.top_ids[slots, :width] = ids
        self.top_probs[slots, :width] = probs

    def outcomes(self, jobs: list[Job], now: float) -> tuple[list[Outcome], bool]:
        """The answers of complete requests: their slots copied out in one gather per array
        (a batch completes many one-image requests at once), then split per request; and
        whether every confidence in them is finite (checked once for all)."""
        if not jobs:
            return [], True
        index = spans(jobs)
        exits, trace = self.exit[index], self.trace[index]
        confidence = trace[np.arange(len(index)), exits]
        classes, reasons = self.class_id[index], self.reason[index]
        top_ids, top_probs = self.top_ids[index], self.top_probs[index]
        out, at = [], 0
        for job in jobs:
            span, k = slice(at, at + job.n), job.ticket.top_k
            busy = job.compute_seconds + job.decode_seconds
            out.append(
                Outcome(
                    exits[span],
                    classes[span],
                    confidence[span],
                    reasons[span],
                    top_ids[span, :k],
                    top_probs[span, :k],
                    trace[span],
                    queue_seconds=max(0.0, now - job.enqueued - busy),
                    compute_seconds=job.compute_seconds,
                    decode_seconds=job.decode_seconds,
                )
            )
            at += job.n
        return out, bool(np.isfinite(confidence).all())


def spans(jobs: Sequence[Job]) -> np.ndarray:
    """The slots of ``jobs``, each request's run in turn, as one index array (built at once:
    a batch completes up to a batch of one-image requests)."""
    if len(jobs) == 1:
        return np.arange(jobs[0].start, jobs[0].start + jobs[0].n)
    starts = np.fromiter((j.start for j in jobs), np.int64, len(jobs))
    sizes = np.fromiter((j.n for j in jobs), np.int64, len(jobs))
    ends = np.cumsum(sizes)
    index: np.ndarray = np.arange(int(ends[-1])) + np.repeat(starts - (ends - sizes), sizes)
    return index


@dataclass(eq=False)
class Rows:
    """Images waiting for (or running) one stage, in the order they joined."""

    slots: np.ndarray  # int64 [n]
    state: State  # batch-first tensors, one row per slot (empty while ``encoded``)
    since: float  # time.monotonic() they joined the queue
    encoded: Sequence[bytes] | None = None  # stage 1: still encoded (PNG, JPEG, ...)
    job: Job | None = None  # stage 1 before decoding: the one request they belong to

    def __len__(self) -> int:
        return len(self.slots)

    def pick(self, index: np.ndarray) -> Rows:
        """The rows at the int64 positions ``index``."""
        state = self.state
        if state:
            state = select_rows(state, torch.from_numpy(index).to(state[0].device))
        encoded = None if self.encoded is None else [self.encoded[i] for i in index.tolist()]
        return Rows(self.slots[index], state, self.since, encoded, self.job)


def join(parts: Sequence[Rows]) -> Rows:
    """One group of all rows, in order (no copy for one part); all must be decoded."""
    if len(parts) == 1:
        return parts[0]
    width = len(parts[0].state)
    return Rows(
        np.concatenate([p.slots for p in parts]),
        [torch.cat([p.state[i] for p in parts]) for i in range(width)],
        min(p.since for p in parts),
    )
