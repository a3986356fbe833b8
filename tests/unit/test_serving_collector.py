"""serving/collector.py: no full collection between the timed ones, one on each tick, every
pause timed, and CPython's schedule back once the last server stops."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest

from serving.collector import NEVER, FullCollections, as_served


def test_full_collections_run_on_the_timer_and_only_then() -> None:
    before = gc.get_threshold()
    full: list[float] = []
    pauses: list[tuple[int, float]] = []  # every collection's pause, timed for /metrics

    def seen(phase: str, info: dict[str, Any]) -> None:
        if phase == "stop" and info["generation"] == 2:
            full.append(asyncio.get_event_loop().time())

    async def main() -> None:
        loop = asyncio.get_running_loop()
        a = FullCollections(loop, every_s=0.05, paused=lambda g, s: pauses.append((g, s)))
        b = FullCollections(loop, every_s=0.05)  # a second server in the same process
        assert gc.get_threshold() == (before[0], before[1], NEVER)
        gc.callbacks.append(seen)
        try:
            junk = []
            for _ in range(200_000):  # plenty of young collections, none of them full
                cycle: list[Any] = []
                cycle.append(cycle)
                junk.append(cycle)
                if len(junk) > 1000:
                    junk.clear()
            assert full == []
            await asyncio.sleep(0.18)
            assert 2 <= len(full) <= 12  # each server's ticks (about 4 each in 0.18 s)
            assert {g for g, _ in pauses} >= {0, 2} and all(s >= 0 for _, s in pauses)
        finally:
            gc.callbacks.remove(seen)
            a.stop()
            assert gc.get_threshold()[2] == NEVER  # b still runs
            b.stop()
        seen_before = len(pauses)
        gc.collect()
        assert len(pauses) == seen_before  # stopped: no longer timed

    asyncio.run(main())
    assert gc.get_threshold() == before


def test_the_interval_must_be_positive() -> None:
    async def main() -> None:
        with pytest.raises(ValueError, match="every_s"):
            FullCollections(asyncio.get_running_loop(), every_s=0)

    asyncio.run(main())
    assert gc.get_threshold()[2] != NEVER


def test_a_measurement_runs_under_the_servers_schedule() -> None:
    """``as_served``: what is loaded is frozen, no full collection in the block, and the
    thresholds come back after it, also when a server's timer held them too."""
    before = gc.get_threshold()
    frozen = gc.get_freeze_count()
    try:
        with as_served():
            assert gc.get_threshold() == (before[0], before[1], NEVER)
            assert gc.get_freeze_count() > frozen

            async def main() -> None:
                server = FullCollections(asyncio.get_running_loop())
                server.stop()
                assert gc.get_threshold()[2] == NEVER  # the measurement still holds them

            asyncio.run(main())
        assert gc.get_threshold() == before
    finally:
        gc.unfreeze()
