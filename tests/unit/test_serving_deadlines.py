"""Deadlines: the latency model, the engine's deadline rules (stop before a stage that would end
late, earliest deadlines first, answer waiting rows in time, top-k whatever path answered),
admission's forecast and policies, and the degradation ladder."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import pytest
import torch

from exitwise.bundle import Calibration, OperatingPoint, SplitResult
from exitwise.models import State
from serving import deadlines
from serving.budget.resolve import BudgetResolver
from serving.engine import Engine
from serving.errors import DeadlineUnmeetableError, InvalidParameterError
from serving.jobs import Outcome, Ticket
from serving.latency import LatencyModel, buckets_up_to
from tests.unit.test_serving_engine import FakeRunner, K, _images, _plan, ticket


def test_buckets_and_estimates() -> None:
    assert buckets_up_to(32) == [1, 2, 4, 8, 16, 32] and buckets_up_to(12) == [1, 2, 4, 8, 12]
    m = LatencyModel(2, 8)
    assert m.estimate(0, 4) == 0.0  # nothing measured yet
    m.set(0, 1, 0.001)
    m.set(0, 8, 0.004)
    assert m.estimate(0, 1) == pytest.approx(0.001)
    assert m.estimate(0, 8) == pytest.approx(0.004)
    assert m.estimate(0, 4) == pytest.approx(0.001 + 0.003 * 3 / 7)  # between the buckets
    assert m.estimate(0, 16) == pytest.approx(0.008)  # beyond: per-row cost of the largest
    m.observe(0, 8, 0.014)  # slower now: the stage's pace follows, a tenth of the way...
    assert m.estimate(0, 8) == pytest.approx(0.005)
    assert m.estimate(0, 1) == pytest.approx(0.00125)  # ...at every batch size
    assert m.floor(0, 8) == pytest.approx(0.004) and m.floor(1, 8) == 0.0  # warm-up's figure
    assert m.describe()[0] == {"stage": 1, "pace": 1.25, "ms_per_batch": {"1": 1.25, "8": 5.0}}
    m.observe(1, 4, 0.002)  # a size warm-up did not measure takes its first batch as its floor
    assert m.floor(1, 4) == pytest.approx(0.002) and m.estimate(1, 4) == pytest.approx(0.002)


def test_the_estimates_come_home_after_an_overload_whatever_size_runs_then() -> None:
    # An overload runs full batches, slowed down by the HTTP work sharing the core; the load
    # after it runs only small ones. Every batch moves the stage's one pace, so the full-batch
    # forecast comes back too. (A mean per size stayed at twice the floor: only full batches
    # could move it, and the deadline rules, sizing batches to fit, never ran one again.)
    m = LatencyModel(1, 32)
    for n in m.buckets:
        m.set(0, n, 0.0001 * n)
    for _ in range(50):
        m.observe(0, 32, 2 * 0.0032)
    assert m.estimate(0, 32) == pytest.approx(0.0064, rel=0.02)
    for _ in range(50):
        m.observe(0, 4, 0.0004)
    assert m.estimate(0, 32) == pytest.approx(0.0032, rel=0.02)
    assert m.per_row_full[0] == pytest.approx(0.0001, rel=0.02)


class StallingRunner(FakeRunner):
    """Its first ``stalled`` stage calls take 20 ms each: another process held the core."""

    def __init__(self, stalled: int) -> None:
        super().__init__()
        self.stalled = stalled

    def run_stage(self, index: int, state: State) -> tuple[State, torch.Tensor]:
        if len(self.calls) < self.stalled:
            time.sleep(0.020)
        return super().run_stage(index, state)


def test_a_stall_during_warm_up_spoils_one_repeat_not_the_floor() -> None:
    # The stall covers the first two timings of every stage at batch 1. Timed back to back per
    # size, both repeats of batch 1 fell in it, and a 20 ms deadline was refused up front as
    # shorter than exit 1.
    m = LatencyModel(K, 8)
    m.measure(StallingRunner(stalled=2 * K), (1, 1, K))
    assert all(m.floor(stage, 1) < 0.010 for stage in range(K))


def test_a_batch_faster_than_warm_up_lowers_the_first_exit_floor() -> None:
    m = LatencyModel(1, 8)
    for n in m.buckets:
        m.set(0, n, 0.060)  # warm-up on a machine busy with something else
    m.observe(0, 3, 0.0002)  # three rows are not the four-row bucket's evidence
    assert m.floor(0, 4) == pytest.approx(0.060)
    m.observe(0, 1, 0.0002)
    assert m.floor(0, 1) == pytest.approx(0.0002)
    m.observe(0, 1, 0.0005)  # slower again: the pace moves, the floor stays
    assert m.floor(0, 1) == pytest.approx(0.0002)
    deadlines.check(0.020, timeout_s=30, first_exit_s=m.floor(0, 1))
    # The forecasts keep warm-up's shape; the pace alone brings them down to what runs now.
    assert m.floor_estimate(0, 1) == pytest.approx(0.060)
    assert m.estimate(0, 1) == pytest.approx(0.060 * m.pace[0]) and m.pace[0] < 1


NEVER = _plan([math.inf] * (K - 1))  # nobody is confident: only caps and deadlines stop them
T = TypeVar("T")


class SlowRunner(FakeRunner):
    """Each stage takes ``per_stage`` seconds."""

    def __init__(self, per_stage: float) -> None:
        super().__init__(delay=per_stage)


class GatedRunner(FakeRunner):
    """Its first stage batch waits until ``gate`` is set; a later stage-1 batch of 3 rows or
    more takes ``slow`` seconds."""

    def __init__(self, slow: float) -> None:
        super().__init__()
        self.inside, self.gate = threading.Event(), threading.Event()
        self.slow = slow
        self.batches: list[torch.Tensor] = []

    def run_stage(self, index: int, state: State) -> tuple[State, torch.Tensor]:
        self.batches.append(state[0].clone())
        if len(self.batches) == 1:
            self.inside.set()
            self.gate.wait(5)
        elif index == 0 and len(state[0]) >= 3:
            time.sleep(self.slow)
        return super().run_stage(index, state)


def _timed(engine: Engine, seconds: float = 0.001) -> Engine:
    for k in range(K):
        for n in engine.latency.buckets:
            engine.latency.set(k, n, seconds)
    return engine


def _serve(engine: Engine, images: torch.Tensor, thresholds: list[float], deadline_ms: float):  # type: ignore[no-untyped-def]
    async def main():  # type: ignore[no-untyped-def]
        engine.start()
        try:
            start = time.monotonic()
            out = await engine.infer(ticket(_plan(thresholds), deadline=deadline_ms / 1000), images)
            return out, time.monotonic() - start
        finally:
            engine.stop()

    return asyncio.run(main())


def test_an_image_stops_where_the_next_stage_would_miss_its_deadline() -> None:
    # Stages of 0.2 s and a deadline of 0.5 s: two stages fit (0.4 s), a third would end at
    # 0.6 s. The margins (0.1 s either way) absorb a busy machine's scheduling delays.
    runner = SlowRunner(per_stage=0.2)
    engine = _timed(Engine(runner, exit_mflops=[1, 2, 3, 4], max_batch_size=8), 0.2)
    out, _ = _serve(engine, _images(4), [math.inf] * (K - 1), deadline_ms=500)
    assert out.exit.tolist() == [1] * 4
    assert out.reasons() == ["deadline"] * 4
    assert [n for _, n in runner.calls] == [4, 4]  # stage 3 never ran


def test_reasons_confident_and_cap_and_no_deadline_changes_nothing() -> None:
    images = _images(16, seed=3)
    a = Engine(FakeRunner(), exit_mflops=[1, 2, 3, 4])
    b = Engine(FakeRunner(), exit_mflops=[1, 2, 3, 4])
    thresholds = [0.9, 0.85, 0.8]
    with_deadline, _ = _serve(a, images, thresholds, deadline_ms=10_000)

    async def plain() -> Outcome:
        b.start()
        try:
            return await b.infer(ticket(_plan(thresholds)), images)
        finally:
            b.stop()

    without = asyncio.run(plain())
    # A generous deadline changes nothing.
    for field in ("exit", "class_id", "confidence", "reason"):
        np.testing.assert_array_equal(getattr(with_deadline, field), getattr(without, field))
    reasons = set(without.reasons())
    assert reasons <= {"confident", "cap"} and "confident" in reasons
    for e, r in zip(without.exit.tolist(), without.reasons(), strict=True):
        assert (r == "cap") == (e == K - 1)  # the last exit has no threshold


def test_rows_waiting_past_their_deadline_are_answered_from_their_last_exit() -> None:
    # A slow first stage for a crowd, then a short deadline: the rows waiting for stage 2 are
    # answered from exit 1 rather than run late.
    runner = SlowRunner(per_stage=0.03)
    engine = Engine(runner, exit_mflops=[1, 2, 3, 4], max_batch_size=4, max_stage_wait_s=10)
    _timed(engine, 0.03)

    async def main() -> list[Outcome]:
        engine.start()
        try:
            late = [engine.submit(ticket(NEVER, deadline=0.05), _images(4, s)) for s in range(3)]
            return [await j.future for j in late]
        finally:
            engine.stop()

    outcomes = asyncio.run(main())
    assert all(r == "deadline" for o in outcomes for r in o.reasons())
    assert min(int(o.exit.min()) for o in outcomes) == 0  # some never got past exit 1


def test_rows_a_waiting_queue_answers_by_their_deadline_are_delivered_at_once() -> None:
    # A lone request of 2 images: after stage 1 a batch of 2 is forecast to finish stage 2 in
    # time, so its rows queue there; the sweep of waiting rows then forecasts a batch of 1
    # (dearer here) and answers them from exit 1. Nothing else is queued: the worker must deliver
    # those answers before it sleeps (it slept first, and the request waited for its timeout).
    engine = Engine(FakeRunner(), exit_mflops=[1, 2, 3, 4], max_batch_size=4, max_stage_wait_s=10)
    _timed(engine)
    engine.latency.set(1, 1, 5.0)

    async def main() -> Outcome:
        engine.start()
        try:
            job = engine.submit(ticket(NEVER, deadline=1.0), _images(2))
            return await asyncio.wait_for(job.future, 3.0)
        finally:
            engine.stop()

    out = asyncio.run(main())
    assert out.reasons() == ["deadline", "deadline"] and out.exit.tolist() == [0, 0]


def _two_requests(engine: Engine, runner: GatedRunner, deadline: float, top_k: int):  # type: ignore[no-untyped-def]
    """Request A (2 images, ``deadline``) runs stage 1 alone; B (3 images, no deadline) arrives
    while it runs, and its stage 1 then takes ``runner.slow`` seconds while A waits for
    stage 2. A's outcome and the seconds it took."""

    async def main():  # type: ignore[no-untyped-def]
        engine.start()
        try:
            start = time.monotonic()
            a = engine.submit(ticket(NEVER, top_k, deadline=deadline), _images(2, 1))
            await asyncio.to_thread(runner.inside.wait, 5)
            b = engine.submit(ticket(NEVER), _images(3, 2))
            runner.gate.set()
            out = await a.future
            elapsed = time.monotonic() - start
            await b.future
            return out, elapsed
        finally:
            engine.stop()

    return asyncio.run(main())


