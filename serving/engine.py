"""The engine: a bounded queue of images, one worker thread that batches them and runs the network.

Each request's images enter the queue together, each carrying its request's thresholds and cap.
The worker takes up to ``max_batch_size`` images (from one request or many, whatever their
budgets), runs them with :func:`exitwise.runtime.run_early_exit`, and completes a request as
soon as all its images are done, resolving its asyncio future on the request's event loop
(thread-safe). The event loop never waits on the model.

Batching: once an image is queued the worker waits at most ``max_wait_s`` for the batch to fill,
and only while other requests are known to be on their way (being read and decoded); a lone
request at batch 1 therefore does not pay the wait. A full queue refuses new requests at once
(:class:`~serving.errors.QueueFullError`, a 503 with Retry-After) instead of letting them hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from exitwise.runtime import StageRunner, run_early_exit

from .budgets import ExitPlan
from .errors import DeadlineExceededError, NotReadyError, QueueFullError
from .metrics import Metrics

log = logging.getLogger("exitwise.serving.engine")


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
    queue_seconds: float  # longest wait of one of the request's images
    compute_seconds: float  # summed over the batches the request's images ran in


@dataclass(eq=False)
class Arrival:
    """A request announced by :meth:`Engine.expecting`; ``arrived`` once it is queued."""

    arrived: bool = False


@dataclass(eq=False)
class _Job:
    images: Tensor  # [n, C, H, W] float32, CPU
    thresholds: np.ndarray  # float64 [K]
    max_index: int
    top_k: int
    deadline: float  # time.monotonic()
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[InferOutcome]
    enqueued: float = field(default_factory=time.monotonic)
    results: list[ImageResult | None] = field(default_factory=list)
    remaining: int = 0
    cancelled: bool = False
    queue_seconds: float = 0.0
    compute_seconds: float = 0.0


class Engine:
    def __init__(
        self,
        runner: StageRunner,
        *,
        exit_mflops: list[float],
        max_batch_size: int = 32,
        max_wait_s: float = 0.002,
        max_queue_images: int = 1024,
        metrics: Metrics | None = None,
    ) -> None:
        if len(exit_mflops) != runner.num_exits:
            raise ValueError("one MFLOPs figure per exit is required")
        self.runner = runner
        self.exit_mflops = list(exit_mflops)
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue_images = max_queue_images
        self.metrics = metrics
        self._queue: deque[tuple[_Job, int]] = deque()
        self._cond = threading.Condition()
        self._incoming = 0
        self._stopping = False
        self._thread: threading.Thread | None = None

    # --- life cycle ------------------------------------------------------------------------------

    def warm_up(self, input_shape: tuple[int, int, int], batch_sizes: tuple[int, ...] = ()) -> None:
        """Run every stage at batch 1 and at the largest batch (allocators, kernels, autotuning)."""
        k = self.runner.num_exits
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
        return len(self._queue)

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
        images: Tensor,
        plan: ExitPlan,
        top_k: int,
        deadline: float,
        arrival: Arrival | None = None,
    ) -> _Job:
        n = int(images.shape[0])
        loop = asyncio.get_running_loop()
        job = _Job(
            images=images,
            thresholds=plan.thresholds,
            max_index=plan.max_index,
            top_k=top_k,
            deadline=deadline,
            loop=loop,
            future=loop.create_future(),
            results=[None] * n,
            remaining=n,
        )
        with self._cond:
            if self._stopping:
                raise NotReadyError("the server is shutting down")
            waiting = len(self._queue)
            if waiting + n > self.max_queue_images:
                raise QueueFullError(
                    f"the queue is full ({waiting} of {self.max_queue_images} images waiting); "
                    "retry later"
                )
            self._queue.extend((job, row) for row in range(n))
            if arrival is not None and not arrival.arrived:
                # In the same critical section as the images: a waiting worker sees them at once.
                arrival.arrived = True
                self._incoming -= 1
            self._set_depth()
            self._cond.notify_all()
        return job

    async def infer(
        self,
        images: Tensor,
        plan: ExitPlan,
        top_k: int,
        deadline: float,
        arrival: Arrival | None = None,
    ) -> InferOutcome:
        """Queue ``images`` and wait for all of them, at most until ``deadline``."""
        job = self.submit(images, plan, top_k, deadline, arrival)
        try:
            return await asyncio.wait_for(job.future, max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            self._cancel(job)
            raise DeadlineExceededError(
                "the request deadline passed before the images were classified"
            ) from None
        except asyncio.CancelledError:  # the client went away
            self._cancel(job)
            raise

    def _cancel(self, job: _Job) -> None:
        with self._cond:
            job.cancelled = True
            if any(j is job for j, _ in self._queue):
                self._queue = deque(item for item in self._queue if item[0] is not job)
                self._set_depth()

    def _set_depth(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(len(self._queue))

    # --- the worker thread ----------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            items = self._next_batch()
            if items is None:
                return
            if not items:
                continue
            try:
                self._run(items)
            except Exception:  # a bug after the network ran: fail the batch, keep serving
                log.exception("failed to deliver a batch of %d images", len(items))
                for job in {id(job): job for job, _ in items}.values():
                    self._fail(job, EngineFailureError("inference failed"))

    def _next_batch(self) -> list[tuple[_Job, int]] | None:
        with self._cond:
            while not self._queue:
                if self._stopping:
                    return None
                self._cond.wait()
            # Wait for the batch to fill, but only while more requests are on their way.
            oldest = self._queue[0][0].enqueued
            while (
                len(self._queue) < self.max_batch_size and self._incoming > 0 and not self._stopping
            ):
                left = oldest + self.max_wait_s - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            items: list[tuple[_Job, int]] = []
            now = time.monotonic()
            while self._queue and len(items) < self.max_batch_size:
                job, row = self._queue.popleft()
                if job.cancelled:
                    continue
                if now > job.deadline:
                    self._fail(job, DeadlineExceededError("the request deadline passed"))
                    continue
                items.append((job, row))
            self._set_depth()
            return items

    def _run(self, items: list[tuple[_Job, int]]) -> None:
        start = time.monotonic()
        jobs = list({id(job): job for job, _ in items}.values())
        try:
            images = _gather(items)
            thresholds = np.stack([job.thresholds for job, _ in items])
            caps = np.array([job.max_index for job, _ in items], dtype=np.int64)
            top_k = max(job.top_k for job in jobs)
            out = run_early_exit(self.runner, images, thresholds, caps, top_k)
        except Exception:
            log.exception("the network failed on a batch of %d images", len(items))
            for job in jobs:
                self._fail(job, EngineFailureError("inference failed"))
            return
        seconds = time.monotonic() - start
        if self.metrics is not None:
            k = self.runner.num_exits
            counts = np.bincount(out.exit_index, minlength=k).tolist()
            mflops = [self.exit_mflops[i] for i in out.exit_index.tolist()]
            self.metrics.record_batch(out.stage_rows, counts, mflops, seconds)
            for job, _ in items:
                self.metrics.queue_wait.observe(start - job.enqueued)
        for i, (job, row) in enumerate(items):
            n_top = min(job.top_k, out.top_ids.shape[1])
            job.results[row] = ImageResult(
                exit_index=int(out.exit_index[i]),
                class_id=int(out.class_id[i]),
                confidence=float(out.confidence[i]),
                top=tuple(
                    (int(c), float(p))
                    for c, p in zip(out.top_ids[i, :n_top], out.top_probs[i, :n_top], strict=True)
                ),
            )
            job.remaining -= 1
        for job in jobs:
            job.queue_seconds = max(job.queue_seconds, start - job.enqueued)
            job.compute_seconds += seconds
            if job.remaining == 0:
                done = [r for r in job.results if r is not None]
                self._resolve(job, InferOutcome(done, job.queue_seconds, job.compute_seconds))

    def _resolve(self, job: _Job, outcome: InferOutcome) -> None:
        def deliver() -> None:
            if not job.future.done():
                job.future.set_result(outcome)

        self._deliver(job, deliver)

    def _fail(self, job: _Job, err: Exception) -> None:
        job.cancelled = True  # its other images, if still queued, are skipped

        def deliver() -> None:
            if not job.future.done():
                job.future.set_exception(err)

        self._deliver(job, deliver)

    @staticmethod
    def _deliver(job: _Job, callback: Callable[[], None]) -> None:
        # A closed loop (RuntimeError) means nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            job.loop.call_soon_threadsafe(callback)


def _gather(items: list[tuple[_Job, int]]) -> Tensor:
    """The batch's images: slices of each request's tensor (no copy for a single request)."""
    parts: list[Tensor] = []
    i = 0
    while i < len(items):
        job, first = items[i]
        j = i + 1
        while j < len(items) and items[j][0] is job and items[j][1] == first + (j - i):
            j += 1
        parts.append(job.images[first : first + (j - i)])
        i = j
    return parts[0] if len(parts) == 1 else torch.cat(parts)
