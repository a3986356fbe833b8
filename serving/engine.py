"""The engine: a queue in front of every stage and one worker thread that runs them.

Stage-level continuous batching. A request's images join stage 1's queue together, each carrying
its request's thresholds and cap. The worker repeatedly asks the scheduler
(:func:`serving.scheduler.pick`) which stage to run, takes up to ``max_batch_size`` rows from
that stage's queue (from one request or many, whatever their budgets), and has the
:class:`~serving.execute.StageExecutor` run the stage, apply the exit rule and answer who stops;
the survivors join the next stage's queue, where they wait with the survivors of other batches.
Late stages therefore run on full batches when traffic allows, while new images keep entering
stage 1; no row waits longer than ``max_stage_wait_s`` in front of a stage, and a row with a
``deadline_ms`` is run in time or answered from the exit it passed last.

A request completes the moment its last image is answered: its asyncio future is resolved on
the request's event loop (thread-safe), and the event loop never waits on the model. A full
engine refuses new requests at once (:class:`~serving.errors.QueueFullError`, a 503 with
Retry-After) instead of letting them hang; rows of a request whose hard deadline passed or whose
client went away are dropped from every queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from exitwise.runtime import StageRunner, run_early_exit

from .budgets import ExitPlan
from .errors import DeadlineExceededError, NotReadyError, QueueFullError
from .execute import StageExecutor
from .jobs import (
    Arrival,
    Decoder,
    Encoded,
    EngineFailureError,
    ImageResult,
    InferOutcome,
    Job,
)
from .latency import LatencyModel
from .metrics import Metrics
from .scheduler import Idle, Run, deadline_batch_limit, pick
from .stage_queue import Chunk, StageQueue, concat

__all__ = [
    "Arrival",
    "Encoded",
    "Engine",
    "EngineFailureError",
    "ImageResult",
    "InferOutcome",
]

log = logging.getLogger("exitwise.serving.engine")

# The longest a row may wait in front of a stage while its queue collects company (and at
# least max_wait: the first stage's batch-filling wait is one such wait).
DEFAULT_MAX_STAGE_WAIT_S = 0.005


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
        """``decode`` (encoded images to uint8 ``[N, C, H, W]`` pixels) and ``normalize``
        (pixels to network input) are needed to submit :class:`Encoded` images."""
        if len(exit_mflops) != runner.num_exits:
            raise ValueError("one MFLOPs figure per exit is required")
        self.num_exits = runner.num_exits
        self.exit_mflops = list(exit_mflops)
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        stage_wait = DEFAULT_MAX_STAGE_WAIT_S if max_stage_wait_s is None else max_stage_wait_s
        self.max_stage_wait_s = max(stage_wait, max_wait_s)
        self.max_queue_images = max_queue_images
        self.metrics = metrics
        self.latency = LatencyModel(runner.num_exits, max_batch_size)
        self.executor = StageExecutor(
            runner, self.exit_mflops, self.latency, metrics, decode, normalize
        )
        self._decodes = decode is not None and normalize is not None
        self._queues = [StageQueue() for _ in range(runner.num_exits)]
        self._queued = 0  # rows in all queues
        self._cond = threading.Condition()
        self._incoming = 0
        self._stopping = False
        self._thread: threading.Thread | None = None

    @property
    def runner(self) -> StageRunner:
        """The stage runner (the executor's: replacing it here replaces it there)."""
        return self.executor.runner

    @runner.setter
    def runner(self, runner: StageRunner) -> None:
        self.executor.runner = runner

    # --- life cycle ------------------------------------------------------------------------------

    def warm_up(self, input_shape: tuple[int, int, int], batch_sizes: tuple[int, ...] = ()) -> None:
        """Run every stage at batch 1 and at the largest batch (allocators, kernels, autotuning),
        then time every stage at each batch size bucket for the latency model."""
        k = self.num_exits
        for n in batch_sizes or (1, self.max_batch_size):
            x = torch.zeros((n, *input_shape), dtype=torch.float32)
            thr = np.full((n, k), np.inf, dtype=np.float64)
            run_early_exit(self.runner, x, thr, np.full(n, k - 1, dtype=np.int64))
        self._measure(input_shape)

    @torch.inference_mode()
    def _measure(self, input_shape: tuple[int, int, int], repeats: int = 2) -> None:
        for n in self.latency.buckets:
            x = torch.zeros((n, *input_shape), dtype=torch.float32)
            best = [float("inf")] * self.num_exits
            for _ in range(repeats):
                state = self.runner.initial_state(x)
                for index in range(self.num_exits):
                    start = time.perf_counter()
                    state, logits = self.runner.run_stage(index, state)
                    logits.cpu()  # the confidences' sync point, as served
                    best[index] = min(best[index], time.perf_counter() - start)
            for index, seconds in enumerate(best):
                self.latency.set(index, n, seconds)

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
        """Rows waiting in front of any stage."""
        return self._queued

    def queue_rows(self) -> list[int]:
        """Rows waiting in front of each stage (index 0 = stage 1)."""
        with self._cond:
            return [q.rows for q in self._queues]

    def queue_delay(self) -> float:
        """Seconds requests wait before their first stage now: the recent average, or the age
        of the oldest request not started yet when that is longer (a stall shows at once)."""
        now = time.monotonic()
        with self._cond:
            oldest = self._queues[0].oldest_unstarted()
        age = max(0.0, now - oldest) if oldest != float("inf") else 0.0
        return max(self.executor.entry_wait(now), age)

    @contextlib.contextmanager
    def expecting(self) -> Iterator[Arrival]:
        """Marks a request on its way (being read or decoded) until it is submitted with the
        yielded :class:`Arrival`, or the block ends (it failed before reaching the queue)."""
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

    # --- requests (called on an event loop) ---------------------------------------------------

    def submit(
        self,
        images: Tensor | Encoded,
        plan: ExitPlan,
        top_k: int,
        deadline: float,
        arrival: Arrival | None = None,
        answer_by: float | None = None,
    ) -> Job:
        """Queue ``images`` (a normalised ``[N, C, H, W]`` batch, or :class:`Encoded`);
        ``answer_by``: the request's ``deadline_ms`` as a ``time.monotonic()`` moment."""
        encoded = images if isinstance(images, Encoded) else None
        if encoded is not None and not self._decodes:
            raise ValueError("this engine was built without a decoder for encoded images")
        n = len(encoded) if encoded is not None else int(images.shape[0])  # type: ignore[union-attr]
        loop = asyncio.get_running_loop()
        job = Job(
            top_k=top_k,
            deadline=deadline,
            loop=loop,
            future=loop.create_future(),
            results=[None] * n,
            remaining=n,
            answer_by=answer_by,
        )
        chunk = Chunk(
            state=[] if encoded is not None else [images],  # type: ignore[list-item]
            jobs=[job] * n,
            rows=np.arange(n),
            thresholds=np.broadcast_to(plan.thresholds, (n, self.num_exits)),
            caps=np.full(n, plan.max_index, dtype=np.int64),
            since=job.enqueued,
            encoded=None if encoded is None else encoded.blobs,
            labels=None if encoded is None else encoded.labels,
        )
        with self._cond:
            if self._stopping:
                raise NotReadyError("the server is shutting down")
            if self._queued + n > self.max_queue_images:
                raise QueueFullError(
                    f"the queue is full ({self._queued} of {self.max_queue_images} images "
                    "waiting); retry later"
                )
            self._queues[0].push(chunk)
            self._queued += n
            if arrival is not None and not arrival.arrived:
                # In the same critical section as the images: a waiting worker sees them at once.
                arrival.arrived = True
                self._incoming -= 1
            self._set_depth()
            self._cond.notify_all()
        return job

    async def infer(
        self,
        images: Tensor | Encoded,
        plan: ExitPlan,
        top_k: int,
        deadline: float,
        arrival: Arrival | None = None,
        answer_by: float | None = None,
    ) -> InferOutcome:
        """Queue ``images`` and wait for all of them, at most until ``deadline``."""
        job = self.submit(images, plan, top_k, deadline, arrival, answer_by)
        # One timer, not asyncio.wait_for (a wrapper per await): at the deadline the request's
        # rows leave the queues and its future fails with a 504.
        timer = job.loop.call_later(max(0.0, deadline - time.monotonic()), self._expire, job)
        try:
            return await job.future
        except asyncio.CancelledError:  # the client went away
            self._cancel(job)
            raise
        finally:
            timer.cancel()

    def _expire(self, job: Job) -> None:
        """On the request's loop: its deadline passed before all its images were classified."""
        if not job.future.done():
            self._cancel(job)
            job.future.set_exception(
                DeadlineExceededError(
                    "the request deadline passed before the images were classified"
                )
            )

    def _cancel(self, job: Job) -> None:
        with self._cond:
            job.cancelled = True
            self._queued -= sum(q.drop(lambda j: j is job) for q in self._queues)
            self._set_depth()

    def _set_depth(self) -> None:
        if self.metrics is not None:
            self.metrics.set_queue_depth([q.rows for q in self._queues])

    # --- the worker thread ----------------------------------------------------------------------

    def _work(self) -> None:
        with torch.inference_mode():
            while True:
                step = self._next_step()
                if step is None:
                    return
                index, chunks = step
                if index == 0:
                    chunks = self.executor.decode_entry(chunks)
                if not chunks:
                    continue
                chunk: Chunk | None = concat(chunks)
                try:
                    if index > 0:
                        chunk = self.executor.answer_late(index, chunk, time.monotonic())  # type: ignore[arg-type]
                    if chunk is None:
                        continue
                    waiting = self._queues[index + 1].rows if index + 1 < self.num_exits else 0
                    survivors = self.executor.run(index, chunk, waiting)
                except Exception:  # the network or a bug: fail these requests, keep serving
                    log.exception("stage %d failed on a batch of rows", index + 1)
                    for job in {id(j): j for c in chunks for j in c.jobs}.values():
                        job.fail(EngineFailureError("inference failed"))
                    continue
                if survivors is not None:
                    self._advance(index + 1, survivors)

    def _next_step(self) -> tuple[int, list[Chunk]] | None:
        """The stage to run and its batch; ``None`` once stopping and nothing is left."""
        with self._cond:
            while True:
                now = time.monotonic()
                views = [
                    q.view(self.latency.estimate(k, min(q.rows, self.max_batch_size)))
                    for k, q in enumerate(self._queues)
                ]
                decision = pick(
                    views,
                    now,
                    max_batch=self.max_batch_size,
                    max_wait_s=self.max_wait_s,
                    max_stage_wait_s=self.max_stage_wait_s,
                    incoming=self._incoming > 0 and not self._stopping,
                )
                if isinstance(decision, Run):
                    limit = self._batch_limit(decision.stage, now)
                    taken = self._queues[decision.stage].take(limit)
                    self._queued -= sum(len(c) for c in taken)
                    live = [c for c in (self._live(c, now) for c in taken) if c is not None]
                    self._set_depth()
                    if live:
                        return decision.stage, live
                elif isinstance(decision, Idle):
                    if self._stopping:
                        return None
                    self._cond.wait()
                else:
                    self._cond.wait(decision.until - now)

    def _batch_limit(self, stage: int, now: float) -> int:
        """``max_batch_size``, or fewer rows when a full batch would end after the earliest
        ``deadline_ms`` waiting for this stage and a smaller one would not."""
        room = self._queues[stage].answer_by() - now
        return deadline_batch_limit(
            room, self.max_batch_size, lambda rows: self.latency.estimate(stage, rows)
        )

    @staticmethod
    def _live(chunk: Chunk, now: float) -> Chunk | None:
        """``chunk`` without the rows of requests that were cancelled or are past their hard
        deadline (those fail with a 504 here). Under the lock."""
        dead = {id(j): j for j in chunk.jobs if j.cancelled or now > j.deadline}
        if not dead:
            return chunk
        for job in dead.values():
            if not job.cancelled:
                job.fail(DeadlineExceededError("the request deadline passed"))
        mask = np.array([id(j) not in dead for j in chunk.jobs], dtype=bool)
        return chunk.keep(mask) if mask.any() else None

    def _advance(self, index: int, survivors: Chunk) -> None:
        """Queue the survivors of a stage in front of stage ``index`` (0-based)."""
        with self._cond:
            survivors.since = time.monotonic()
            if any(j.cancelled for j in survivors.jobs):
                alive = np.array([not j.cancelled for j in survivors.jobs], dtype=bool)
                if not alive.any():
                    return
                survivors = survivors.keep(alive)
            self._queues[index].push(survivors)
            self._queued += len(survivors)
            self._set_depth()
