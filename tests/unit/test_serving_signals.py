"""The server's signal handling: SIGTERM drains, Ctrl-C skips the drain's delay, and each further
signal goes one step further (the delay ends, then the exit is forced)."""

from __future__ import annotations

import signal

import pytest
import uvicorn

from serving.lifecycle import Lifecycle, Phase
from serving.server import DrainingServer


def _server(drain_seconds: float = 30.0) -> DrainingServer:
    config = uvicorn.Config(lambda scope, receive, send: None)  # never run: flags only
    return DrainingServer(config, Lifecycle(), drain_seconds)


def test_sigterm_drains_before_the_graceful_shutdown() -> None:
    server = _server()
    server.handle_exit(signal.SIGTERM, None)
    try:
        assert server.lifecycle.phase is Phase.DRAINING
        assert not server.should_exit and not server.force_exit  # still serving for 30 s
    finally:
        assert server._drain_timer is not None
        server._drain_timer.cancel()


def test_ctrl_c_skips_the_drain_delay() -> None:
    server = _server()
    server.handle_exit(signal.SIGINT, None)
    assert server.should_exit and not server.force_exit and server._drain_timer is None


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_the_drain_delay_begins_the_graceful_shutdown(
    second: signal.Signals,
) -> None:
    server = _server()
    server.handle_exit(signal.SIGTERM, None)
    server.handle_exit(second, None)
    assert server.should_exit and not server.force_exit
    assert server._drain_timer is not None and server._drain_timer.finished.is_set()
    server.handle_exit(signal.SIGTERM, None)  # a third: now
    assert server.force_exit


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_the_graceful_shutdown_exits_at_once(second: signal.Signals) -> None:
    # uvicorn forced only on a second SIGINT: a SIGTERM after Ctrl-C did nothing.
    server = _server()
    server.handle_exit(signal.SIGINT, None)
    server.handle_exit(second, None)
    assert server.should_exit and server.force_exit


def test_the_drain_delay_ending_is_no_second_signal() -> None:
    # The timer calls uvicorn's handler itself: the graceful shutdown, not a forced exit.
    server = _server(drain_seconds=0.01)
    server.handle_exit(signal.SIGTERM, None)
    assert server._drain_timer is not None
    server._drain_timer.join(5)
    assert server.should_exit and not server.force_exit


@pytest.mark.parametrize(("forced", "raised"), [(False, []), (True, [signal.SIGTERM])])
def test_only_a_drained_sigterm_stop_is_a_success(
    monkeypatch: pytest.MonkeyPatch, forced: bool, raised: list[int]
) -> None:
    # uvicorn re-raises the signals it stopped on. A drained SIGTERM stop exits 0; one forced
    # by a further signal abandoned requests in flight, and exited 0 all the same.
    again: list[int] = []
    monkeypatch.setattr(signal, "raise_signal", again.append)
    server = _server()
    with server.capture_signals():
        server._captured_signals.append(signal.SIGTERM)
        server.force_exit = forced
    assert again == raised
