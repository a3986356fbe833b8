"""Running the app under uvicorn, with a graceful drain on SIGTERM, in one or several processes.

SIGTERM (what Docker and Kubernetes send): readiness turns 503 at once, the server keeps
answering for ``drain_seconds`` (so a load balancer notices and stops routing here), then stops
accepting connections, lets every request already received finish (uvicorn's graceful
shutdown), and the lifespan lets the engine finish its queue. SIGINT (Ctrl-C) skips the drain
delay; each further signal goes one step further (the delay ends, then the exit is forced).

``workers > 1`` runs that many server processes sharing one listening socket, each with its own
model and engine; the parent forwards SIGTERM/SIGINT to them (not a terminal's Ctrl-C, which
reached them already) and exits when they have, or stops them all if one dies (let the
orchestrator restart the whole replica).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

import uvicorn

from exitwise.errors import ExitwiseError

from .lifecycle import Lifecycle
from .loading import LoadedModel
from .protocol import StampedHttpToolsProtocol, kernel_tick_s
from .settings import Settings
from .threads import torch_threads

log = logging.getLogger("exitwise.serving")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle, drain_seconds: float) -> None:
        super().__init__(config)
        self.lifecycle = lifecycle
        self.drain_seconds = drain_seconds
        self._drain_timer: threading.Timer | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        first = self._drain_timer is None and not self.should_exit
        self.lifecycle.begin_drain()
        if self.should_exit:
            # Each signal goes one step further: the drain's delay, the graceful shutdown, then
            # the exit now (requests in flight abandoned). uvicorn forces only on a SIGINT, so
            # a SIGTERM during the graceful shutdown did nothing.
            log.warning("another signal during the shutdown: exiting now")
            self.force_exit = True
        if not first:  # during the drain's delay: the graceful shutdown begins now
            if self._drain_timer is not None:
                self._drain_timer.cancel()
            super().handle_exit(sig, frame)
            return
        if sig == signal.SIGTERM and self.drain_seconds > 0:
            log.info(
                "SIGTERM: not ready any more; still serving for %.1f s, then finishing the "
                "requests in flight and exiting",
                self.drain_seconds,
            )
            # uvicorn's handler only sets flags, so calling it from a timer thread is safe.
            self._drain_timer = threading.Timer(
                self.drain_seconds, super().handle_exit, (sig, frame)
            )
            self._drain_timer.daemon = True
            self._drain_timer.start()
            return
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn re-raises the signals it caught once it has shut down, so a server stopped by
        # SIGTERM would die of it after a clean shutdown: exit 143 under `docker run --init` or
        # any parent but a container's PID 1 (which ignores its own signal). A drained SIGTERM
        # stop is a success: exit 0. SIGINT (Ctrl-C) is still re-raised.
        with super().capture_signals():
            yield
            captured = getattr(self, "_captured_signals", None)
            # A forced exit abandoned requests in flight: no success, the SIGTERM stands.
            if captured is not None and not self.force_exit:
                captured[:] = [s for s in captured if s != signal.SIGTERM]


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(levelname)-8s %(name)s: %(message)s", force=False
    )
    logging.getLogger("exitwise").setLevel(level.upper())


def _configure_process(settings: Settings) -> None:
    configure_logging(settings.log_level)
    import torch

    threads = torch_threads(settings)
    torch.set_num_threads(threads)
    log.info("torch uses %d intra-op thread(s) per process", threads)


def _uvicorn_config(app: Any, settings: Settings) -> uvicorn.Config:
    kernel_tick_s()  # measured now, not on the event loop at the first connection
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        lifespan="on",
        http=StampedHttpToolsProtocol,  # stamps each request's arrival (deadline_ms's clock)
        # A line per request costs tens of microseconds of a budget of a few hundred; requests
        # are counted and timed in /metrics. Off unless asked for.
        access_log=settings.access_log,
        # Requests finish within their deadline, so a graceful shutdown never needs longer.
        timeout_graceful_shutdown=int(settings.request_timeout_s) + 5,
        server_header=False,
    )


def serve_one(
    settings: Settings,
    loaded: LoadedModel | None = None,
    sockets: list[socket.socket] | None = None,
) -> None:
    """One server process (blocks until it has shut down); ``sockets``: a worker of
    :func:`serve_many`, on its parent's socket."""
    from .app import create_app

    _configure_process(settings)
    app = create_app(settings, loaded=loaded)
    server = DrainingServer(
        _uvicorn_config(app, settings), app.state.lifecycle, settings.drain_seconds
    )
    try:
        server.run(sockets=sockets)
    except KeyboardInterrupt:
        # uvicorn re-raises the SIGINT it stopped on. A lone server's shell expects it; a
        # worker's Ctrl-C stop (forwarded by its parent) is a clean one, not a KeyboardInterrupt
        # traceback and exit 1, unless it was forced (requests abandoned).
        if sockets is None or server.force_exit:
            raise
    if not server.started:
        raise SystemExit(3)