def test_a_deadline_answer_has_its_top_k_whatever_answered_it() -> None:
    # A's rows are answered by their deadline while they wait for stage 2, where the survivors of
    # B's batch (whose request asked for no top-k) join them: each still has its top 2.
    runner = GatedRunner(slow=0.4)
    engine = Engine(
        runner, exit_mflops=[1, 2, 3, 4], max_batch_size=3, max_wait_s=0, max_stage_wait_s=10
    )
    _timed(engine, 0.3)  # a stage is forecast to take longer than A has left after stage 1
    out, _ = _two_requests(engine, runner, deadline=0.2, top_k=2)
    assert out.reasons() == ["deadline", "deadline"]
    assert out.top_ids.shape == (2, 2) and out.top_probs.shape == (2, 2)
    np.testing.assert_allclose(out.top_probs[:, 0], out.confidence, rtol=1e-12)
    assert out.top_probs.sum(axis=1) == pytest.approx(1.0)  # two classes


def test_rows_in_a_deeper_queue_are_answered_by_their_deadline() -> None:
    # B's stage-1 batch is forecast (and takes) 0.4 s; A, waiting for stage 2 with 0.25 s left,
    # runs first and is answered in time, instead of after B's batch.
    runner = GatedRunner(slow=0.4)
    engine = Engine(
        runner, exit_mflops=[1, 2, 3, 4], max_batch_size=3, max_wait_s=0, max_stage_wait_s=10
    )
    _timed(engine)
    engine.latency.set(0, 3, 0.4)
    out, elapsed = _two_requests(engine, runner, deadline=0.25, top_k=0)
    assert elapsed < 0.25
    assert len(out.exit) == 2


