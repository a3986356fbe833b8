"""Degradation: the level the pressure asks for, the hold that keeps it (attack at once, release
a point per calm hold, each step down on trial for a hold, a hold that doubles when a step down
comes too early), and, in a discrete-event run of a server that takes its queue a batch at a
time, no cycle and no refusal when the load sits between two points' capacities or near the
cheapest point's."""

from __future__ import annotations

import numpy as np
import pytest

from serving.degrade import Degrader


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_level_asked_rises_with_the_forecast_wait() -> None:
    d = Degrader(max_level=4, queue_s=0.1)
    waits = (0.0, 0.05, 0.051, 0.0625, 0.076, 0.1, 1.0)
    assert [d.asked(w) for w in waits] == [0, 0, 1, 1, 3, 4, 4]
    assert Degrader(max_level=0, queue_s=0.1).level(5.0) == 0
    # A queue filling up steps down too, whatever the wait: the cheapest point is in force
    # before the queue is full and refuses anyone.
    assert [d.asked(0.001, f) for f in (0.0, 0.5, 0.6, 0.9, 1.0)] == [0, 0, 1, 4, 4]
    assert d.asked(0.08, 0.6) == d.asked(0.08) == 3  # the higher pressure counts
    with pytest.raises(ValueError):
        Degrader(max_level=1, queue_s=0.0)
    with pytest.raises(ValueError):
        Degrader(max_level=1, queue_s=0.1, hold_s=2.0, max_hold_s=1.0)


def test_a_level_comes_at_once_and_is_released_a_point_per_calm_hold() -> None:
    clock = Clock()
    d = Degrader(max_level=3, queue_s=0.1, hold_s=1.0, clock=clock)
    assert d.level(0.2) == 3 and d.last == 3  # attack: the whole way at once
    clock.now = 0.5
    assert d.level(0.0) == 3  # calm since the last pressure, at 0
    clock.now = 1.4
    assert d.level(0.07) == 3  # pressure again (asks 2): the hold starts over from here
    clock.now = 1.5
    assert d.level(0.0) == 3
    clock.now = 2.39
    assert d.level(0.0) == 3
    clock.now = 2.4
    assert d.level(0.0) == 2  # a whole hold of calm: one point down
    clock.now = 3.4
    assert d.level(0.0) == 1
    clock.now = 4.4
    assert d.level(0.0) == 0
    clock.now = 9.0
    assert d.level(0.0) == 0 and d.hold_s == 1.0


def test_an_idle_server_is_home_when_the_next_request_comes() -> None:
    # Nothing is admitted after an overload: no new work, so the calm counts from the last
    # admission that saw the pressure. The first request after a minute's idle gets the dearest
    # point, not the cheapest for another three holds (up to 24 s with the hold doubled).
    clock = Clock()
    d = Degrader(max_level=3, queue_s=0.1, hold_s=1.0, max_hold_s=8.0, clock=clock)
    assert d.level(0.2) == 3
    clock.now = 0.5
    assert d.current() == 3  # what /v1/model and the metric show: still held
    clock.now = 2.5
    assert d.current() == 1  # two holds of calm, with no admission to see them
    clock.now = 60.0
    assert d.current() == 0 and d.last == 3  # a read changes nothing
    assert d.level(0.0) == 0
    # Two holds of idle release two points, and the step down is on trial as any other.
    clock.now = 61.5
    assert d.level(0.2) == 3 and d.hold_s == 1.0
    clock.now = 63.5
    assert d.level(0.0) == 1
    clock.now = 64.0
    assert d.level(0.055) == 2 and d.hold_s == 2.0  # too early: back up, the hold doubled


def test_a_step_down_undone_within_the_hold_doubles_it_up_to_the_cap() -> None:
    clock = Clock()
    d = Degrader(max_level=2, queue_s=0.1, hold_s=1.0, max_hold_s=4.0, clock=clock)
    d.level(0.2)  # level 2
    holds = []
    for _ in range(4):
        start = clock.now
        d.level(0.0)
        clock.now = start + d.hold_s
        assert d.level(0.0) == 1  # a step down after a calm hold...
        clock.now += 0.1
        assert d.level(0.2) == 2  # ...undone at once: the load still needs level 2
        holds.append(d.hold_s)
    assert holds == [2.0, 4.0, 4.0, 4.0]
    # A step down that lasts a whole hold before the pressure comes back resets it.
    start = clock.now
    d.level(0.0)
    clock.now = start + d.hold_s
    assert d.level(0.0) == 1
    clock.now += d.hold_s + 0.1
    assert d.level(0.2) == 2
    assert d.hold_s == 1.0


