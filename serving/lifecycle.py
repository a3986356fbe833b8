"""The server's readiness: starting -> ready -> draining -> stopped.

Liveness (``/healthz``) is only "the process answers". Readiness (``/readyz``) is true only
between the end of warm-up and the start of draining: a load balancer then stops sending new
work while requests already accepted finish.
"""

from __future__ import annotations

import enum
import threading


class Phase(str, enum.Enum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPED = "stopped"


class Lifecycle:
    def __init__(self) -> None:
        self._phase = Phase.STARTING
        self._lock = threading.Lock()  # a signal handler or timer thread may drain

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def ready(self) -> bool:
        return self._phase is Phase.READY

    @property
    def serving(self) -> bool:
        """Inference is accepted while ready and while draining (requests already routed here)."""
        return self._phase in (Phase.READY, Phase.DRAINING)

    def mark_ready(self) -> None:
        with self._lock:
            if self._phase is Phase.STARTING:
                self._phase = Phase.READY

    def begin_drain(self) -> None:
        with self._lock:
            if self._phase in (Phase.STARTING, Phase.READY):
                self._phase = Phase.DRAINING

    def mark_stopped(self) -> None:
        with self._lock:
            self._phase = Phase.STOPPED