def test_a_shrunk_batch_takes_the_row_with_the_deadline() -> None:
    # Six rows without a deadline wait for stage 1, then one whose deadline leaves room for a
    # batch of one row only: the batch taken is that row, not the oldest.
    runner = GatedRunner(slow=0.0)
    runner.gate.set()
    engine = Engine(
        runner, exit_mflops=[1, 2, 3, 4], max_batch_size=8, max_wait_s=0, max_stage_wait_s=10
    )
    _timed(engine)
    for n in engine.latency.buckets:  # stage 1: one row fits in 0.1 s, two or more do not
        engine.latency.set(0, n, 0.05 if n == 1 else 0.5)
    marked = torch.full((1, 1, 1, K), 7.0)

    async def main() -> None:
        b = engine.submit(ticket(NEVER), _images(6, 3))
        a = engine.submit(ticket(NEVER, deadline=0.1), marked)
        engine.start()
        try:
            await a.future, await b.future
        finally:
            engine.stop()

    asyncio.run(main())
    first = runner.batches[0]
    assert len(first) == 1 and (first == 7.0).all()


def test_a_request_admitted_late_does_not_go_before_one_still_in_time() -> None:
    # A request admitted late (its deadline already lost: exit 1 only) waits with one whose
    # deadline leaves room for a stage-1 batch of one row. The in-time row runs first, alone.
    # (Ordered by deadline, the lost one went first, and a batch room could not fit took both:
    # under load every late admission made requests still in time late too.)
    runner = GatedRunner(slow=0.0)
    runner.gate.set()
    engine = Engine(
        runner, exit_mflops=[1, 2, 3, 4], max_batch_size=8, max_wait_s=0, max_stage_wait_s=10
    )
    _timed(engine)
    for n in engine.latency.buckets:  # stage 1: one row fits in 0.1 s, two or more do not
        engine.latency.set(0, n, 0.05 if n == 1 else 0.5)
    now = time.monotonic()  # the lost one has 0.05 s left of 0.1, but exit 1 is forecast later
    lost = Ticket(NEVER, 0, now - 0.05, now + 30, now + 0.05, limit=0, late=True)
    marked = torch.full((1, 1, 1, K), 7.0)

    async def main() -> tuple[Outcome, Outcome]:
        a = engine.submit(lost, _images(1, 3))
        b = engine.submit(ticket(NEVER, deadline=0.1), marked)
        engine.start()
        try:
            return await a.future, await b.future
        finally:
            engine.stop()

    late, _ = asyncio.run(main())
    first = runner.batches[0]
    assert len(first) == 1 and (first == 7.0).all()
    assert late.exit.tolist() == [0] and late.reasons() == ["deadline"]
    assert engine.slots.timed == 0


