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
