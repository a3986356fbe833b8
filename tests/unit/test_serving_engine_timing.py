"""The engine's timing where deadlines meet batching: the wait for requests on their way, a batch
sized to a deadline, and the forecast while a batch is decoded. Stages here take as long as the
latency model says, so a miss is a miss in real time."""

from __future__ import annotations

import asyncio
import math
import threading
import time

import numpy as np
import pytest
import torch

from exitwise.models import State
from serving.engine import Encoded, Engine
from serving.jobs import Rows, Ticket
from tests.unit.test_serving_engine import FakeRunner, K, _images, _plan, ticket

NEVER = _plan([math.inf] * (K - 1))  # nobody confident: caps and deadlines stop rows
NEVER_PAST_2 = _plan([math.inf] * (K - 1), cap=1)


class LatencyRunner(FakeRunner):
    """Each stage batch takes as long as the engine's latency model says (its floor)."""

    engine: Engine | None = None

    def run_stage(self, index: int, state: State) -> tuple[State, torch.Tensor]:
        if self.engine is not None:
            time.sleep(self.engine.latency.floor_estimate(index, state[0].shape[0]))
        return super().run_stage(index, state)


def set_stage(engine: Engine, stage: int, by_bucket: dict[int, float]) -> None:
    for n in engine.latency.buckets:
        engine.latency.set(stage, n, by_bucket[n])


def uniform(engine: Engine, seconds: float) -> Engine:
    for k in range(K):
        set_stage(engine, k, {n: seconds for n in engine.latency.buckets})
    return engine


def _timed_engine(stage1: dict[int, float], later: float) -> tuple[LatencyRunner, Engine]:
    """Batches of up to 8 formed without waiting, stage 1 taking ``stage1`` seconds by batch
    size and every later stage ``later``, for real (:class:`LatencyRunner`)."""
    runner = LatencyRunner()
    engine = Engine(
        runner, exit_mflops=[1, 2, 3, 4], max_batch_size=8, max_wait_s=0, max_stage_wait_s=10
    )
    runner.engine = engine
    set_stage(engine, 0, stage1)
    for k in (1, 2, 3):
        set_stage(engine, k, {n: later for n in engine.latency.buckets})
    return runner, engine


def test_a_due_deadline_row_starts_although_a_request_is_on_its_way() -> None:
    # Stage 1 takes 1 ms and the row is due in 100 ms; another request is being decoded, and
    # max_wait_ms is 400. The worker used to hold the batch open for it until max_wait.
    engine = uniform(
        Engine(
            FakeRunner(),
            exit_mflops=[1, 2, 3, 4],
            max_batch_size=8,
            max_wait_s=0.4,
            max_stage_wait_s=0.4,
        ),
        0.001,
    )

    async def main() -> float:
        with engine.expecting():  # another request on its way
            start = time.monotonic()
            engine.submit(ticket(NEVER, deadline=0.1), _images(1))
            step = engine._next()  # the worker's decision, inline
            assert step is not None and step[0] == 0
            return time.monotonic() - start

    waited = asyncio.run(main())
    assert waited < 0.09, f"the worker waited {waited * 1000:.0f} ms"


def test_rows_that_fit_one_batch_in_time_are_not_split() -> None:
    # Stage 1: batches of 1-2 take 0.25 s, 4 take 0.45 s, so 3 take 0.35 s, inside the 0.4 s
    # deadline. Halved from a full batch of 8, the limit came to 2: batches of 2 then 1, the
    # request answered after 0.5 s.
    runner, engine = _timed_engine({1: 0.25, 2: 0.25, 4: 0.45, 8: 0.9}, later=5.0)  # unreached
    assert engine.latency.estimate(0, 3) <= 0.36

    async def main() -> float:
        start = time.monotonic()
        job = engine.submit(ticket(NEVER_PAST_2, deadline=0.4), _images(3))
        engine.start()
        try:
            await job.future
            return time.monotonic() - start
        finally:
            engine.stop()

    elapsed = asyncio.run(main())
    assert runner.calls[0] == (0, 3), runner.calls
    assert elapsed < 0.4, f"answered after {elapsed:.3f} s; batches {runner.calls}"