def _batches(
    marked_ticket: Callable[[], Ticket],
    blocker_ticket: Callable[[], Ticket] = lambda: ticket(NEVER),
) -> tuple[Engine, list[tuple[int, torch.Tensor]]]:
    """A plain request's stage-1 batch holds the worker while a request marked 7.0 (its ticket
    made by ``marked_ticket`` then), and eight asking 1 s after it, join stage 1's queue;
    batches of two. The engine, and the stage and rows of every batch it ran, in order (the
    blocker's first; its ticket made by ``blocker_ticket``)."""
    runner = GatedRunner(slow=0.0)
    engine = Engine(
        runner, exit_mflops=[1, 2, 3, 4], max_batch_size=2, max_wait_s=0, max_stage_wait_s=10
    )
    _timed(engine)
    marked = torch.full((1, 1, 1, K), 7.0)

    async def main() -> None:
        engine.start()
        try:
            blocker = engine.submit(blocker_ticket(), _images(1, 9))
            await asyncio.to_thread(runner.inside.wait, 5)
            special = engine.submit(marked_ticket(), marked)
            timely = [engine.submit(ticket(NEVER, deadline=1.0), _images(1, s)) for s in range(8)]
            runner.gate.set()
            for job in (blocker, special, *timely):
                await job.future
        finally:
            engine.stop()

    asyncio.run(main())
    return engine, [(stage, b) for (stage, _), b in zip(runner.calls, runner.batches, strict=True)]


def _first_batches(marked_ticket: Callable[[], Ticket]) -> tuple[Engine, list[torch.Tensor]]:
    """:func:`_batches`' stage-1 batches."""
    engine, calls = _batches(marked_ticket)
    return engine, [b for stage, b in calls if stage == 0]


def test_a_request_admitted_late_waits_at_most_one_deadline_more_behind_those_in_time() -> None:
    # A request admitted late, now one deadline (10 ms) past its own, waits with eight still in
    # time (1 s left each) for stage-1 batches of two. It runs in the first batch: it goes
    # behind the requests in time only up to those due one deadline after its own. (Behind all
    # of them, a standing load of requests in time kept it waiting until the load ended: the
    # second-long tail of a 4x overload run.)
    def lost() -> Ticket:
        now = time.monotonic()
        return Ticket(NEVER, 0, now - 0.02, now + 30, now - 0.01, limit=0, late=True)

    _, firsts = _first_batches(lost)
    assert (firsts[1] == 7.0).any(), [b[:, 0].tolist() for b in firsts]


def test_a_request_admitted_late_is_answered_before_its_own_timeout() -> None:
    # A request admitted late whose timeout (0.3 s away) comes before one deadline after its
    # own (1.1 s away) waits with eight in time (1 s left each) for stage-1 batches of two. It
    # runs in the first batch: behind the requests in time up to its timeout only, not past it
    # (where its late answer, the default policy's promise, would have been a 504).
    def lost() -> Ticket:
        now = time.monotonic()
        return Ticket(NEVER, 0, now - 1.2, now + 0.3, now - 0.05, limit=0, late=True)

    _, firsts = _first_batches(lost)
    assert (firsts[1] == 7.0).any(), [b[:, 0].tolist() for b in firsts]
    assert deadlines.behind(0.0, 1.0, expires=1.5) == 1.5 - deadlines.ANSWER_MARGIN_S
    assert deadlines.behind(0.0, 1.0) == 2.0


def test_a_request_without_a_deadline_keeps_its_place_among_requests_with_one() -> None:
    # A request without a deadline that has waited 1 s, then eight asking 1 s, wait for stage-1
    # batches of two. It runs in the first batch: once it has waited as long as the deadline
    # traffic asks, it goes ahead of the requests still in time. (Ordered last, a standing load
    # of deadline requests kept it waiting until the load ended, or its timeout.) Before that
    # it goes behind them (test_a_shrunk_batch_takes_the_row_with_the_deadline).
    def waited() -> Ticket:
        now = time.monotonic()
        return Ticket(NEVER, 0, now - 1.0, now + 30)

    engine, firsts = _first_batches(waited)
    assert (firsts[1] == 7.0).any(), [b[:, 0].tolist() for b in firsts]
    assert engine.slots.patience == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("deadline", [1.0, 0.0015])
