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


def count_sigints(ready: str, out: str, wait_s: float = 0.5) -> None:
    """Say it is ready; from the first SIGINT on, count SIGINTs for ``wait_s``, write the
    count to ``out`` and exit 0 (a clean stop); never told in 30 s: exit 9."""
    got: list[float] = []
    signal.signal(signal.SIGINT, lambda sig, frame: got.append(time.monotonic()))
    Path(ready).touch()
    end = time.monotonic() + 30
    while time.monotonic() < end and (not got or time.monotonic() - got[0] < wait_s):
        time.sleep(0.01)
    Path(out).write_text(str(len(got)))
    os._exit(0 if got else 9)


def supervise_counters(folder: str, workers: int, hog: bool = False) -> None:
    """The parent of ``workers`` SIGINT counters (in ``folder``): says it is ready once they
    are, and writes what :func:`serving.server.supervise` returned to ``folder``/code. With
    ``hog``, the thread that says so (started before supervise blocks the signals, as torch's
    threads in the CLI are) then holds the interpreter for a second or more, so the main thread
    is between two waits for its signals when the Ctrl-C comes (well inside the counters'
    window)."""
    import multiprocessing
    import sys
    import threading

    from serving.server import supervise

    ctx = multiprocessing.get_context("spawn")
    root = Path(folder)
    ready = [root / f"ready-{i}" for i in range(workers)]
    procs = [
        ctx.Process(
            target=count_sigints, args=(str(r), str(root / f"count-{i}"), 5.0 if hog else 0.5)
        )
        for i, r in enumerate(ready)
    ]

    def say_ready() -> None:
        while not all(r.exists() for r in ready):
            time.sleep(0.02)
        print("workers ready", flush=True)
        if hog:  # 1.5 s: with so long a switch interval, nothing takes the interpreter away
            sys.setswitchinterval(30.0)
            end = time.monotonic() + 1.5
            while time.monotonic() < end:
                pass
            sys.setswitchinterval(0.005)

    threading.Thread(target=say_ready, daemon=True).start()
    (root / "code").write_text(str(supervise(procs)))
