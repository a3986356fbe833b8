"""The engine: a queue in front of every stage and one worker thread that runs them.

Stage-level continuous batching. A request's images join stage 1's queue together, each carrying
its request's thresholds and cap. The worker repeatedly asks the scheduler
(:func:`serving.scheduler.pick`) which stage to run, takes up to ``max_batch_size`` rows from
that stage's queue (from one request or many, whatever their budgets), runs the stage, applies
the exit rule (:func:`exitwise.runtime.judge_stage`, the function calibration's simulation
uses) and puts the survivors in the next stage's queue, where they wait with the survivors of
other batches. Late stages therefore run on full batches when traffic allows, while new images
keep entering stage 1; no row waits longer than ``max_stage_wait_s`` in front of a stage.

A request completes the moment its last image exits: its asyncio future is resolved on the
request's event loop (thread-safe), and the event loop never waits on the model. A full engine
refuses new requests at once (:class:`~serving.errors.QueueFullError`, a 503 with Retry-After)
instead of letting them hang; rows of a request whose deadline passed or whose client went away
are dropped from every queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from exitwise.errors import ExitwiseError
from exitwise.runtime import StageRunner, judge_stage, run_early_exit, top_k_of

from .budgets import ExitPlan
from .errors import DeadlineExceededError, NotReadyError, QueueFullError
from .metrics import Metrics
from .scheduler import Idle, Run, pick
from .stage_queue import Chunk, StageQueue, concat

log = logging.getLogger("exitwise.serving.engine")

# The longest a row may wait in front of a stage while its queue collects company (and at
# least max_wait: the first stage's batch-filling wait is one such wait).
DEFAULT_MAX_STAGE_WAIT_S = 0.005


class EngineFailureError(RuntimeError):
    """The network raised while running a batch (a bug or a device fault: a generic 500)."""


@dataclass(frozen=True)
class ImageResult:
    exit_index: int  # 0-based
    class_id: int
    confidence: float
    top: tuple[tuple[int, float], ...]  # (class id, probability), best first


@dataclass(frozen=True)
class InferOutcome:
    results: list[ImageResult]
    queue_seconds: float  # the request's time in the engine not spent decoding or computing
    compute_seconds: float  # summed over the stage batches its images ran in
    decode_seconds: float = 0.0  # decoding its images in the worker (encoded inputs)


@dataclass(frozen=True)
class Encoded:
    """Images still encoded (PNG, JPEG, ...): the worker decodes them with the engine's
    ``decode`` just before they run, and normalises a whole batch's pixels at once."""

    blobs: Sequence[bytes]
    labels: Sequence[str] | None = None  # per image, for error messages

    def __len__(self) -> int:
        return len(self.blobs)


Decoder = Callable[[Sequence[bytes], Sequence[str] | None], np.ndarray]


@dataclass(eq=False)
class Arrival:
    """A request announced by :meth:`Engine.expecting`; ``arrived`` once it is queued."""

    arrived: bool = False


