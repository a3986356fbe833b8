"""The engine: a queue in front of every stage and one worker thread that runs them.

A request's life here:

- **Admit** (:meth:`Engine.submit`, on the event loop): its :class:`~serving.jobs.Ticket` gets a
  run of slots (thresholds, caps, deadline per image) and its images join stage 1's queue; a
  full engine refuses at once (503 with Retry-After), unless the request allows degradation and
  rows of such requests wait for stage 2 or later: as many are answered from the exit they
  passed (stop reason ``overload``) to make room.
- **Queue per stage**: the worker asks the scheduler (:func:`serving.scheduler.pick`) which
  stage to run and takes up to ``max_batch_size`` rows from any requests and budgets (the
  deadline rules of :mod:`serving.deadlines` decide the order when not all fit).
- **Run and judge**: stage 1 decodes its encoded images first; the stage runs and the exit rule
  (:func:`exitwise.runtime.judge_stage`, the function calibration's simulation uses) decides,
  with each row's thresholds and caps, who stops.
- **Answer**: stopping rows are answered in their slots; the survivors join the next stage's
  queue to wait for the survivors of other batches, or run on at once when they have the engine
  to themselves. A request completes with its last image; the requests a batch completed are
  resolved with one call into their event loop, which resumes their handlers in place
  (:class:`~serving.jobs.Answer`).

A request whose client went away, that timed out or failed leaves every queue at once; its rows
still running are dropped when they come back.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from exitwise.errors import ExitwiseError
from exitwise.models import select_rows
from exitwise.runtime import StageRunner, judge_stage, run_early_exit, top_k_of

from . import deadlines
from .errors import (
    BadRequestError,
    ClientGoneError,
    DeadlineExceededError,
    NotReadyError,
    QueueFullError,
)
from .jobs import (
    CAP,
    CONFIDENT,
    DEADLINE,
    OVERLOAD,
    Answer,
    Job,
    Outcome,
    Rows,
    Slots,
    Ticket,
    join,
)
from .latency import LatencyModel
from .metrics import Metrics
from .scheduler import EMPTY, Idle, QueueView, Run, pick

log = logging.getLogger("exitwise.serving.engine")

DEFAULT_MAX_STAGE_WAIT_S = 0.005  # the longest a row waits for company (at least max_wait)

Decoder = Callable[[Sequence[bytes], Sequence[str] | None], np.ndarray]


class EngineFailureError(RuntimeError):
    """The network raised while running a batch (a bug or a device fault: a generic 500)."""


@dataclass(frozen=True)
class Encoded:
    """Images still encoded (PNG, JPEG, ...): the worker decodes them just before stage 1."""

    blobs: Sequence[bytes]
    labels: Sequence[str] | None = None  # per image, for error messages


@dataclass(eq=False)
class Arrival:
    """A request announced by :meth:`Engine.expecting`; ``arrived`` once it is queued."""

    arrived: bool = False


class Engine:
    def __init__(
        self,
        runner: StageRunner,
        *,
        exit_mflops: list[float],
        max_batch_size: int = 32,
        max_wait_s: float = 0.002,
        max_stage_wait_s: float | None = None,
        max_queue_images: int = 1024,
        metrics: Metrics | None = None,
        decode: Decoder | None = None,
        normalize: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        if len(exit_mflops) != runner.num_exits:
            raise ValueError("one MFLOPs figure per exit is required")
        self.runner, self.num_exits = runner, runner.num_exits
        self.exit_mflops = list(exit_mflops)
        self.max_batch_size, self.max_wait_s = max_batch_size, max_wait_s
        stage_wait = DEFAULT_MAX_STAGE_WAIT_S if max_stage_wait_s is None else max_stage_wait_s
        self.max_stage_wait_s = max(stage_wait, max_wait_s)
        self.max_queue_images = max_queue_images
        self.metrics = metrics
        self.decode, self.normalize = decode, normalize
        k = self.num_exits
        self.latency = LatencyModel(k, max_batch_size)
        self.slots = Slots(2 * max_queue_images + 4 * max_batch_size, k)
        self._queues: list[deque[Rows]] = [deque() for _ in range(k)]
        self._rows = [0] * k  # live rows waiting at each stage
        self._jobs: dict[int, Job] = {}
        self._ids = itertools.count()
        self._done: list[Job] = []  # completed or failed, to be delivered
        self._survive = [0.5] * k  # share of a stage's rows that go on (moving average)
        self._running: tuple[int, int, float, float] | None = None  # stage, rows, start, forecast
        self._cond = threading.Condition()
        self._idle = self._stopping = False
        self._incoming = 0
        self._thread: threading.Thread | None = None
        # The worker's CPU seconds so far, as of its last batch: with the process's, /metrics
        # shows how one core is shared between the engine and the event loop.
        self.cpu_seconds = 0.0
        if metrics is not None:
            metrics.watch_queues(self.queue_rows)
            metrics.watch_engine_cpu(lambda: self.cpu_seconds)

    # --- life cycle ------------------------------------------------------------------------

    def warm_up(self, input_shape: tuple[int, int, int], batch_sizes: tuple[int, ...] = ()) -> None:
        """Run every stage at batch 1 and the largest batch (allocators, kernels), then time
        every stage at each batch size bucket for the latency model."""
        k = self.num_exits
        for n in batch_sizes or (1, self.max_batch_size):
            x, thr = torch.zeros((n, *input_shape)), np.full((n, k), np.inf)
            run_early_exit(self.runner, x, thr, np.full(n, k - 1, dtype=np.int64))
        self.latency.measure(self.runner, input_shape)

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("engine already started")
        self._thread = threading.Thread(target=self._work, name="exitwise-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop accepting work, finish everything queued, then end the worker."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def accepting(self) -> bool:
        return not self._stopping

    @property
    def queued_images(self) -> int:
        return sum(self._rows)

    def queue_rows(self) -> list[int]:
        """Rows waiting in front of each stage (index 0 = stage 1)."""
        return list(self._rows)

    def forecast(self, images: int = 1, own: bool = True) -> deadlines.Forecast:
        """When the exits of a new request of ``images`` images would be done: the work queued
        ahead of it (each queued row's stages to come at full-batch cost, weighted by the share
        of rows going on after each stage) and, with ``own``, the stages of the batches its
        images would run in (the one they join, and as many more as they fill).

        The rows waiting for stage 1 that would share its first batch (those past the last
        full batch) are not ahead of it: they run with it, at every stage, in its batches'
        cost. Counted in both, a queue of 31 rows made a 4 ms batch a forecast of about 10.
        They are load all the same: ``queued``, what the degrader reads, counts every row."""
        now, rows, running = time.monotonic(), list(self._rows), self._running
        per_row, survive = self.latency.per_row_full, self._survive
        full, estimate = self.max_batch_size, self.latency.estimate
        work = [0.0] * (self.num_exits + 1)
        for i in range(self.num_exits - 1, -1, -1):
            work[i] = per_row[i] + survive[i] * work[i + 1]
        queued = sum(r * w for r, w in zip(rows, work, strict=False))
        if running is not None:
            stage, n, start, seconds = running
            queued += max(0.0, start + seconds - now) + n * survive[stage] * work[stage + 1]
        along = rows[0] % full  # the rows that would share its first batch: not ahead of it
        wait = queued - along * work[0]
        own_s = []
        for i in range(self.num_exits if own else 0):
            first = min(images, full - along)  # its images in the batch it joins
            whole, rest = divmod(images - first, full)  # and in the batches they fill
            more = whole * estimate(i, full) + (estimate(i, rest) if rest else 0.0)
            own_s.append(estimate(i, along + first) + more)
            along = round(along * survive[i])
        return deadlines.Forecast(now, wait, np.array(own_s), queued)

    def check_room(self, n: int = 1, degrade: bool = False) -> int:
        """A :class:`QueueFullError` (503 with Retry-After) when ``n`` more images would pass
        the queue bound, and (for a request that allows ``degrade``) answering the degradable
        rows past exit 1 early would not make room for them; else how many of those rows must
        be answered (:meth:`_make_room`)."""
        over = (queued := sum(self._rows)) + n - self.max_queue_images
        if over > 0 and not (degrade and self._cuttable() >= over):
            raise QueueFullError(
                f"the queue is full ({queued} of {self.max_queue_images} images waiting); "
                "retry later"
            )
        return max(0, over)

    @contextlib.contextmanager
    def expecting(self) -> Iterator[Arrival]:
        """Marks a request on its way (being decoded) until it is submitted with the yielded
        :class:`Arrival`, or the block ends (it failed before reaching the queue)."""
        arrival = Arrival()
        with self._cond:
            self._incoming += 1
        try:
            yield arrival
        finally:
            with self._cond:
                if not arrival.arrived:
                    arrival.arrived = True
                    self._incoming -= 1
                    self._cond.notify_all()

    # --- requests (on an event loop) ---------------------------------------------------------

    def submit(
        self, ticket: Ticket, images: Tensor | Encoded, arrival: Arrival | None = None
    ) -> Job:
        """Queue ``images`` (normalised ``[N, C, H, W]``, or :class:`Encoded`) under ``ticket``."""
        blobs = images.blobs if isinstance(images, Encoded) else None
        if blobs is not None and (self.decode is None or self.normalize is None):
            raise ValueError("this engine was built without a decoder for encoded images")
        n = len(blobs) if blobs is not None else int(images.shape[0])  # type: ignore[union-attr]
        loop = asyncio.get_running_loop()
        job = Job(ticket, 0, n, loop, Answer(loop=loop), remaining=n)
        job.labels = images.labels if isinstance(images, Encoded) else None
        job.enqueued = time.monotonic()
        with self._cond:
            if self._stopping:
                raise NotReadyError("the server is shutting down")
            cut = self.check_room(n, ticket.degrade)
            job_id = next(self._ids)
            job.start = self.slots.allocate(job_id, ticket, n)  # may refuse: before any cut
            if cut:
                self._make_room(cut)
            self._jobs[job_id] = job
            state = [] if blobs is not None else [images]
            slots = np.arange(job.start, job.start + n)
            self._push(0, Rows(slots, state, job.enqueued, blobs, job))  # type: ignore[arg-type]
            if arrival is not None and not arrival.arrived:
                arrival.arrived = True  # with the images: a waiting worker sees both at once
                self._incoming -= 1
            if self._idle:
                self._cond.notify()
        if self._done:  # rows answered to make room
            self._deliver()
        return job

    async def infer(
        self,
        ticket: Ticket,
        images: Tensor | Encoded,
        arrival: Arrival | None = None,
        gone: Callable[[], Coroutine[Any, Any, Any]] | None = None,
    ) -> Any:
        """Queue ``images`` and wait for their :class:`~serving.jobs.Outcome`, at most until the
        ticket expires; ``gone`` returns when the client disconnects (the request then leaves)."""
        job = self.submit(ticket, images, arrival)
        loop = job.loop
        late = DeadlineExceededError("the request timeout passed before its images were classified")
        timer = loop.call_later(max(0.0, ticket.expires - time.monotonic()), self.cancel, job, late)
        watch = None if gone is None else loop.create_task(gone())
        if watch is not None:

            def went(task: asyncio.Task[Any]) -> None:
                if not task.cancelled() and task.exception() is None:
                    self.cancel(job, ClientGoneError("the client went away"))

            watch.add_done_callback(went)
        try:
            return await job.future
        except asyncio.CancelledError:
            self.cancel(job)
            raise
        finally:
            timer.cancel()
            if watch is not None:
                watch.cancel()

    def cancel(self, job: Job, error: BaseException | None = None) -> None:
        """On the request's loop: it is over; its rows leave the queues, its future fails with
        ``error``, unless the worker has reached its answer already (on its way to the loop):
        that answer stands. Failed then, a request whose timeout fired just after its last
        stage got a 504 while /metrics counted its images as served."""
        with self._cond:
            self._drop(job)
            reached = job.result
        if error is not None and not job.future.done():
            job.future.deliver(error if reached is None else reached)

    # --- the worker thread -------------------------------------------------------------------

    def _work(self) -> None:
        with torch.inference_mode():
            while True:
                try:
                    if (step := self._next()) is None:
                        return
                except Exception:  # a bug in the scheduling: the worker must outlive it
                    # Ended, it left the server up and ready with nobody to run a stage: every
                    # request waited for its timeout, for good. A pause, not a hot loop, for a
                    # fault that stays.
                    log.exception("choosing the next batch failed")
                    time.sleep(0.01)
                    continue
                try:
                    self._run(*step)
                except Exception:  # a bug in the bookkeeping: keep serving the others
                    log.exception("stage %d: a batch was left unfinished", step[0] + 1)
                self._running = None
                self.cpu_seconds = time.thread_time()

    def _next(self) -> tuple[int, list[Rows]] | None:
        """The stage to run and its rows; ``None`` once stopping and nothing is left."""
        while True:
            with self._cond:
                now = time.monotonic()
                soonest, waited = self._soonest(now)
                if self.slots.timed and self._sweep(now, soonest):
                    soonest, waited = self._soonest(now)
                if not self._done:  # else delivered first (outside the lock), then back here
                    decision = pick(
                        [self._view(k, soonest[k], waited[k]) for k in range(self.num_exits)],
                        now,
                        max_batch=self.max_batch_size,
                        max_wait_s=self.max_wait_s,
                        max_stage_wait_s=self.max_stage_wait_s,
                        incoming=self._incoming > 0 and not self._stopping,
                    )
                    if isinstance(decision, Run):
                        if parts := self._take(decision.stage, now, soonest[decision.stage]):
                            return decision.stage, parts
                        continue
                    if isinstance(decision, Idle) and self._stopping:
                        return None
                    self._idle = True
                    self._cond.wait(None if isinstance(decision, Idle) else decision.until - now)
                    self._idle = False
                    continue
            self._deliver()

    def _soonest(self, now: float) -> tuple[np.ndarray, np.ndarray]:
        """The earliest deadline of the live rows waiting at each stage, in the deadline order
        (:meth:`~serving.jobs.Slots.order_keys`: a row without one that has waited as long as
        the deadline traffic asks counts as due), and whether the stage holds such a row; read
        from their slots (inf, False: none; only deadline traffic pays the scan)."""
        soonest, waited = np.full(self.num_exits, math.inf), np.zeros(self.num_exits, bool)
        if self.slots.timed:
            waiting = np.flatnonzero(self.slots.queued >= 0)
            stage, keys = self.slots.queued[waiting], self.slots.order_keys(waiting, now)
            np.minimum.at(soonest, stage, keys)
            waited[stage[np.isfinite(keys) & np.isinf(self.slots.deadline[waiting])]] = True
        return soonest, waited

    def _view(self, stage: int, soonest: float, waited: bool) -> QueueView:
        queue = self._queues[stage]
        if not queue:
            return EMPTY
        rows = max(1, self._rows[stage])
        seconds = self.latency.estimate(stage, min(rows, self.max_batch_size))
        return QueueView(rows, queue[0].since, soonest - seconds, seconds, bool(waited))

    def _take(self, stage: int, now: float, soonest: float) -> list[Rows]:
        """Up to a batch of live rows, oldest first; with deadlines waiting (``soonest``, the
        earliest key), as many as finish before the earliest deadline still in reach, first in
        the deadline order when not all fit (:meth:`~serving.jobs.Slots.order_keys`)."""
        queue, slots, limit = self._queues[stage], self.slots, self.max_batch_size
        if timed := math.isfinite(soonest):
            fits = lambda n: self.latency.estimate(stage, n)  # noqa: E731
            most = max(1, min(limit, self._rows[stage]))  # the most a batch can take now
            # Sized for a deadline, not a key: a row without one that has waited goes first
            # but has nothing to fit, and one already out of reach is lost whatever the batch.
            # Their keys in the past once made every batch here full, and the rows with a
            # deadline still in reach rode it, late.
            waiting = slots.deadline[np.flatnonzero(slots.queued == stage)]
            reach = waiting[waiting >= now + fits(1)]
            if len(reach):
                limit = deadlines.batch_limit(float(reach.min()) - now, most, fits)
        if timed and self._rows[stage] > limit:
            taken, kept = self._earliest(queue, limit, now)
            self._queues[stage] = kept
        else:
            taken = []
            while limit > 0 and queue:
                rows = self._live(queue.popleft())
                if len(rows) > limit:
                    queue.appendleft(rows.pick(np.arange(limit, len(rows))))
                    rows = rows.pick(np.arange(limit))
                if len(rows):
                    taken.append(rows)
                    limit -= len(rows)
        for rows in taken:
            slots.queued[rows.slots] = -1
            self._rows[stage] -= len(rows)
        return taken

    def _earliest(
        self, queue: deque[Rows], limit: int, now: float
    ) -> tuple[list[Rows], deque[Rows]]:
        """The ``limit`` live rows of ``queue`` first in the deadline order (row by row, across
        its groups), and the rest, each in the order they joined. Taken group by group (the
        earliest group whole), a group's rows with no hurry took the room of another's due
        ones, which were then answered early, or late."""
        groups = [g for g in map(self._live, queue) if len(g)]
        if not groups:
            return [], deque()
        keys = np.concatenate([self.slots.order_keys(g.slots, now) for g in groups])
        first = deadlines.order(keys, limit)
        taken: list[Rows] = []
        kept: deque[Rows] = deque()
        at = 0
        for g in groups:
            mine = first[(first >= at) & (first < at + len(g))] - at
            at += len(g)
            if len(mine) < len(g):
                kept.append(g if not len(mine) else g.pick(np.setdiff1d(np.arange(len(g)), mine)))
            if len(mine):
                taken.append(g if len(mine) == len(g) else g.pick(mine))
        return taken, kept

    def _live(self, rows: Rows) -> Rows:
        """``rows`` less those of requests that went away (counted done here; maybe none left)."""
        if rows.job is not None and not rows.job.cancelled:  # one request's rows, still wanted
            return rows
        if (live := self.slots.live[rows.slots]).all():
            return rows
        self._count(rows.slots[~live])
        return rows.pick(np.flatnonzero(live))

    def _sweep(self, now: float, soonest: np.ndarray) -> bool:
        """Refuse the ``deadline_policy=strict`` requests whose rows waiting for stage 1 could
        no longer reach exit 1 by their deadline, and answer the rows waiting for a later stage
        that could not finish it in time even if it started now, from the exit they passed
        last (``soonest``: each stage's earliest deadline); whether any were."""
        swept = False
        if soonest[0] < (finish := now + self.latency.estimate(0, 1)):
            waiting = np.flatnonzero(self.slots.queued == 0)
            if len(lost := waiting[self.slots.strict_by[waiting] < finish]):
                # A 503 now, while the client can still go elsewhere, not a late answer.
                self._fail(lost, deadlines.refused_late(), held=False)
                swept = True
        for stage in range(1, self.num_exits):
            finish = now + self.latency.estimate(stage, 1)
            if soonest[stage] < finish:
                late = lambda s, by=finish: deadlines.late(self.slots.deadline[s], by)  # noqa: E731
                swept |= self._answer_waiting(stage, late, DEADLINE) > 0
        return swept

    def _answer_waiting(
        self,
        stage: int,
        marked: Callable[[np.ndarray], np.ndarray],
        reason: int,
        most: int | None = None,
    ) -> int:
        """Answer the rows waiting for ``stage`` (past exit 1) that ``marked`` picks (a mask
        over slots), at most ``most`` in the order they wait, from the exit they passed last
        with ``reason``; how many."""
        kept: deque[Rows] = deque()
        answered = 0
        for rows in map(self._live, self._queues[stage]):
            room = None if most is None else most - answered
            if len(picked := np.flatnonzero(marked(rows.slots))[:room]):
                gone = rows.slots[picked]
                self.slots.queued[gone] = -1
                self._rows[stage] -= len(gone)
                self._count(gone, np.full(len(gone), reason))
                answered += len(gone)
                rows = rows.pick(np.setdiff1d(np.arange(len(rows)), picked))
            if len(rows):
                kept.append(rows)
        self._queues[stage] = kept
        return answered

    def _run(self, stage: int, parts: list[Rows]) -> None:
        """Run ``parts`` through ``stage``, and straight on through the next stages while the
        survivors have the engine to themselves (nothing waits: the scheduler would pick them
        anyway). Rows with a deadline go back to the queues, where its rules apply."""
        if stage == 0:
            # In hand while decoding too: out of the queues already, so without this the
            # admission forecast saw an idle engine for as long as the decoding took.
            n = sum(len(p) for p in parts)
            self._running = (0, n, time.monotonic(), self.latency.estimate(0, n))
            if not (parts := self._decode(parts)):
                return
        try:
            rows = join(parts)
        except Exception:  # admission gives every request one shape: a bug, never the client's
            log.exception("stage %d: %d parts could not be joined", stage + 1, len(parts))
            with self._cond:
                self._fail(
                    np.concatenate([p.slots for p in parts]), EngineFailureError("inference failed")
                )
            return
        s, state = rows.slots, rows.state
        timed = bool(self.slots.timed) and bool(np.isfinite(self.slots.deadline[s]).any())
        while (out := self._stage(stage, s, state, timed)) is not None:
            s, state, done, queue = out
            stage += 1
            if queue:
                with self._cond:
                    self._push(stage, Rows(s, state, done))
                return

    def _stage(
        self, stage: int, s: np.ndarray, state: Any, timed: bool
    ) -> tuple[np.ndarray, Any, float, bool] | None:
        """One stage batch: run, judge, answer who stops; the survivors' slots and state, when
        they left the stage and whether they join the next stage's queue (else they run on at
        once), or None (nobody goes on)."""
        n, start = len(s), time.monotonic()
        self._running = (stage, n, start, self.latency.estimate(stage, n))
        try:
            # Everything up to the counting: a fault anywhere here (the network, or a bug in
            # the bookkeeping) fails these requests; past this block rows would be left to
            # their timeout, their slots never freed.
            leaving, reason, gone, going, state, done, queue = self._judge(
                stage, s, state, timed, start
            )
        except Exception:
            log.exception("stage %d failed on a batch of %d rows", stage + 1, n)
            with self._cond:
                self._fail(s, EngineFailureError("inference failed"))
            return None
        if reason is not None or gone.any():
            with self._cond:
                self._count(leaving, reason)
                self._count(s[gone])
            if self._done:
                self._deliver()
        return (s[going], state, done, queue) if len(going) else None

    def _judge(
        self, stage: int, s: np.ndarray, state: Any, timed: bool, start: float
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray, Any, float, bool]:
        """Run ``stage`` on rows ``s`` and judge them: who leaves and why (their results in
        their slots), whose request went away, who goes on (with their state), when the stage
        ended, and whether the survivors join a queue; its latency, survival share and metrics
        recorded."""
        n, slots, k = len(s), self.slots, self.num_exits
        state = self.runner.initial_state(state[0]) if stage == 0 else state
        state, logits = self.runner.run_stage(stage, state)
        thresholds = slots.thresholds[s, stage]
        verdict = judge_stage(logits, stage, k, thresholds, slots.cap[s])
        done = time.monotonic()
        leave = verdict.stop
        if timed and stage + 1 < k and not leave.all():
            nxt = min(self._rows[stage + 1] + int((~leave).sum()), self.max_batch_size)
            finish = done + self.latency.estimate(stage + 1, nxt)
            leave = leave | deadlines.late(slots.deadline[s], finish)
        # The survivors queue for the next stage when it has rows or more are on their way
        # (deadline rows always: the queues apply its rules), else run on at once. Decided once
        # here: a queued row may be answered from this exit later, by its deadline or to make
        # room in a full queue (if degradable), so it needs its top-k from here; the rows of a
        # request running alone do not pay for one at every stage.
        queue = timed or bool(self._incoming) or any(self._rows)
        if slots.topped:
            due = leave
            if queue:
                due = due | slots.degrade[s] | np.isfinite(slots.deadline[s])
            if (wanted := (slots.top_k[s] > 0) & due).any():
                top = top_k_of(logits, wanted, int(slots.top_k[s][wanted].max()))
                slots.set_top(s[wanted], *top)
        # Rows whose request went away while the stage ran are neither answered nor run on.
        gone = ~slots.live[s]
        survive = 1.0 - np.count_nonzero(leave) / n
        leave = leave & ~gone
        going = np.flatnonzero(~(leave | gone))
        if 0 < len(going) < n:
            state = select_rows(state, torch.from_numpy(going).to(state[0].device))
        slots.passed(s, stage, verdict.prediction, verdict.confidence)
        leaving = s[leave]
        if len(leaving) == 0:
            reason = None
        elif stage == k - 1:
            reason = np.full(len(leaving), CAP)  # the last exit has no threshold: it takes the rest
        else:
            capped = np.where(slots.max_index[leaving] <= stage, CAP, DEADLINE)
            reason = np.where(verdict.confidence[leave] >= thresholds[leave], CONFIDENT, capped)
        self.latency.observe(stage, n, done - start)
        self._survive[stage] += 0.05 * (survive - self._survive[stage])
        seconds, waits = time.monotonic() - start, []
        for job_id, _ in _tally(slots.job[s]):
            job = self._jobs[job_id]
            job.compute_seconds += seconds
            if not job.started:
                job.started = True
                waits.append(start - job.enqueued)
        if self.metrics is not None:
            self.metrics.record_stage(stage, n, done - start, waits)
        return leaving, reason, gone, going, state, done, queue

    def _decode(self, parts: list[Rows]) -> list[Rows]:
        """Decode stage 1's encoded images and normalise all their pixels in one call; a
        request whose image cannot be decoded fails alone (its 4xx)."""
        ready, pixels = [], []
        for part in parts:
            if part.encoded is not None:
                assert part.job is not None and self.decode is not None  # one request's images
                start = time.monotonic()
                try:
                    pixels.append(self.decode(part.encoded, _names(part, part.job)))
                except Exception as err:
                    if not isinstance(err, ExitwiseError):  # not the client's image: a bug
                        log.exception("decoding %d images failed", len(part))
                        err = EngineFailureError("decoding failed")
                    with self._cond:
                        self._fail(part.slots, err)
                    continue
                part.job.decode_seconds += time.monotonic() - start
            ready.append(part)
        if not pixels:
            return ready
        decoded = [p for p in ready if p.encoded is not None]
        assert self.normalize is not None
        try:
            x, at = self.normalize(torch.from_numpy(np.concatenate(pixels))), 0
        except Exception:  # not one image's fault (each decoded): a bug, or the device
            log.exception("normalising %d decoded images failed", sum(map(len, decoded)))
            with self._cond:
                self._fail(
                    np.concatenate([p.slots for p in decoded]),
                    EngineFailureError("decoding failed"),
                )
            return [p for p in ready if p.encoded is None]
        for part in decoded:
            part.state, part.encoded = [x[at : at + len(part)]], None
            at += len(part)
        return ready

    def _deliver(self) -> None:
        """Resolve the futures of the requests that completed: one call per event loop. Called
        without the lock: a loop woken while the worker holds it would block on it at once (in
        its next request's submit), and the two threads would hand the interpreter back and
        forth."""
        with self._cond:
            done, self._done = self._done, []
        by_loop: dict[asyncio.AbstractEventLoop, list[Job]] = {}
        for job in done:
            by_loop.setdefault(job.loop, []).append(job)
        for loop, jobs in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(_resolve, jobs)

    # --- bookkeeping (under the lock) ----------------------------------------------------------

    def _push(self, stage: int, rows: Rows) -> None:
        if not len(rows := self._live(rows)):
            return
        self.slots.queued[rows.slots] = stage
        self._queues[stage].append(rows)
        self._rows[stage] += len(rows)

    def _count(self, slots: np.ndarray, reasons: np.ndarray | None = None) -> None:
        """``slots`` are done with: answered (for ``reasons``: their results are in their slots
        already) or dropped; requests with none left complete. Their bookkeeping comes first:
        a fault in the answers or the metrics fails those requests (a 500), it leaks nothing."""
        if not len(slots):
            return
        complete = []
        for job_id, count in _tally(self.slots.job[slots]):
            if (job := self._jobs.get(job_id)) is None:  # a bug elsewhere: never fatal here
                log.error("rows of an unknown request %d", job_id)
                continue
            job.remaining -= count
            if job.remaining == 0:
                del self._jobs[job_id]
                complete.append(job)
        answered = [job for job in complete if not job.cancelled]
        results: list[Outcome | BaseException]
        try:
            if reasons is not None:
                self.slots.reason[slots] = reasons
            outcomes, finite = self.slots.outcomes(answered, time.monotonic())
            results = list(outcomes) if finite else [_checked(o) for o in outcomes]
            served = [r for r in results if isinstance(r, Outcome)]
            if self.metrics is not None and served:
                # Counted once a request's answer is whole, not as each image leaves a stage:
                # the images of a request that then failed (a bad image in a later batch, its
                # timeout, its client gone) were counted as served, its error notwithstanding.
                self.metrics.answered(
                    np.concatenate([r.exit for r in served]),
                    np.concatenate([r.reason for r in served]),
                    self.exit_mflops,
                )
        except Exception:
            log.exception("answering %d requests failed", len(answered))
            results = [EngineFailureError("inference failed")] * len(answered)
        for job, result in zip(answered, results, strict=True):
            job.result = result
            self._done.append(job)
        if complete:
            self.slots.free(complete)

    def _cuttable(self) -> int:
        """Degradable rows waiting for stage 2 or later: the room :meth:`_make_room` can make."""
        waiting = self.slots.queued
        return int(np.count_nonzero((waiting > 0) & self.slots.degrade))

    def _make_room(self, need: int) -> None:
        """Answer ``need`` degradable rows waiting for stage 2 or later from the exit they
        passed last (reason ``overload``; :meth:`check_room` made sure there are enough): those
        with the most stages still to run first, the oldest first at a stage.

        A step up in load fills the queue with work admitted before the degrader reached the
        cheapest point; that work, waiting for its deeper stages, held the queue bound while
        stage 1 filled, and new requests the cheapest point could serve were refused. Each of
        these rows has an answer already (its request allowed a cheaper one), and every stage it
        skips is time for the new request's first."""
        degradable = lambda s: self.slots.degrade[s]  # noqa: E731
        for stage in range(1, self.num_exits):
            if need > 0:
                need -= self._answer_waiting(stage, degradable, OVERLOAD, need)

    def _drop(self, job: Job) -> None:
        """The request is over: its rows stop counting as waiting now, and are dropped (and
        counted done) when the worker meets them, in a queue or back from a stage. Its slots
        are freed only then: a queue holds no slot that another request may have been given."""
        if job.cancelled or job.remaining == 0:  # over already: its slots may be another's now
            return
        job.cancelled = True
        span = slice(job.start, job.start + job.n)
        self.slots.live[span] = False
        where = self.slots.queued[span]
        for stage, count in enumerate(np.bincount(where[where >= 0], minlength=self.num_exits)):
            self._rows[stage] -= int(count)
        self.slots.queued[span] = -1

    def _fail(self, slots: np.ndarray, err: BaseException, held: bool = True) -> None:
        """The requests of ``slots`` fail with ``err``: the worker holds those rows (counted
        done now), or they wait in a queue (``held=False``: dropped when the worker meets
        them)."""
        for job_id, _ in _tally(self.slots.job[slots]):
            if (job := self._jobs.get(job_id)) is not None and not job.cancelled:
                job.result = err
                self._done.append(job)
                self._drop(job)
        if held:
            self._count(slots)


def _resolve(jobs: list[Job]) -> None:
    """On the requests' loop: each waiting handler resumes here (:class:`Answer`)."""
    for job in jobs:
        if not job.future.done() and job.result is not None:
            job.future.deliver(job.result)


def _checked(outcome: Outcome) -> Outcome | BaseException:
    """``outcome``, or the 400 for inputs whose network outputs are not finite: a tensor of
    finite values so large that the logits overflow (an image cannot do it). The answer would
    say nothing (and NaN is not JSON)."""
    if np.isfinite(outcome.confidence).all():
        return outcome
    return BadRequestError(
        "tensor input values are out of range: the network's outputs were not finite"
    )


def _names(part: Rows, job: Job) -> Sequence[str] | None:
    """What a decoding error calls the images of ``part``: the request's labels, or for a part of
    a request split between batches, their positions in it (1-based), so that the error names
    the image the client sent, not its place in the part."""
    if len(part) == job.n:
        return job.labels
    at = (part.slots - job.start).tolist()
    return [job.labels[i] for i in at] if job.labels is not None else [str(i + 1) for i in at]


def _tally(ids: np.ndarray) -> Iterable[tuple[int, int]]:
    """``(id, count)`` of each distinct id (a Python count beats numpy's sort on a batch)."""
    if len(ids) == 1:
        return ((int(ids[0]), 1),)
    if len(ids) > 256:
        values, counts = np.unique(ids, return_counts=True)
        return zip(values.tolist(), counts.tolist(), strict=True)
    return Counter(ids.tolist()).items()