def test_a_request_without_a_deadline_keeps_its_place_at_a_deeper_stage_too(
    deadline: float,
) -> None:
    # A request without a deadline that has waited 2 s finishes stage 1 while nine with a
    # deadline wait for stage 1, the earliest far off, or due before its stage 2 would end. Its
    # stage 2 runs next: it has waited as long as the deadline traffic asks, and goes ahead of
    # requests still in time whichever stage they wait at. (Stage 1's deadlines came first, by
    # the batch rules or as the more urgent queue: a standing load of deadline requests kept
    # it waiting at stage 2 until the load ended.)
    def waited() -> Ticket:
        now = time.monotonic()
        return Ticket(NEVER, 0, now - 2.0, now + 30)

    asked = lambda: ticket(NEVER, deadline=deadline)  # noqa: E731
    _, calls = _batches(asked, blocker_ticket=waited)
    stages = [stage for stage, _ in calls]
    assert stages[:2] == [0, 1], stages  # the blocker's stage 1, then its stage 2


def _forecast(wait: float, stages: list[float]) -> deadlines.Forecast:
    return deadlines.Forecast(100.0, wait, np.array(stages), wait)


def test_admission_gives_the_deepest_exit_that_finishes_in_time() -> None:
    f = _forecast(0.010, [0.002, 0.003, 0.004, 0.005])  # exits done at +12, 15, 19, 24 ms
    assert deadlines.admit(f, 100.020) == (2, False)
    assert deadlines.admit(f, 100.030) == (3, False)
    assert deadlines.admit(f, 100.012) == (0, False)
    # Not even exit 1: the default answers from it anyway (late, and says so); strict refuses.
    assert deadlines.admit(f, 100.011) == (0, True)
    refused = deadlines.refused(_forecast(2.5, [0.002] * 4), deadlines.STRICT)
    assert isinstance(refused, DeadlineUnmeetableError)
    assert refused.response_headers() == {"Retry-After": "3"}
    assert refused.refusal == "deadline_strict"
    assert "exit 1 would answer in about 2502 ms" in str(refused)


def test_deadlines_known_to_be_impossible_up_front_are_refused() -> None:
    deadlines.check(0.050, timeout_s=30, first_exit_s=0.002)
    with pytest.raises(InvalidParameterError, match="shorter than the first exit"):
        deadlines.check(0.001, timeout_s=30, first_exit_s=0.002)
    # Exit 1 alone is not enough: the answer must be sent too (the margin's floor).
    with pytest.raises(InvalidParameterError, match="and sending its answer"):
        deadlines.check(0.0025, timeout_s=30, first_exit_s=0.002)
    deadlines.check(0.003, timeout_s=30, first_exit_s=0.002)
    with pytest.raises(InvalidParameterError, match="request timeout"):
        deadlines.check(31, timeout_s=30, first_exit_s=0.002)
    # The client's own timeout, when shorter, is the request's: the 504 would come first.
    deadlines.check(0.050, timeout_s=30, first_exit_s=0.002, client_timeout_s=0.050)
    deadlines.check(20, timeout_s=30, first_exit_s=0.002, client_timeout_s=60)
    with pytest.raises(InvalidParameterError, match=r"request's timeout \(20 ms\)"):
        deadlines.check(0.050, timeout_s=30, first_exit_s=0.002, client_timeout_s=0.020)
    with pytest.raises(InvalidParameterError, match="server's request timeout"):
        deadlines.check(31, timeout_s=30, first_exit_s=0.002, client_timeout_s=60)


@pytest.mark.parametrize("first_exit_s", [0.0001, 0.0003, 0.002])
def test_a_deadline_taken_up_front_is_admitted_in_time_on_an_idle_server(
    first_exit_s: float,
) -> None:
    # deadline_ms=1 with exit 1 at 0.3 ms was taken, then always forecast late on an idle server
    # (the margin's 1 ms floor was the whole deadline): strict answered 503 to every one.
    margin = deadlines.Margin()  # a fresh server: the margin at its floor
    for deadline_s in np.linspace(0.00051, 0.00501, 91):  # none at a boundary exactly
        try:
            deadlines.check(float(deadline_s), timeout_s=30, first_exit_s=first_exit_s)
        except InvalidParameterError:
            assert deadline_s < first_exit_s + deadlines.ANSWER_MARGIN_S
            continue
        due = deadlines.due(100.0, float(deadline_s), margin.of(float(deadline_s)))
        idle = deadlines.Forecast(now=100.0, wait=0.0, stage=np.full(K, first_exit_s), queued=0.0)
        assert not deadlines.admit(idle, due)[1]  # in time: not late


