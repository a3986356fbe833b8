"""A request's hard timeout (``request_timeout_s``, or the client's shorter ``timeout_ms``) as
one timer on the event loop, instead of a task per awaited step.

``asyncio.wait_for`` wraps what it awaits (a new task for a coroutine) and costs tens of
microseconds per call; a request awaits its body and its parsing. :func:`before` schedules one
timer that cancels the request's own task when the timeout passes and turns that cancellation
into a :class:`~serving.errors.DeadlineExceededError` (a 504) saying what the request was doing.
(The engine keeps its own timer per request: see :meth:`serving.engine.Engine.infer`.)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator

from .errors import DeadlineExceededError


class Step:
    """What the request is doing, for the 504's message (updated as it goes)."""

    def __init__(self, doing: str) -> None:
        self.doing = doing


@contextlib.contextmanager
def before(expires: float, doing: str) -> Iterator[Step]:
    """Run the block until ``expires`` (``time.monotonic()``) at the latest."""
    task = asyncio.current_task()
    if task is None:  # not in a task: nothing to cancel (never the case under an ASGI server)
        yield Step(doing)
        return
    step = Step(doing)
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        task.cancel()

    handle = asyncio.get_running_loop().call_later(max(0.0, expires - time.monotonic()), expire)
    try:
        yield step
    except asyncio.CancelledError:
        if not expired:
            raise
        uncancel = getattr(task, "uncancel", None)  # Python 3.11+: the cancel was ours
        if uncancel is not None:
            uncancel()
        raise DeadlineExceededError(f"the request timeout passed while {step.doing}") from None
    finally:
        handle.cancel()