def _worker(settings: Settings, sockets: list[socket.socket]) -> None:
    serve_one(settings, None, sockets)


def serve_many(settings: Settings) -> int:
    """``settings.workers`` processes on one socket; returns the exit code."""
    configure_logging(settings.log_level)
    sock = _uvicorn_config("unused", settings).bind_socket()
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_worker, args=(settings, [sock]), name=f"exitwise-worker-{i}")
        for i in range(settings.workers)
    ]
    try:
        log.info("starting %d workers on %s:%d", len(procs), settings.host, settings.port)
        return supervise(procs)
    except OSError as err:  # the system refused a worker (a limit on processes, memory)
        raise ExitwiseError(f"could not start the server workers: {err}") from None
    finally:
        sock.close()


# The si_code of a signal the kernel itself sent (Linux): a terminal's Ctrl-C, which goes to
# the terminal's whole foreground process group, the workers included.
SI_KERNEL = 0x80
SIGNALS = (signal.SIGTERM, signal.SIGINT)


def supervise(procs: Sequence[BaseProcess]) -> int:
    """Start ``procs``, forward SIGTERM and SIGINT to them, and wait until all have exited: 0
    when every one exited 0, else 1. One that exits before a signal came (a crash) stops the
    others. Called on the main thread (signal handlers).

    A terminal's Ctrl-C is not forwarded: it reached every worker already (they share the
    terminal's process group). Forwarded, it came twice to each, and the second signal is a
    step further, so one Ctrl-C forced every worker to exit with its requests in flight. Told
    apart by the signal's origin (``sigtimedwait``'s si_code); where that is unavailable,
    every signal is forwarded."""
    stopping = waiting = False
    received: list[int] = []  # the signals to forward, in order
    sent: dict[int, int] = {}  # per worker's pid: how many of them it was sent

    def take(sig: int, from_terminal: bool) -> None:
        nonlocal stopping
        stopping = True
        if not (sig == signal.SIGINT and from_terminal):
            received.append(sig)

    def record(sig: int, frame: FrameType | None) -> None:
        # While they start; and, once the signals wait to be taken, one that a thread started
        # before the mask (torch's) took between two waits. Its origin is unknown here: a
        # SIGINT while this process is a terminal's foreground group is taken for its Ctrl-C.
        take(sig, waiting and _in_terminal_foreground())

    def tell() -> None:
        # A signal that came while they were starting reaches every worker, not only those
        # started by then: the others would have served on, and this process waited for good.
        for p in procs:
            if p.pid is not None and p.exitcode is None:
                for sig in received[sent.get(p.pid, 0) :]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(p.pid, sig)
                sent[p.pid] = len(received)

    wait = getattr(signal, "sigtimedwait", None)
    previous = {s: signal.signal(s, record) for s in SIGNALS}
    mask: set[int | signal.Signals] | None = None
    try:
        try:
            for p in procs:
                p.start()
        except BaseException:  # one could not start (no process left, say): none serves on
            for p in procs:
                if p.pid is not None and p.exitcode is None:
                    p.terminate()
                    p.join()
            raise
        if wait is not None:  # from here on the signals wait to be taken, origin and all
            mask = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
            waiting = True
        failed = False
        while any(p.is_alive() for p in procs):
            tell()
            if wait is None:
                time.sleep(0.2)
            elif (info := wait(SIGNALS, 0.2)) is not None:
                take(info.si_signo, info.si_code == SI_KERNEL)
                continue
            for p in procs:
                if not stopping and p.exitcode is not None:
                    log.error("worker %s exited with %s; stopping the others", p.name, p.exitcode)
                    failed = stopping = True
                    for other in procs:
                        if other.is_alive():
                            other.terminate()
        # A worker that failed while stopping (killed, or a forced exit abandoning requests)
        # is no clean stop either: the orchestrator must hear of it.
        for p in procs:
            if p.exitcode != 0 and not failed:
                log.error("worker %s exited with %s while stopping", p.name, p.exitcode)
                failed = True
        return 1 if failed else 0
    finally:
        if mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for s, handler in previous.items():
            signal.signal(s, handler)


def _in_terminal_foreground() -> bool:
    """Whether this process's group is the foreground group of its terminal (where a Ctrl-C
    goes), as far as its standard streams tell."""
    for fd in (0, 1, 2):
        with contextlib.suppress(OSError):
            if os.isatty(fd):
                return os.tcgetpgrp(fd) == os.getpgrp()
    return False