def _of_4ms_batches() -> Engine:
    """Batches of up to 4, each 4 ms at every stage whatever its size; not started, so what is
    submitted stays queued."""
    return _timed(Engine(FakeRunner(), exit_mflops=[1, 2, 3, 4], max_batch_size=4), 0.004)


def _asked(sizes: list[int], ask: Callable[[Engine], T]) -> list[T]:
    """``ask(engine)`` of a :func:`_of_4ms_batches` engine after each request of ``sizes``
    images joins its queue (0: none)."""

    async def main() -> list[T]:
        engine, out = _of_4ms_batches(), []
        for n in sizes:
            if n:
                engine.submit(ticket(NEVER), _images(n))
            out.append(ask(engine))
        return out

    return asyncio.run(main())


def test_the_engine_forecast_counts_the_work_queued_ahead() -> None:
    idle, busy = _asked([0, 8], lambda engine: engine.forecast())
    assert idle.wait == 0.0
    np.testing.assert_allclose(idle.stage, [0.004] * K)
    # 8 rows at stage 1, each 0.001 s per stage at full batches, half going on after each stage.
    assert busy.wait == pytest.approx(8 * 0.001 * (1 + 0.5 + 0.25 + 0.125))
    assert (busy.finish() > idle.finish()).all()


def test_rows_that_share_the_new_request_s_batch_are_counted_once() -> None:
    # Batches of 4 take 4 ms whatever their size. Three rows wait for stage 1: a new image
    # joins their batch, and exit 1 is done in 4 ms. Counted as work ahead and in its batch
    # too, it was forecast at 9.6 ms (a deadline of 8 ms refused or answered from a shallower
    # exit than it could reach). Five rows: a full batch goes first, the fifth rides along.
    three, five = _asked([3, 2], lambda engine: engine.forecast())
    assert three.wait == 0.0
    assert three.finish()[0] - three.now == pytest.approx(0.004)
    assert five.wait == pytest.approx(4 * 0.001 * (1 + 0.5 + 0.25 + 0.125))  # the full batch
    np.testing.assert_allclose(five.stage, [0.004] * K)


def test_images_past_the_shared_batch_s_room_are_forecast_in_another() -> None:
    # Three rows wait for stage 1 in batches of 4: a request of two images has one seat in
    # their batch, and its second image a batch of its own. Forecast as if its images began a
    # batch, both rode the first: exit 1 at 4 ms, where 8 ms is when it is done (a strict
    # request was admitted, then refused by the engine).
    (f,) = _asked([3], lambda engine: engine.forecast(2))
    assert f.wait == 0.0
    assert f.stage[0] == pytest.approx(0.008)


def test_the_pressure_the_degrader_reads_counts_every_queued_row() -> None:
    # The degrader reads all the work queued: the rows that would share a new request's batch
    # are not ahead of it, but they are load. Left out, 31 rows short of a full batch read as
    # no pressure at all, and 32 as a full batch's.
    three, four = _asked([3, 1], lambda engine: engine.forecast(own=False).queued)
    per_row = 0.001 * (1 + 0.5 + 0.25 + 0.125)
    assert (three, four) == (pytest.approx(3 * per_row), pytest.approx(4 * per_row))


def test_the_degrader_reads_the_same_pressure_with_a_deadline_and_without() -> None:
    # The rows sharing a deadline request's batch are not work ahead of it, but they are load:
    # the degrader's pressure is every queued row's work, whichever request reads it.
    ((timed, plain),) = _asked(
        [3], lambda engine: (engine.forecast(1), engine.forecast(1, own=False))
    )
    assert timed.wait == plain.wait == 0.0  # the three rows share its batch
    assert timed.queued == plain.queued > 0.0


def test_a_request_of_many_images_is_forecast_by_all_its_batches() -> None:
    # Batches of 4, each 4 ms at every stage, nothing queued. One image finishes exit 1 in
    # 4 ms, 8 images only after two batches, 8 ms. Forecast as one image, a strict request of 8
    # with a 6 ms deadline was admitted and answered late; a late-policy one got deeper exits
    # than it could finish.
    engine = _of_4ms_batches()
    one, three, eight = (engine.forecast(n) for n in (1, 3, 8))
    np.testing.assert_allclose(one.stage, [0.004] * K)
    np.testing.assert_allclose(three.stage, [0.004] * K)  # one batch holds them all
    np.testing.assert_allclose(eight.stage, [0.008] * K)
    deadline = one.now + 0.006
    assert deadlines.admit(one, deadline) == (0, False)
    assert deadlines.admit(eight, deadline) == (0, True)  # late: strict refuses it
    assert deadlines.admit(eight, eight.now + 0.017) == (1, False)  # its own clock


def _point(name: str, mflops: float) -> OperatingPoint:
    result = SplitResult(accuracy=90, mflops=mflops, exit_fractions=[0.5, 0.3, 0.1, 0.1], images=10)
    return OperatingPoint(name=name, q=1.0, thresholds=[0.9, 0.8, 0.7, None], heldout=result)


