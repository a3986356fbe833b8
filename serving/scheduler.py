"""Which stage runs next: the engine's scheduling policy, as a pure function.

The engine keeps a queue in front of every stage (of :class:`serving.jobs.Rows`). New images
join stage 1's queue; the images that survive stage k, from any number of batches, join stage k+1's.
Each time the worker is free it asks :func:`pick` what to do, given how many rows wait at each
stage and how long the oldest has waited:

1. **Age bound.** A stage whose oldest row has waited ``max_stage_wait_s`` runs now (the deepest
   such stage first); so does a stage that must start now for a row's ``deadline_ms`` to be met
   (its ``due`` time), or before the batch the other rules chose would end (the earliest such
   first), unless that batch's stage holds a row without a deadline that has waited as long as
   the deadline traffic asks (``waited``; it counts as due: :meth:`serving.jobs.Slots.order_keys`).
   While the machine keeps up with the load, no row waits in front of a stage longer than that
   plus the stages that run before it once it is overdue (the one running then, which is never
   preempted, and deeper overdue ones: at most one per stage).
2. **Full batches.** Else the deepest stage holding at least ``max_batch`` rows runs.
3. **Filling the first batch.** Else, when only stage 1 holds rows, fewer than ``max_batch``,
   and more requests are on their way (being read and decoded), wait for them, at most
   ``max_wait_s`` after the oldest arrived, unless a deadline row must start before then (a
   lone request never waits).
4. **Largest queue.** Else the stage with the most rows runs (ties: the deeper one), so rows
   that could not fill a batch still run together with as many others as there are.

Why this shape: a stage's cost per row falls with its batch size, so the policy lets deeper
queues collect survivors while new images keep entering (rules 2 and 4 prefer bigger batches),
and rule 1 caps the price of that in latency. Deepest-first among equals finishes requests that
are furthest along. With a single request in flight every rule degenerates to "run the stage
its images wait at", so batch 1 pays no waiting at all.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class QueueView:
    """One stage's queue as the scheduler sees it."""

    rows: int
    oldest: float  # time.monotonic() the oldest row joined; math.inf when empty
    # The latest moment the stage can start and still finish before the earliest deadline_ms
    # of its rows (math.inf: no row has one).
    due: float = math.inf
    seconds: float = 0.0  # how long running its batch now would take
    # It holds a row without a deadline that has waited as long as the deadline traffic asks:
    # no other queue's due moment puts its batch off (a standing load of deadline requests at
    # another stage would, for as long as it stood).
    waited: bool = False


EMPTY = QueueView(0, math.inf)


@dataclass(frozen=True)
class Run:
    stage: int  # 0-based


@dataclass(frozen=True)
class Wait:
    until: float  # time.monotonic()


@dataclass(frozen=True)
class Idle:
    pass


Decision = Run | Wait | Idle


def pick(
    queues: Sequence[QueueView],
    now: float,
    *,
    max_batch: int,
    max_wait_s: float,
    max_stage_wait_s: float,
    incoming: bool,
) -> Decision:
    """The next step for the worker (see the module docstring for the rules)."""
    busy = [k for k, q in enumerate(queues) if q.rows > 0]
    if not busy:
        return Idle()
    overdue = [
        k for k in busy if now - queues[k].oldest >= max_stage_wait_s or now >= queues[k].due
    ]
    full = [k for k in busy if queues[k].rows >= max_batch]
    if not overdue and not full and busy == [0] and incoming:
        until = queues[0].oldest + max_wait_s
        # Not when a deadline row must start before the wait would end: woken at its due
        # moment (the latest start that finishes in time), the batch ended after the deadline
        # by the timer's slack; and waiting until max_wait, a row due at 99 ms started at 400.
        if now < until < queues[0].due:
            return Wait(min(until, queues[0].oldest + max_stage_wait_s))
    stage = (overdue or full or [max(busy, key=lambda k: (queues[k].rows, k))])[-1]
    # Look ahead: a batch that would end after another queue's due moment makes its rows late;
    # the most urgent such queue runs first.
    if queues[stage].waited:
        return Run(stage)
    ends = now + queues[stage].seconds
    urgent = [k for k in busy if k != stage and queues[k].due < ends]
    return Run(min(urgent, key=lambda k: queues[k].due) if urgent else stage)
