"""What the engine keeps per request, and what it hands back.

A :class:`Job` is one request inside the engine: its images' results as they exit, its future
(resolved on the request's event loop, thread-safe), its deadlines. ``deadline`` is the hard
one (the request timeout: past it the request fails with a 504); ``answer_by`` is the client's
``deadline_ms``: an anytime deadline, by which each image is answered from the deepest exit it
completed (:class:`ImageResult` says why it stopped).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

StopReason = Literal["confident", "cap", "deadline"]
Decoder = Callable[[Sequence[bytes], Sequence[str] | None], np.ndarray]


class EngineFailureError(RuntimeError):
    """The network raised while running a batch (a bug or a device fault: a generic 500)."""


@dataclass(frozen=True)
class ImageResult:
    exit_index: int  # 0-based
    class_id: int
    confidence: float
    top: tuple[tuple[int, float], ...]  # (class id, probability), best first
    # confident: cleared its exit's threshold; cap: max_exit, or the last exit; deadline: the
    # next stage would not have finished by the request's deadline_ms.
    reason: StopReason = "confident"


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


@dataclass(eq=False)
class Arrival:
    """A request announced by :meth:`Engine.expecting`; ``arrived`` once it is queued."""

    arrived: bool = False


@dataclass(eq=False)
class Job:
    """One request in the engine. ``results``, ``remaining`` and the timings belong to the
    worker thread; ``cancelled`` may be set from the event loop (under the engine's lock)."""

    top_k: int
    deadline: float  # time.monotonic(): the request timeout (504 past it)
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[InferOutcome]
    results: list[ImageResult | None]
    remaining: int
    answer_by: float | None = None  # time.monotonic(): deadline_ms, answered by then
    enqueued: float = field(default_factory=time.monotonic)
    cancelled: bool = False
    started: bool = False  # some image of it has begun its first stage
    compute_seconds: float = 0.0
    decode_seconds: float = 0.0

    def answer(self, row: int, result: ImageResult) -> None:
        """Record one image's result; the request completes with its last image."""
        self.results[row] = result
        self.remaining -= 1
        if self.remaining == 0 and not self.cancelled:
            self.finish()

    def finish(self) -> None:
        done = [r for r in self.results if r is not None]
        busy = self.compute_seconds + self.decode_seconds
        queued = max(0.0, time.monotonic() - self.enqueued - busy)
        outcome = InferOutcome(done, queued, self.compute_seconds, self.decode_seconds)

        def deliver() -> None:
            if not self.future.done():
                self.future.set_result(outcome)

        self._deliver(deliver)

    def fail(self, err: Exception) -> None:
        self.cancelled = True  # its other rows, if still queued, are skipped

        def deliver() -> None:
            if not self.future.done():
                self.future.set_exception(err)

        self._deliver(deliver)

    def _deliver(self, callback: Callable[[], None]) -> None:
        # A closed loop (RuntimeError) means nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(callback)