@dataclass(eq=False)
class _Job:
    """One request in the engine. ``results``, ``remaining`` and the timings belong to the
    worker thread; ``cancelled`` may be set from the event loop (under the engine's lock)."""

    top_k: int
    deadline: float  # time.monotonic()
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[InferOutcome]
    results: list[ImageResult | None]
    remaining: int
    enqueued: float = field(default_factory=time.monotonic)
    cancelled: bool = False
    compute_seconds: float = 0.0
    decode_seconds: float = 0.0


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
        self._decode = decode
        self._normalize = normalize
        self.runner = runner
        self.num_exits = runner.num_exits
        self.exit_mflops = list(exit_mflops)
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        stage_wait = DEFAULT_MAX_STAGE_WAIT_S if max_stage_wait_s is None else max_stage_wait_s
        self.max_stage_wait_s = max(stage_wait, max_wait_s)
        self.max_queue_images = max_queue_images
        self.metrics = metrics
        self._queues = [StageQueue() for _ in range(runner.num_exits)]
        self._queued = 0  # rows in all queues
        self._cond = threading.Condition()
        self._incoming = 0
        self._stopping = False
        self._thread: threading.Thread | None = None

    # --- life cycle ------------------------------------------------------------------------------

    def warm_up(self, input_shape: tuple[int, int, int], batch_sizes: tuple[int, ...] = ()) -> None:
        """Run every stage at batch 1 and at the largest batch (allocators, kernels, autotuning)."""
        k = self.num_exits
        for n in batch_sizes or (1, self.max_batch_size):
            x = torch.zeros((n, *input_shape), dtype=torch.float32)
            thr = np.full((n, k), np.inf, dtype=np.float64)
            run_early_exit(self.runner, x, thr, np.full(n, k - 1, dtype=np.int64))

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
    ) -> _Job:
        """Queue ``images`` (a normalised ``[N, C, H, W]`` batch, or :class:`Encoded`)."""
        encoded = images if isinstance(images, Encoded) else None
        if encoded is not None and (self._decode is None or self._normalize is None):
            raise ValueError("this engine was built without a decoder for encoded images")
        n = len(encoded) if encoded is not None else int(images.shape[0])  # type: ignore[union-attr]
        loop = asyncio.get_running_loop()
        job = _Job(
            top_k=top_k,
            deadline=deadline,
            loop=loop,
            future=loop.create_future(),
            results=[None] * n,
            remaining=n,
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
    ) -> InferOutcome:
        """Queue ``images`` and wait for all of them, at most until ``deadline``."""
        job = self.submit(images, plan, top_k, deadline, arrival)
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

    def _expire(self, job: _Job) -> None:
        """On the request's loop: its deadline passed before all its images were classified."""
        if not job.future.done():
            self._cancel(job)
            job.future.set_exception(
                DeadlineExceededError(
                    "the request deadline passed before the images were classified"
                )
            )

    def _cancel(self, job: _Job) -> None:
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
                    chunks = self._decode_entry(chunks)
                    if not chunks:
                        continue
                chunk = concat(chunks)
                try:
                    self._run(index, chunk)
                except Exception:  # the network or a bug: fail these requests, keep serving
                    log.exception("stage %d failed on a batch of %d rows", index + 1, len(chunk))
                    for job in {id(j): j for j in chunk.jobs}.values():
                        self._fail(job, EngineFailureError("inference failed"))

    def _decode_entry(self, chunks: list[Chunk]) -> list[Chunk]:
        """Decode the encoded chunks of a first-stage batch and normalise all their pixels in
        one call; a request whose image cannot be decoded fails alone (its 4xx)."""
        pending = [c for c in chunks if c.encoded is not None]
        if not pending:
            return chunks
        assert self._decode is not None and self._normalize is not None  # checked in submit
        pixels: list[np.ndarray] = []
        ready: list[Chunk] = []
        for c in chunks:
            if c.encoded is None:
                ready.append(c)
                continue
            job = c.jobs[0]  # a first-stage chunk holds one request's images
            start = time.monotonic()
            try:
                pixels.append(self._decode(c.encoded, c.labels))
            except ExitwiseError as err:  # the client's image: a 4xx for its request alone
                self._fail(job, err)
                continue
            except Exception:
                log.exception("decoding %d images failed", len(c))
                self._fail(job, EngineFailureError("decoding failed"))
                continue
            job.decode_seconds += time.monotonic() - start
            ready.append(c)
        if pixels:
            x = self._normalize(torch.from_numpy(np.concatenate(pixels)))
            offset = 0
            for c in ready:
                if c.encoded is not None:
                    c.state, c.encoded = [x[offset : offset + len(c)]], None
                    offset += len(c)
        return ready

    def _next_step(self) -> tuple[int, list[Chunk]] | None:
        """The stage to run and its batch; ``None`` once stopping and nothing is left."""
        with self._cond:
            while True:
                now = time.monotonic()
                decision = pick(
                    [q.view() for q in self._queues],
                    now,
                    max_batch=self.max_batch_size,
                    max_wait_s=self.max_wait_s,
                    max_stage_wait_s=self.max_stage_wait_s,
                    incoming=self._incoming > 0 and not self._stopping,
                )
                if isinstance(decision, Run):
                    taken = self._queues[decision.stage].take(self.max_batch_size)
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

    def _live(self, chunk: Chunk, now: float) -> Chunk | None:
        """``chunk`` without the rows of requests that were cancelled or are past their
        deadline (those fail with a 504 here). Under the lock."""
        dead = {id(j): j for j in chunk.jobs if j.cancelled or now > j.deadline}
        if not dead:
            return chunk
        for job in dead.values():
            if not job.cancelled:
                self._fail(job, DeadlineExceededError("the request deadline passed"))
        mask = np.array([id(j) not in dead for j in chunk.jobs], dtype=bool)
        return chunk.keep(mask) if mask.any() else None

    def _run(self, index: int, chunk: Chunk) -> None:
        start = time.monotonic()
        runner = self.runner
        state = runner.initial_state(chunk.state[0]) if index == 0 else chunk.state
        state, logits = runner.run_stage(index, state)
        verdict = judge_stage(logits, index, self.num_exits, chunk.thresholds[:, index], chunk.caps)
        stop = verdict.stop
        stopped = np.flatnonzero(stop).tolist()
        jobs = chunk.jobs
        survivors = None
        if len(stopped) < len(chunk):
            survivors = Chunk(state, jobs, chunk.rows, chunk.thresholds, chunk.caps, 0.0)
            survivors = survivors.keep(~stop)
        top_k = max((jobs[i].top_k for i in stopped), default=0)
        ids: list[list[int]] = []
        probs: list[list[float]] = []
        if top_k:
            top_ids, top_probs = top_k_of(logits, stop, top_k)
            ids, probs = top_ids.tolist(), top_probs.tolist()
        seconds = time.monotonic() - start
        for job in {id(j): j for j in jobs}.values():
            job.compute_seconds += seconds
        if survivors is not None:
            self._advance(index + 1, survivors)
        if self.metrics is not None:
            waits = [start - j.enqueued for j in jobs] if index == 0 else None
            self.metrics.record_stage(
                index, len(chunk), len(stopped), self.exit_mflops[index], seconds, waits
            )
        rows = chunk.rows.tolist()
        classes = verdict.prediction.tolist()
        confidences = verdict.confidence.tolist()
        for pos, i in enumerate(stopped):
            job = jobs[i]
            top: tuple[tuple[int, float], ...] = ()
            if job.top_k:
                top = tuple(zip(ids[pos][: job.top_k], probs[pos][: job.top_k], strict=True))
            job.results[rows[i]] = ImageResult(index, classes[i], confidences[i], top)
            job.remaining -= 1
            if job.remaining == 0 and not job.cancelled:
                self._finish(job)

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

    def _finish(self, job: _Job) -> None:
        done = [r for r in job.results if r is not None]
        busy = job.compute_seconds + job.decode_seconds
        queued = max(0.0, time.monotonic() - job.enqueued - busy)
        outcome = InferOutcome(done, queued, job.compute_seconds, job.decode_seconds)

        def deliver() -> None:
            if not job.future.done():
                job.future.set_result(outcome)

        self._deliver(job, deliver)

    def _fail(self, job: _Job, err: Exception) -> None:
        job.cancelled = True  # its other rows, if still queued, are skipped

        def deliver() -> None:
            if not job.future.done():
                job.future.set_exception(err)

        self._deliver(job, deliver)

    @staticmethod
    def _deliver(job: _Job, callback: Callable[[], None]) -> None:
        # A closed loop (RuntimeError) means nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            job.loop.call_soon_threadsafe(callback)
