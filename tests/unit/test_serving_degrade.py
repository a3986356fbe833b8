"""Degradation: the level as a function of the forecast wait, and, in a discrete-event run of a
server whose load sits between two points' capacities, no cycle: the wait stays in one level's
band and requests get the mix of the two points that the capacity allows."""

from __future__ import annotations

import numpy as np
import pytest

from serving.degrade import Degrader


def test_the_level_rises_with_the_forecast_wait() -> None:
    d = Degrader(max_level=4, queue_s=0.1)
    waits = (0.0, 0.05, 0.051, 0.0625, 0.076, 0.1, 1.0)
    assert [d.level(w) for w in waits] == [0, 0, 1, 1, 3, 4, 4]
    assert d.last == 4
    assert Degrader(max_level=0, queue_s=0.1).level(5.0) == 0
    # A queue filling up steps down too, whatever the wait: the cheapest point is in force
    # before the queue is full and refuses anyone.
    assert [d.level(0.001, f) for f in (0.0, 0.5, 0.6, 0.9, 1.0)] == [0, 0, 1, 4, 4]
    assert d.level(0.08, 0.6) == d.level(0.08) == 3  # the higher pressure counts
    with pytest.raises(ValueError):
        Degrader(max_level=1, queue_s=0.0)


def _simulate(
    costs: list[float], rate: float, queue_s: float, n: int = 40_000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """One server, Poisson arrivals at ``rate`` per second, each request asking for the dearest
    of the points whose service times are ``costs`` (dearest first); the degrader picks each
    request's level from the backlog it finds. Per request: the backlog and the level."""
    rng = np.random.default_rng(seed)
    d = Degrader(max_level=len(costs) - 1, queue_s=queue_s)
    backlog, last = 0.0, 0.0
    waits, levels = np.empty(n), np.empty(n, dtype=np.int64)
    for i, at in enumerate(np.cumsum(rng.exponential(1 / rate, n))):
        backlog = max(0.0, backlog - (at - last))
        last = at
        levels[i] = d.level(backlog)
        waits[i] = backlog
        backlog += costs[levels[i]]
    return waits, levels


@pytest.mark.parametrize("between", [0.3, 0.7])
def test_between_two_points_the_wait_holds_in_one_band_without_cycling(between: float) -> None:
    costs = [0.010, 0.006, 0.003]  # seconds per request at each level
    rate = 1 / costs[1] + between * (1 / costs[2] - 1 / costs[1])  # between levels 1 and 2
    waits, levels = _simulate(costs, rate, queue_s=0.05)
    settled = slice(2000, None)
    # The wait settles in the band where the level changes between 1 and 2 (half of queue_s
    # to queue_s); only bursts of arrivals, which no level choice can absorb at once, go past.
    assert 0.025 < np.median(waits[settled]) < 0.05
    assert np.percentile(waits[settled], 90) < 0.05 * 1.25
    assert np.percentile(waits[settled], 99) < 0.05 * 1.6
    assert (levels[settled] >= 1).mean() > 0.9
    # The mix is what the capacity allows: mean work per request = 1 / rate (nothing piles up).
    served = np.asarray(costs)[levels[settled]]
    assert served.mean() == pytest.approx(1 / rate, rel=0.05)
    # No cycle: the level changes from one request to the next many times (fine mixing), and
    # windows of 500 requests all see about the same mix.
    changes = int((np.diff(levels[settled]) != 0).sum())
    assert changes > len(levels[settled]) / 20
    share = [(levels[s : s + 500] == 2).mean() for s in range(2000, len(levels) - 500, 500)]
    assert np.std(share) < 0.1
