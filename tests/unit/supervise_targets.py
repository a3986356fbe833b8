"""Stand-ins for server workers in the supervision tests: stdlib only, so that a spawned
process starts in a fraction of a second."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from types import FrameType


def wait_for_sigterm(ready: str, code: int) -> None:
    """Say it is ready, then on SIGTERM exit with ``code`` (negative: die of that signal, as a
    worker the OOM killer picks would); never told in 30 s: exit 9."""

    def stop(sig: int, frame: FrameType | None) -> None:
        if code < 0:
            os.kill(os.getpid(), -code)
        os._exit(code)

    signal.signal(signal.SIGTERM, stop)
    Path(ready).touch()
    time.sleep(30)
    os._exit(9)


def count_sigints(ready: str, out: str) -> None:
    """Say it is ready; from the first SIGINT on, count SIGINTs for half a second, write the
    count to ``out`` and exit 0 (a clean stop); never told in 30 s: exit 9."""
    got: list[float] = []
    signal.signal(signal.SIGINT, lambda sig, frame: got.append(time.monotonic()))
    Path(ready).touch()
    end = time.monotonic() + 30
    while time.monotonic() < end and (not got or time.monotonic() - got[0] < 0.5):
        time.sleep(0.01)
    Path(out).write_text(str(len(got)))
    os._exit(0 if got else 9)


def supervise_counters(folder: str, workers: int) -> None:
    """The parent of ``workers`` SIGINT counters (in ``folder``): says it is ready once they
    are, and writes what :func:`serving.server.supervise` returned to ``folder``/code."""
    import multiprocessing
    import threading

    from serving.server import supervise

    ctx = multiprocessing.get_context("spawn")
    root = Path(folder)
    ready = [root / f"ready-{i}" for i in range(workers)]
    procs = [
        ctx.Process(target=count_sigints, args=(str(r), str(root / f"count-{i}")))
        for i, r in enumerate(ready)
    ]

    def say_ready() -> None:
        while not all(r.exists() for r in ready):
            time.sleep(0.02)
        print("workers ready", flush=True)

    threading.Thread(target=say_ready, daemon=True).start()
    (root / "code").write_text(str(supervise(procs)))