def test_a_batch_being_decoded_is_in_the_forecast() -> None:
    # The worker decodes a stage-1 batch of four (the images are out of the queues by then):
    # a request admitted meanwhile must see that work ahead of it, not an idle engine.
    inside, gate = threading.Event(), threading.Event()

    def decode(blobs: object, labels: object) -> np.ndarray:
        inside.set()
        gate.wait(5)
        return np.zeros((len(blobs), 1, 1, K), dtype=np.float32)  # type: ignore[arg-type]

    engine = uniform(
        Engine(
            FakeRunner(),
            exit_mflops=[1, 2, 3, 4],
            max_batch_size=4,
            decode=decode,
            normalize=lambda x: x,
        ),
        0.004,
    )

    async def main() -> tuple[float, float]:
        idle = engine.forecast(1)
        engine.start()
        try:
            job = engine.submit(ticket(NEVER), Encoded([b"x"] * 4))
            assert await asyncio.to_thread(inside.wait, 5)
            during = engine.forecast(1)
            gate.set()
            await job.future
            return idle.wait, during.wait
        finally:
            gate.set()
            engine.stop()

    idle, during = asyncio.run(main())
    assert idle == 0.0
    assert during > 0.003, f"forecast wait {during} while a batch of 4 is in hand"


def _aged_and_fresh(engine: Engine, first: Ticket) -> float:
    """``first``'s row waits at stage 1 with six plain rows behind it; a row due in 0.3 s joins
    them. Seconds until that row's answer."""

    async def main() -> float:
        older = engine.submit(first, _images(1, 1))
        fresh = engine.submit(ticket(NEVER_PAST_2), _images(6, 2))
        start = time.monotonic()
        timed = engine.submit(ticket(NEVER_PAST_2, deadline=0.3), _images(1, 3))
        engine.start()
        try:
            await timed.future
            elapsed = time.monotonic() - start
            await older.future, await fresh.future
            return elapsed
        finally:
            engine.stop()

    return asyncio.run(main())


@pytest.mark.parametrize("first", ["plain, waited", "admitted late"])
def test_a_row_with_no_deadline_in_reach_does_not_make_the_batch_full(first: str) -> None:
    # Stage 1: one or two rows take 0.1 s, more take 0.4 s. Ahead of the row due in 0.3 s in
    # the deadline order: a plain row that has waited past the traffic's patience, or a row
    # admitted late whose place is already past. Neither has a deadline to fit, but their keys
    # in the past once sized the batch as if a deadline were lost: all eight rows in 0.4 s,
    # the row due in 0.3 s late. Sized for it: the first row, it, and one more (0.25 s).
    runner, engine = _timed_engine({1: 0.1, 2: 0.1, 4: 0.4, 8: 0.4}, later=0.001)
    now = time.monotonic()
    if first == "plain, waited":
        older = Ticket(NEVER_PAST_2, 0, now - 1.0, now + 30)
    else:
        older = Ticket(NEVER_PAST_2, 0, now - 1.0, now + 30, now - 0.9, limit=0, late=True)
    elapsed = _aged_and_fresh(engine, older)
    assert runner.calls[0] == (0, 3), runner.calls
    assert elapsed < 0.3, f"answered after {elapsed:.3f} s (deadline 0.3 s); {runner.calls}"


def test_a_deeper_stage_takes_its_earliest_deadlines_row_by_row() -> None:
    # Stage 2 holds the survivors of two stage-1 batches: A (one row due in 35 ms and three
    # with seconds to spare) and B (two rows due in 45 ms). Ten milliseconds a row, so the batch
    # holds three. Taken group by group, A went first (its earliest row is the earliest of all)
    # and filled the batch, and B's rows, left for the next batch, ended at 50 ms: late. Row
    # by row, the batch is A's due row and B's two.
    engine = Engine(FakeRunner(), exit_mflops=[1, 2, 3, 4], max_batch_size=8)
    set_stage(engine, 1, {n: 0.01 * n for n in engine.latency.buckets})
    now = time.monotonic()

    def group(job_id: int, deadlines: list[float]) -> np.ndarray:
        at = [
            engine.slots.allocate(job_id + i, Ticket(NEVER, 0, now, now + 30, now + d), 1)
            for i, d in enumerate(deadlines)
        ]
        return np.array(at, dtype=np.int64)

    a = group(0, [0.035, 10, 10, 10])
    b = group(10, [0.045, 0.045])
    for rows in (a, b):
        engine._push(1, Rows(rows, [torch.zeros(len(rows), K)], now))
    soonest, _ = engine._soonest(now)
    taken = engine._take(1, now, soonest[1])
    assert sorted(np.concatenate([r.slots for r in taken]).tolist()) == sorted(
        [int(a[0]), *b.tolist()]
    )
    left = [r.slots.tolist() for r in engine._queues[1]]
    assert left == [a[1:].tolist()] and engine.queue_rows()[1] == 3
