"""The stage scheduler's rules, and what they guarantee, on synthetic queues in virtual time."""

from __future__ import annotations

import math

import numpy as np
import pytest

from serving.deadlines import batch_limit as deadline_batch_limit
from serving.scheduler import EMPTY, Idle, QueueView, Run, Wait, pick

ARGS = {"max_batch": 8, "max_wait_s": 0.002, "max_stage_wait_s": 0.005}


def q(rows: int, oldest: float) -> QueueView:
    return QueueView(rows, oldest)


def test_nothing_queued_is_idle() -> None:
    assert pick([EMPTY, EMPTY], 1.0, incoming=True, **ARGS) == Idle()


def test_a_lone_image_runs_at_once_wherever_it_waits() -> None:
    assert pick([q(1, 1.0), EMPTY, EMPTY], 1.0, incoming=False, **ARGS) == Run(0)
    assert pick([EMPTY, EMPTY, q(1, 1.0)], 1.0, incoming=False, **ARGS) == Run(2)
    # Deeper queues do not wait for requests on their way: only the first batch fills up.
    assert pick([EMPTY, q(1, 1.0), EMPTY], 1.0, incoming=True, **ARGS) == Run(1)


def test_the_first_batch_waits_for_requests_on_their_way_at_most_max_wait() -> None:
    assert pick([q(2, 1.0), EMPTY], 1.001, incoming=True, **ARGS) == Wait(1.002)
    assert pick([q(2, 1.0), EMPTY], 1.002, incoming=True, **ARGS) == Run(0)
    assert pick([q(8, 1.0), EMPTY], 1.0, incoming=True, **ARGS) == Run(0)  # full: no wait
    # Not when a deadline row must start before the wait would end: the worker slept through
    # its due moment until max_wait had passed (a row due at 99 ms started at 400 ms).
    due = QueueView(2, 1.0, due=1.0015, seconds=0.001)
    assert pick([due, EMPTY], 1.001, incoming=True, **ARGS) == Run(0)
    later = QueueView(2, 1.0, due=1.0025, seconds=0.001)  # due after the wait: it waits
    assert pick([later, EMPTY], 1.001, incoming=True, **ARGS) == Wait(1.002)


def test_age_bound_comes_first_deepest_overdue_first() -> None:
    queues = [q(8, 1.000), q(3, 0.990), q(2, 0.994), q(8, 1.0)]
    assert pick(queues, 1.0, incoming=False, **ARGS) == Run(2)


def test_full_batches_deepest_first_then_the_largest_queue() -> None:
    assert pick([q(9, 1.0), q(8, 1.0), q(3, 1.0)], 1.0, incoming=False, **ARGS) == Run(1)
    assert pick([q(5, 1.0), q(3, 1.0), q(5, 1.0)], 1.0, incoming=False, **ARGS) == Run(2)
    assert pick([q(6, 1.0), q(3, 1.0), q(5, 1.0)], 1.0, incoming=False, **ARGS) == Run(0)


def test_a_queue_due_before_the_batch_would_end_runs_first_unless_a_plain_row_waited() -> None:
    # Stage 2 is overdue by age; stage 1's rows are due before its batch would end: stage 1.
    soon = QueueView(4, 1.0, due=1.0005, seconds=0.001)
    assert pick([soon, QueueView(2, 0.99, seconds=0.002)], 1.0, incoming=False, **ARGS) == Run(0)
    # Stage 2 holds a row without a deadline that has waited as long as the deadline traffic
    # asks (it counts as due): it runs; put off for every due queue, it waited as long as
    # deadline requests kept coming.
    waited = QueueView(1, 1.0, due=0.9, seconds=0.002, waited=True)
    assert pick([soon, waited], 1.0, incoming=False, **ARGS) == Run(1)


