"""``--workers``: the parent forwards its signals to every worker, and its exit code says whether
they all stopped cleanly."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pty
import select
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from exitwise.errors import ExitwiseError
from serving import server
from serving.server import supervise
from serving.settings import Settings
from tests.unit.supervise_targets import wait_for_sigterm

CTX = multiprocessing.get_context("spawn")


def _sigterm_when_ready(*ready: Path) -> threading.Thread:
    """SIGTERM to this process (the parent) once every worker has said it is ready."""

    def send() -> None:
        deadline = time.monotonic() + 20
        while not all(r.exists() for r in ready) and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize(("codes", "expected"), [((0, 0), 0), ((0, 3), 1), ((0, -9), 1)])
def test_a_worker_that_fails_while_stopping_makes_the_stop_a_failure(
    tmp_path: Path, codes: tuple[int, int], expected: int
) -> None:
    # SIGTERM to the parent; one worker then exits 3, or is killed (as the OOM killer would),
    # while the others drain. Once stopping, the parent looked at no exit code and said 0: a
    # clean drain, as far as the orchestrator could tell, with that worker's requests lost.
    ready = [tmp_path / f"ready-{i}" for i in range(2)]
    procs = [
        CTX.Process(target=wait_for_sigterm, args=(str(r), c))
        for r, c in zip(ready, codes, strict=True)
    ]
    _sigterm_when_ready(*ready)
    assert supervise(procs) == expected
    assert not any(p.is_alive() for p in procs)


class _SignalOnStart(CTX.Process):  # type: ignore[name-defined,misc]
    """Sends the parent SIGTERM as it starts: the signal comes before this worker has a pid."""

    def start(self) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        super().start()


def test_a_signal_while_the_workers_start_reaches_every_one(tmp_path: Path) -> None:
    # The parent forwarded a signal only to the workers started by then: one started just after
    # it served on, and the parent waited for it for good.
    ready = [tmp_path / "ready-0", tmp_path / "ready-1"]
    procs = [
        CTX.Process(target=wait_for_sigterm, args=(str(ready[0]), 0)),
        _SignalOnStart(target=wait_for_sigterm, args=(str(ready[1]), 0)),
    ]
    start = time.monotonic()
    supervise(procs)  # 0 or 1: the late one may die of the SIGTERM before its handler is set
    assert time.monotonic() - start < 15, "a worker never heard of the stop"
    assert all(p.exitcode is not None and p.exitcode != 9 for p in procs)


@pytest.mark.skipif(not hasattr(signal, "sigtimedwait"), reason="needs sigtimedwait (Linux)")
@pytest.mark.parametrize("between_waits", [False, True])
def test_a_ctrl_c_in_the_terminal_reaches_each_worker_once(
    tmp_path: Path, between_waits: bool
) -> None:
    # The parent and its workers run in a terminal (a pseudo-terminal here) and the operator
    # presses Ctrl-C once. The terminal sends SIGINT to its whole foreground process group, so
    # each worker got it directly and again forwarded by the parent: a step further, a forced
    # exit abandoning the requests in flight. Signals sent with kill are still forwarded (the
    # other tests here). Between two of the parent's waits for its signals, another thread of
    # the parent took the Ctrl-C (its handler, which cannot see where a signal came from, then
    # forwarded it).
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "from tests.unit.supervise_targets import supervise_counters; "
        "supervise_counters(sys.argv[2], 2, hog=sys.argv[3] == '1')"
    )
    root = str(Path(__file__).resolve().parents[2])
    pid, terminal = pty.fork()
    if pid == 0:  # the child: a session of its own, with the pseudo-terminal as its terminal
        hog = "1" if between_waits else "0"
        os.execv(sys.executable, [sys.executable, "-c", script, root, str(tmp_path), hog])
    try:
        said = b""
        deadline = time.monotonic() + 30
        while b"workers ready" not in said and time.monotonic() < deadline:
            if select.select([terminal], [], [], 0.5)[0]:
                said += os.read(terminal, 1024)
        assert b"workers ready" in said, said.decode(errors="replace")
        if between_waits:
            time.sleep(0.4)  # the main thread is back from a wait, and waits for the interpreter
        os.write(terminal, b"\x03")  # Ctrl-C
        _, status = os.waitpid(pid, 0)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.close(terminal)
    assert os.waitstatus_to_exitcode(status) == 0
    counts = [int((tmp_path / f"count-{i}").read_text()) for i in range(2)]
    assert counts == [1, 1]
    assert (tmp_path / "code").read_text() == "0"


class _FailsToStart(CTX.Process):  # type: ignore[name-defined,misc]
    """A worker whose start fails, as a fork does with EAGAIN under a limit on processes."""

    def start(self) -> None:
        raise OSError(11, "Resource temporarily unavailable")


def test_a_worker_that_cannot_start_leaves_none_running(tmp_path: Path) -> None:
    # The first worker started, the second could not: supervise raised with the first still
    # serving on the shared socket. The command then hung in multiprocessing's exit hook,
    # joining it; a SIGTERM left it serving on, orphaned.
    first = CTX.Process(target=wait_for_sigterm, args=(str(tmp_path / "ready"), 0))
    procs = [first, _FailsToStart(target=wait_for_sigterm, args=(str(tmp_path / "r2"), 0))]
    try:
        with pytest.raises(OSError):
            supervise(procs)
        assert not first.is_alive()
    finally:
        if first.pid is not None and first.exitcode is None:
            os.kill(first.pid, signal.SIGKILL)
            first.join(5)


def test_workers_the_system_refuses_are_one_line_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `exitwise serve --workers 2` where the system refuses a process ended with an OSError
    # traceback; the command's errors are one readable line (an ExitwiseError).
    (tmp_path / "manifest.json").write_text("{}")

    def refused(procs: object) -> int:
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(server, "supervise", refused)
    settings = Settings(bundle=tmp_path, workers=2, port=0)  # type: ignore[call-arg]
    with pytest.raises(ExitwiseError, match=r"could not start the server workers: .*unavailable"):
        server.serve_many(settings)
