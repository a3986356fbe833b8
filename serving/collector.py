"""The garbage collector, kept out of the requests' way.

Everything loaded at start-up (the model, torch, the libraries: a few hundred thousand objects)
lives as long as the server: :func:`settle` collects once and freezes it, so no collection walks
it again. CPython would still run a full collection each time the objects that outlived two
young collections grew by a quarter. Under load that was every 3 to 6 s, and each one paused
the process (the event loop and the engine's worker share the interpreter) for 15 to 30 ms, 80 ms
after an overload had grown the old generation with its connections and requests: longer than a
20 ms ``deadline_ms``, for every request in flight. The 0.9x deadline runs that followed an
overload missed D + 2 ms at p99 (36 and 75 ms for D = 20 and 50) and met it without (21 and
48 ms).

So full collections run on a timer instead (:class:`FullCollections`, every ``every_s``, ten
minutes): one at 2x the last exit's capacity still paused the server 88 ms, and the requests
that piled up meanwhile overflowed the queue (85 refusals, the only ones after the first second
of a 70 s run), so the timer is long. Young collections run as CPython schedules them: they take
a few milliseconds at most and free the cycles that requests leave behind (an exception's
traceback, for one). Only garbage cycles that outlive two young collections wait for the timer.
Every pause is timed into ``exitwise_gc_pause_seconds{generation}``.

The engine benchmark measures under the same schedule (:func:`as_served`): without it, a full
collection of the loaded process (about 110 ms on the 2-core Intel VM) fell inside one of its
timed runs now and then.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Callable, Iterator

FULL_EVERY_S = 600.0
# CPython counts young-generation collections against this before a full one: far more than
# a server runs between two timed full collections.
NEVER = 1_000_000


def settle() -> None:
    """Collect what start-up left and freeze the rest: it lives as long as the server."""
    gc.collect()
    gc.freeze()


# What holds CPython's full collections off now (servers, measurements), and its thresholds
# from before the first of them: the thresholds are the process's, so with several servers in
# one process (tests) the first to start sets them and the last to stop gives them back.
_holders: list[object] = []
_saved: tuple[int, int, int] = gc.get_threshold()


def _hold(holder: object) -> None:
    global _saved
    if not _holders:
        _saved = gc.get_threshold()
        young, middle, _ = _saved
        gc.set_threshold(young, middle, NEVER)
    _holders.append(holder)


def _release(holder: object) -> None:
    if holder in _holders:
        _holders.remove(holder)
        if not _holders:
            gc.set_threshold(*_saved)


@contextlib.contextmanager
def as_served() -> Iterator[None]:
    """The server's schedule for a measurement outside it: what is loaded so far settled, and
    no full collection until the block ends."""
    settle()
    holder = object()
    _hold(holder)
    try:
        yield
    finally:
        _release(holder)


class FullCollections:
    """Full collections every ``every_s`` on ``loop``, none in between, until :meth:`stop`."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        every_s: float = FULL_EVERY_S,
        paused: Callable[[int, float], None] | None = None,
    ) -> None:
        """``paused(generation, seconds)`` is told every collection's pause."""
        if not every_s > 0:
            raise ValueError(f"every_s must be positive, not {every_s}")
        self.loop, self.every_s, self.paused = loop, every_s, paused
        self._began = 0.0
        if paused is not None:
            gc.callbacks.append(self._timed)
        _hold(self)
        self._timer = loop.call_later(every_s, self._collect)

    def _timed(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        elif self.paused is not None:
            self.paused(info["generation"], time.perf_counter() - self._began)

    def _collect(self) -> None:
        gc.collect()
        self._timer = self.loop.call_later(self.every_s, self._collect)

    def stop(self) -> None:
        self._timer.cancel()
        if self._timed in gc.callbacks:
            gc.callbacks.remove(self._timed)
        _release(self)