def _simulate(
    arrivals: np.ndarray,
    survive: float,
    stage_cost: list[float],
    per_row: float,
    seed: int = 0,
    **args: float,
) -> tuple[list[float], list[list[int]]]:
    """A discrete-event run of the policy: images arrive at ``arrivals`` (seconds), each stage
    costs ``stage_cost[k] + per_row * rows``, a share ``survive`` of a batch goes on. Returns
    every wait in front of a stage and the batch sizes each stage ran."""
    rng = np.random.default_rng(seed)
    k = len(stage_cost)
    queues: list[list[float]] = [[] for _ in range(k)]  # join times, oldest first
    waits: list[float] = []
    sizes: list[list[int]] = [[] for _ in range(k)]
    now, i = 0.0, 0
    max_batch = int(args["max_batch"])
    while i < len(arrivals) or any(queues):
        while i < len(arrivals) and arrivals[i] <= now:
            queues[0].append(float(arrivals[i]))
            i += 1
        views = [QueueView(len(qs), qs[0] if qs else math.inf) for qs in queues]
        decision = pick(views, now, incoming=False, **args)  # type: ignore[arg-type]
        if isinstance(decision, Idle):
            now = float(arrivals[i])
            continue
        assert isinstance(decision, Run)
        s = decision.stage
        batch, queues[s] = queues[s][:max_batch], queues[s][max_batch:]
        waits += [now - t for t in batch]
        sizes[s].append(len(batch))
        now += stage_cost[s] + per_row * len(batch)
        if s + 1 < k:
            stay = int(rng.binomial(len(batch), survive))
            queues[s + 1] += [now] * stay
    return waits, sizes


@pytest.mark.parametrize("rate", [200.0, 2000.0, 8000.0])
def test_no_row_waits_longer_than_the_bound(rate: float) -> None:
    # Open-loop arrivals from light load to overload. While the machine keeps up, the age bound
    # holds up to the stages that run before an overdue row: the one running when it became
    # overdue (never preempted) and deeper ones overdue too, at most one per stage.
    arrivals = np.cumsum(np.random.default_rng(1).exponential(1 / rate, 3000))
    costs = [0.0004, 0.0003, 0.0003, 0.0002]
    per_row = 0.00005
    args = {"max_batch": 32, "max_wait_s": 0.002, "max_stage_wait_s": 0.005}
    waits, sizes = _simulate(arrivals, 0.6, costs, per_row, **args)
    if rate <= 2000:  # the machine keeps up: every wait is bounded
        longest_stage = max(costs) + per_row * 32
        assert max(waits) <= args["max_stage_wait_s"] + len(costs) * longest_stage + 1e-12
    assert sum(sizes[0]) == 3000


def test_survivors_of_many_batches_run_later_stages_together() -> None:
    # Under load, later stages see far bigger batches than the survivors of one batch would be.
    arrivals = np.cumsum(np.full(4000, 1 / 4000))
    _, sizes = _simulate(
        arrivals,
        0.3,
        [0.0002, 0.0002, 0.0002],
        0.00002,
        max_batch=32,
        max_wait_s=0.002,
        max_stage_wait_s=0.005,
    )
    first = float(np.mean(sizes[0]))
    last = float(np.mean(sizes[2]))
    # Without merging, stage 3 would average about 0.3^2 of stage 1's batch.
    assert last > 0.3**2 * first * 3


def test_a_deadline_shrinks_the_batch_only_while_that_keeps_it() -> None:
    def estimate(rows: int) -> float:
        return 0.001 + 0.0005 * rows  # seconds: a fixed cost and a cost per row

    assert deadline_batch_limit(1.0, 32, estimate) == 32  # room for a full batch
    assert deadline_batch_limit(0.006, 32, estimate) == 10  # 10 rows end in 6 ms, 11 later
    assert deadline_batch_limit(0.0016, 32, estimate) == 1
    # Of the rows there are: three that fit in time together stay together (halved from a
    # full batch, 4 did not fit and they were split 2 + 1, the last answered late).
    assert deadline_batch_limit(0.0025, 3, estimate) == 3
    assert deadline_batch_limit(0.0025, 32, estimate) == 3
    # Not even one row ends in time: that deadline is lost, and a lone row would only slow
    # every row behind it, so the batch stays full.
    assert deadline_batch_limit(0.001, 32, estimate) == 32
    assert deadline_batch_limit(-0.5, 32, estimate) == 32
    assert deadline_batch_limit(-0.5, 5, estimate) == 5