def _ladder(*points: OperatingPoint) -> tuple[Calibration, BudgetResolver]:
    """A calibration of ``points`` on a network of exits costing 1 to 4 MFLOPs, resolved."""
    cal = Calibration(
        weights_sha256="0" * 64,
        heldout_sha256="0" * 64,
        created="2026-01-01",
        exit_mflops=[1, 2, 3, 4],
        operating_points=list(points),
        default_operating_point=points[0].name,
    )
    return cal, BudgetResolver([1, 2, 3, 4], cal)


def test_the_degradation_ladder() -> None:
    cal, r = _ladder(_point("cheap", 1.5), _point("mid", 2.2), _point("dear", 3.1))
    dear = r.resolve(budget_mflops=3.5)
    assert r.degrade(dear, 0) is dear
    one = r.degrade(dear, 1)
    assert (one.operating_point, one.degraded_from) == ("mid", "dear")
    assert r.degrade(dear, 5).operating_point == "cheap"  # never below the cheapest
    assert r.degrade(r.resolve(budget_mflops=1.6), 2).operating_point == "cheap"
    # The full network (an exit cap alone) sits above every point cheaper than its exit.
    full = r.degrade(r.resolve(max_exit=4), 1)
    assert (full.operating_point, full.max_exit, full.degraded_from) == ("dear", 4, "max-exit-4")
    np.testing.assert_array_equal(full.thresholds, cal.point("dear").threshold_array())
    assert r.degrade(r.resolve(max_exit=2), 1).operating_point == "cheap"


def test_the_degradation_ladder_steps_to_a_cheaper_cost_every_level() -> None:
    # Budgets asked above what the network costs (or close together) calibrate to points of
    # the same expected cost: "full-a" and "full-b" both serve every image to the last exit.
    # A level stepped from one to the other and relieved nothing, and the degrader's top level
    # counted such a step too.
    _, r = _ladder(_point("cheap", 1.5), _point("full-a", 4.0), _point("full-b", 4.0))
    for start in (r.resolve(budget_mflops=4.0), r.resolve(max_exit=4)):
        one = r.degrade(start, 1)
        assert one.operating_point == "cheap", start.name
    assert [p.name for p in r.ladder] == ["cheap", "full-b"]  # the degrader's levels
    assert r.resolve(budget_mflops=4.0).operating_point == "full-b"  # the later one, as before


def test_the_margin_settles_where_the_asked_share_of_answers_is_late() -> None:
    # Answers take 20 ms plus an exponential delay of mean 5 ms that no plan sees; a request
    # planned to be due `margin` before its 50 ms deadline is ready `50 - margin + delay` after
    # arrival. The margin should settle near the delay's 99.5th percentile (5 ms x ln 200).
    rng = np.random.default_rng(0)
    margin = deadlines.Margin()
    seen = []
    for delay in rng.exponential(0.005, 60_000):
        elapsed = 0.050 - margin.of(0.050) + delay
        margin.observe(0.050, elapsed, late=False)
        seen.append(margin.seconds)
    settled = np.array(seen[20_000:])
    assert 0.020 < float(np.median(settled)) < 0.034  # 0.005 * ln(200) = 26.5 ms
    assert margin.floor_s <= settled.min() and settled.max() <= 0.9 * 0.050 + margin.step_s


def test_the_margin_grows_as_far_as_answers_need_within_a_share_of_the_deadline() -> None:
    # Overload on one core: answers reach the socket 60-80 ms after the plan said (the event
    # loop's backlog). With a 100 ms deadline the margin follows that far (a fixed 50 ms
    # ceiling left a fifth of strict answers late), but never past 90 ms of it.
    rng = np.random.default_rng(0)
    margin = deadlines.Margin()
    for delay in rng.uniform(0.060, 0.080, 20_000):
        margin.observe(0.100, 0.100 - margin.of(0.100) + delay, late=False)
    assert 0.075 < margin.seconds <= 0.090 + margin.step_s
    # Delays beyond what any deadline allows: the margin stops at the largest share asked.
    for _ in range(1000):
        margin.observe(0.100, 0.100 - margin.of(0.100) + 0.2, late=False)
    assert 0.088 < margin.seconds <= 0.090 + margin.step_s
    assert margin.of(0.100) == pytest.approx(0.090) and margin.of(0.020) == pytest.approx(0.018)