def test_a_step_down_on_trial_goes_back_up_as_soon_as_the_pressure_leaves_calm() -> None:
    clock = Clock()
    d = Degrader(max_level=2, queue_s=0.1, hold_s=1.0, clock=clock)
    d.level(0.2)  # level 2
    d.level(0.0)
    clock.now = 1.0
    assert d.level(0.0) == 1  # a calm hold: one point down, on trial for a hold
    clock.now = 1.5
    assert d.asked(0.055) == 1  # the ladder alone would keep the dearer point...
    assert d.level(0.055) == 2  # ...but the pressure is no longer calm: the step was too early
    assert d.hold_s == 2.0
    # After a whole hold the step down is no longer on trial: the ladder decides again.
    clock.now = 1.6
    d.level(0.0)
    clock.now = 3.6
    assert d.level(0.0) == 1
    clock.now = 5.7
    assert d.level(0.055) == 1


def _simulate(
    costs: list[float], rate: float, *, bound: int = 64, batch: int = 32, n: int = 60_000
) -> tuple[np.ndarray, int, np.ndarray]:
    """One server fed Poisson arrivals at ``rate`` per second, each asking for the dearest of
    the points whose service times are ``costs`` (dearest first), the level picked at
    admission from the forecast wait and the queue's fill. Like the engine, the server takes up
    to ``batch`` queued requests at a time, so the queue empties a batch at once; a request
    finding ``bound`` waiting is refused. Per request: its level (-1: refused), the refusals,
    and the wait it was forecast."""
    rng = np.random.default_rng(0)
    clock = Clock()
    d = Degrader(max_level=len(costs) - 1, queue_s=0.05, clock=clock)
    queue: list[float] = []
    busy_until, refused = 0.0, 0
    levels, waits = np.full(n, -1), np.zeros(n)
    for i, at in enumerate(np.cumsum(rng.exponential(1 / rate, n))):
        while queue and busy_until <= at:  # batches that started before this arrival
            busy_until += sum(queue[:batch])
            del queue[:batch]
        clock.now = at
        waits[i] = sum(queue) + max(0.0, busy_until - at)
        level = d.level(float(waits[i]), len(queue) / bound)
        if len(queue) >= bound:
            refused += 1
            continue
        levels[i] = level
        queue.append(costs[level])
        if busy_until <= at:  # an idle server starts at once
            busy_until = at + sum(queue[:batch])
            del queue[:batch]
    return levels, refused, waits


# Seconds per request at the full network and three calibrated points: 1000, 2000, 2381 and
# 2857 requests/s of capacity (the demo model's spread).
COSTS = [0.0010, 0.0005, 0.00042, 0.00035]


@pytest.mark.parametrize("rate", [1500.0, 2300.0])
def test_between_two_points_the_level_holds_without_cycling_or_refusing(rate: float) -> None:
    levels, refused, waits = _simulate(COSTS, rate)
    settled = levels[5000:]
    served = settled[settled >= 0]
    # No refusal: the cheaper points take the load before the queue is full. (A level that
    # follows the queue alone refused 5 % of the requests at 2300/s: each batch taken emptied
    # the queue, the next requests got the full network, and their work filled it again.)
    assert refused < 0.001 * len(levels)
    # No cycle: a handful of tries of the dearer point, ever more rarely, not a level per batch.
    assert int((np.diff(served) != 0).sum()) < 60
    # What is served fits the capacity (nothing piles up), and nobody gets the full network.
    assert np.asarray(COSTS)[served].mean() * rate < 1.0
    assert (served == 0).mean() < 0.01
    assert np.percentile(waits[5000:], 99) < 0.05


def test_near_the_cheapest_points_capacity_a_trial_of_a_dearer_one_refuses_nobody() -> None:
    # 2600/s: 91 % of what the cheapest point serves. Each try of the next point fills the
    # queue; the try ends when the pressure leaves calm, with the queue half full, not when the
    # ladder asks for the cheapest point again near a full queue (28 refusals that way).
    levels, refused, _ = _simulate(COSTS, 2600.0)
    assert refused == 0
    assert (levels[5000:] == 3).mean() > 0.95


def test_when_the_load_goes_the_level_comes_home() -> None:
    clock = Clock()
    d = Degrader(max_level=3, queue_s=0.05, hold_s=1.0, clock=clock)
    for t in np.arange(0.0, 5.0, 0.01):  # overload for 5 s
        clock.now = float(t)
        d.level(0.06, 0.9)
    assert d.last == 3
    levels = []
    for t in np.arange(5.0, 10.0, 0.01):  # then an idle server
        clock.now = float(t)
        levels.append(d.level(0.0))
    assert levels[-1] == 0
    assert levels.index(0) <= 310  # three points, a second each
