"""What drives the engine: a thread of its own, or a task on the server's event loop.

Both ask the engine for the next step (:meth:`Engine._choose`: a stage and its batch, a wait, or
nothing to do) and have it executed (:meth:`Engine._execute`); they differ in how they wait.

- :class:`ThreadWorker` (the default): a thread that sleeps on the engine's condition. The event
  loop keeps reading and answering requests while a stage runs: what a GPU needs (the device
  computes while the host serves HTTP) and what spare CPU cores put to use.
- :class:`LoopWorker`: a task on the event loop that runs a stage, then yields once so the loop
  reads new requests and sends finished answers, then runs the next stage. With a single core
  (torch's threads take every core the process may use) two Python threads only take turns at
  the GIL, and every turn costs a context switch, a wake-up through the loop's self-pipe and
  lost cache; one thread that alternates by itself does the same work for less.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import TYPE_CHECKING

import torch

from .scheduler import Idle

if TYPE_CHECKING:
    from .engine import Engine


class ThreadWorker:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._thread = threading.Thread(target=self._run, name="exitwise-engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def notify(self) -> None:
        """Something changed (under the engine's lock): the condition already wakes the thread."""

    def join(self, timeout: float | None) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        engine = self.engine
        with torch.inference_mode():
            while True:
                with engine._cond:
                    while True:
                        now = time.monotonic()
                        choice = engine._choose(now)
                        if choice is None or isinstance(choice, tuple):
                            break
                        engine._cond.wait(None if isinstance(choice, Idle) else choice.until - now)
                if choice is None:
                    return
                engine._execute(*choice)


class LoopWorker:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._wake = asyncio.Event()
        self._done = threading.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = self._loop.create_task(self._run(), name="exitwise-engine")

    def notify(self) -> None:
        """Wake the task (from the loop, or from another thread as shutdown does)."""
        if threading.get_ident() == self._loop_thread:
            self._wake.set()
        else:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nothing to wake
                self._loop.call_soon_threadsafe(self._wake.set)

    def join(self, timeout: float | None) -> None:
        """Wait for the task to finish its work; only off the loop (on it, it cannot finish
        while we wait: it finishes on its own once the loop runs)."""
        if threading.get_ident() != self._loop_thread:
            self._done.wait(timeout)

    async def _run(self) -> None:
        engine = self.engine
        try:
            while True:
                self._wake.clear()
                now = time.monotonic()
                with engine._cond:
                    choice = engine._choose(now)
                if choice is None:
                    return
                if isinstance(choice, tuple):
                    with torch.inference_mode():
                        engine._execute(*choice)
                    await asyncio.sleep(0)  # the loop reads requests, sends answers
                    continue
                timeout = None if isinstance(choice, Idle) else max(0.0, choice.until - now)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
        finally:
            self._done.set()