def test_a_pause_after_an_overload_brings_the_margin_home() -> None:
    # An overload raises the margin to some 80 ms; then no deadline request for a few minutes.
    # The quantile alone would still plan the next ones 80 ms early (it needs some 8,000 answers
    # in time to come down): past a quiet of 30 s the margin halves every 10 s instead.
    now = [0.0]
    margin = deadlines.Margin(clock=lambda: now[0])
    quiet, half = margin.quiet_s, margin.half_life_s
    rng = np.random.default_rng(0)
    for i, delay in enumerate(rng.uniform(0.060, 0.080, 5000)):
        now[0] = i * 0.001  # 1,000 answers a second, for 5 s
        margin.observe(0.100, 0.100 - margin.of(0.100) + delay, late=False)
    high = margin.current()
    assert high > 0.060
    last = now[0]
    now[0] = last + quiet - 1  # within the quiet: nothing changes
    assert margin.current() == high
    now[0] = last + quiet + half  # a half-life past the quiet
    assert margin.current() == pytest.approx(margin.floor_s + (high - margin.floor_s) / 2)
    now[0] = last + quiet + 10 * half
    assert margin.of(0.100) < 0.0011  # home: the next request is planned as on an idle server
    # Requests keep it where the quantile puts it: a pause is measured from the last one.
    margin.seconds, start = high, now[0]
    for i in range(100):
        now[0] = start + i * 0.25  # four answers a second for 25 s, none late
        margin.observe(0.100, 0.010, late=False)
    assert margin.current() == pytest.approx(high - 100 * margin.step_s * (1 - margin.quantile))


def test_the_margin_stays_at_its_floor_while_answers_are_in_time() -> None:
    margin = deadlines.Margin()
    for _ in range(1000):
        margin.observe(0.050, 0.010, late=False)
    assert margin.seconds == margin.floor_s == deadlines.ANSWER_MARGIN_S


def test_requests_that_did_not_get_the_whole_margin_count_only_when_in_time() -> None:
    margin = deadlines.Margin()
    margin.seconds = 0.010
    # Admitted late (not even exit 1 was forecast in time): late answers say nothing.
    margin.observe(0.050, 0.060, late=True)
    assert margin.seconds == 0.010
    # A 10 ms deadline gets at most 9 ms of margin: lateness with less than the whole margin
    # says nothing either; in time, with less, it says the whole would have been more than
    # enough (so a margin above every deadline's share cannot freeze).
    assert margin.of(0.010) == pytest.approx(0.009)
    margin.observe(0.010, 0.012, late=False)
    assert margin.seconds == 0.010
    margin.observe(0.010, 0.004, late=False)
    margin.observe(0.050, 0.030, late=True)
    assert margin.seconds == pytest.approx(0.010 - 2 * 0.002 * 0.005)
    # A late answer with the whole margin raises it.
    margin.observe(0.050, 0.0496, late=False)
    assert margin.seconds > 0.010 - 2 * 0.002 * 0.005
    assert deadlines.due(100.0, 0.050, margin.of(0.050)) == pytest.approx(100.05 - margin.seconds)


def test_a_burst_of_late_forecasts_is_answered_late_and_a_standing_one_is_shed() -> None:
    now = [0.0]
    gate = deadlines.Overload(0.1, clock=lambda: now[0])
    assert not gate.standing()  # nothing late seen yet
    for i in range(10):  # a step in load: 10 late forecasts within 5 ms, then in time again
        now[0] = 1.0 + i * 0.0005
        gate.saw(True)
    gate.saw(False)
    assert not gate.standing()  # a burst: answered late
    now[0] = 2.0
    assert not gate.standing()
    # A standing overload: three forecasts in four late, those in time scattered among them.
    for i in range(400):
        now[0] = 2.0 + i * 0.0005
        gate.saw(i % 4 != 0)
        if now[0] < 2.05:
            assert not gate.standing()  # not yet the interval's worth
    assert gate.standing()
    for i in range(200):  # the overload is over: forecasts in time
        now[0] = 2.2 + i * 0.0005
        gate.saw(False)
    assert not gate.standing()
    # One late forecast after a pause is no overload either: it counts from when it was seen.
    now[0] = 10.0
    gate.saw(True)
    assert not gate.standing()
    now[0] = 10.1  # ... but one held for the interval, with nothing in time since, is
    assert gate.standing()
    assert deadlines.Overload(0.0).standing()  # 0: shed at once, as before the gate
    with pytest.raises(ValueError):
        deadlines.Overload(-1.0)


def test_an_idle_pause_after_an_overload_is_no_standing_overload() -> None:
    # A standing overload ends on a late forecast; the server then sits idle for a minute. The
    # next load's first request is in time, and 5 ms later a step in load has one forecast late
    # at the cheapest point: a burst, to be answered late. The idle minute once counted as a
    # minute of late forecasts, and the burst was refused at once.
    now = [0.0]
    gate = deadlines.Overload(0.1, clock=lambda: now[0])
    for i in range(400):
        now[0] = i * 0.0005
        gate.saw(True)
    assert gate.standing()
    now[0] += 0.5  # a pause in admissions is held as late for a while...
    assert gate.standing()
    now[0] += deadlines.HOLD_INTERVALS * 0.1  # ...but not for good: nothing stands any more
    assert not gate.standing()
    now[0] += 60.0
    gate.saw(False)
    now[0] += 0.005
    gate.saw(True)
    assert not gate.standing()
