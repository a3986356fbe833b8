"""The engine and its stage loop, on a fake runner whose confidences are known in advance."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from typing import Any

import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry

from exitwise.models import State
from exitwise.policy import confidence_and_prediction, decide_exits
from exitwise.runtime import StageRunner, run_early_exit
from serving.budget.resolve import ExitPlan
from serving.engine import Engine, EngineFailureError
from serving.errors import DeadlineExceededError, NotReadyError, QueueFullError
from serving.jobs import Job, Outcome, Slots, Ticket, spans
from serving.metrics import Metrics

K = 4


class FakeRunner:
    """Image i's logits at exit k are ``[x_ik, 0]``: confidence sigmoid(|x_ik|), class x_ik < 0."""

    backend = "fake"
    provider = "fake-cpu"
    device = torch.device("cpu")
    num_exits = K

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.fail = False
        self.calls: list[tuple[int, int]] = []  # (stage, rows)

    def initial_state(self, images: torch.Tensor) -> State:
        return [images.reshape(images.shape[0], -1).float()]

    def run_stage(self, index: int, state: State) -> tuple[State, torch.Tensor]:
        x = state[0]
        self.calls.append((index, x.shape[0]))
        if self.delay:
            time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("the device is on fire")
        return [x], torch.stack([x[:, index], torch.zeros_like(x[:, index])], dim=1)


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).uniform(-4, 4, (n, 1, 1, K))).float()


def _all_confidences(images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    x = images.reshape(images.shape[0], K)
    pairs = [confidence_and_prediction(torch.stack([x[:, k], 0 * x[:, k]], 1)) for k in range(K)]
    return (
        torch.stack([c for c, _ in pairs], 1).numpy(),
        torch.stack([p for _, p in pairs], 1).numpy(),
    )


def _plan(thresholds: list[float], cap: int = K - 1) -> ExitPlan:
    arr = np.array([*thresholds, -math.inf], dtype=np.float64)
    return ExitPlan(arr, cap, "p", None, None, None, "request")


def ticket(
    plan: ExitPlan, top_k: int = 0, expires: float = 30.0, deadline: float = math.inf
) -> Ticket:
    """A ticket as admission makes it; ``expires`` and ``deadline`` in seconds from now."""
    now = time.monotonic()
    return Ticket(plan, top_k, now, now + expires, now + deadline)


def results(out: Outcome) -> list[tuple[int, int, float, str]]:
    """Per image: exit, class, confidence, stop reason."""
    return list(
        zip(
            out.exit.tolist(),
            out.class_id.tolist(),
            out.confidence.tolist(),
            out.reasons(),
            strict=True,
        )
    )


PLANS = [_plan([0.9, 0.85, 0.8]), _plan([0.99, 0.97, 0.95], cap=2), _plan([0.7, math.inf, 0.6])]


def test_stage_loop_is_the_exit_rule_with_per_image_thresholds() -> None:
    runner = FakeRunner()
    assert isinstance(runner, StageRunner)
    images = _images(64)
    rng = np.random.default_rng(1)
    choice = rng.integers(0, len(PLANS), 64)
    thr = np.stack([PLANS[c].thresholds for c in choice])
    cap = np.array([PLANS[c].max_index for c in choice])
    out = run_early_exit(runner, images, thr, cap, top_k=2)
    conf, pred = _all_confidences(images)
    exits = decide_exits(conf, thr, cap)
    np.testing.assert_array_equal(out.exit_index, exits)
    np.testing.assert_array_equal(out.class_id, pred[np.arange(64), exits])
    np.testing.assert_allclose(out.confidence, conf[np.arange(64), exits], rtol=1e-12)
    np.testing.assert_allclose(out.top_probs[:, 0], out.confidence, rtol=1e-12)
    np.testing.assert_allclose(out.top_probs.sum(1), 1.0, rtol=1e-12)  # two classes
    # Rows really leave: each stage sees only the images that have not exited before it.
    expected_rows = [int((exits >= k).sum()) for k in range(K) if (exits >= k).any()]
    assert out.stage_rows == expected_rows == [rows for _, rows in runner.calls]
    assert expected_rows[-1] < 64


def _run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_mixed_budgets_share_a_batch_and_match_running_alone() -> None:
    batches = [_images(5, seed=s) for s in range(3)]

    async def together() -> list[Outcome]:
        runner = FakeRunner()
        engine = Engine(runner, exit_mflops=[1, 2, 3, 4], max_batch_size=64)
        jobs = [engine.submit(ticket(p, 2), x) for x, p in zip(batches, PLANS, strict=True)]
        engine.start()  # only now: all 15 images are queued, so they form one batch
        try:
            got = [await job.future for job in jobs]
        finally:
            engine.stop()
        assert runner.calls[0] == (0, 15)
        return got

    async def alone(x: torch.Tensor, plan: ExitPlan) -> Outcome:
        engine = Engine(FakeRunner(), exit_mflops=[1, 2, 3, 4])
        engine.start()
        try:
            return await engine.infer(ticket(plan, 2), x)
        finally:
            engine.stop()

    shared = _run(together())
    for x, plan, got in zip(batches, PLANS, shared, strict=True):
        assert results(_run(alone(x, plan))) == results(got)


def test_queue_full_is_refused_at_once() -> None:
    async def main() -> None:
        engine = Engine(FakeRunner(), exit_mflops=[1, 2, 3, 4], max_queue_images=4)
        engine.submit(ticket(PLANS[0]), _images(3))
        with pytest.raises(QueueFullError, match="3 of 4"):
            engine.submit(ticket(PLANS[0]), _images(2))
        engine.submit(ticket(PLANS[0]), _images(1))  # still fits
        assert engine.queued_images == 4
        engine.start()
        engine.stop()
        assert engine.queued_images == 0
        with pytest.raises(NotReadyError):
            engine.submit(ticket(PLANS[0]), _images(1))

    _run(main())


def test_deadline_cancels_and_frees_the_queue() -> None:
    async def main() -> None:
        runner = FakeRunner()
        engine = Engine(runner, exit_mflops=[1, 2, 3, 4])
        with pytest.raises(DeadlineExceededError):  # the worker is not running yet
            await engine.infer(ticket(PLANS[0], expires=0.05), _images(3))
        assert engine.queued_images == 0
        engine.start()
        try:
            runner.delay = 0.1  # slower than the deadline
            with pytest.raises(DeadlineExceededError):
                await engine.infer(ticket(PLANS[0], expires=0.05), _images(2))
            runner.delay = 0.0
            out = await engine.infer(ticket(PLANS[0]), _images(2))
            assert len(out.exit) == 2
        finally:
            engine.stop()

    _run(main())


def test_a_failing_batch_fails_its_requests_and_the_engine_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        runner = FakeRunner()
        engine = Engine(runner, exit_mflops=[1, 2, 3, 4])
        engine.start()
        try:
            runner.fail = True
            with pytest.raises(EngineFailureError):
                await engine.infer(ticket(PLANS[0]), _images(2))
            runner.fail = False
            out = await engine.infer(ticket(PLANS[0]), _images(2))
            assert len(out.exit) == 2
        finally:
            engine.stop()

    _run(main())
    assert "the device is on fire" in caplog.text  # the traceback is logged


def test_stop_finishes_what_is_queued() -> None:
    async def main() -> None:
        engine = Engine(FakeRunner(), exit_mflops=[1, 2, 3, 4], max_batch_size=2)
        jobs = [engine.submit(ticket(PLANS[0]), _images(3, s)) for s in range(3)]
        engine.start()
        engine.stop()
        outcomes = [await job.future for job in jobs]
        assert [len(o.exit) for o in outcomes] == [3, 3, 3]

    _run(main())


def test_batch_waits_only_for_requests_on_their_way() -> None:
    async def main() -> None:
        runner = FakeRunner()
        engine = Engine(runner, exit_mflops=[1, 2, 3, 4], max_batch_size=2, max_wait_s=5.0)
        engine.start()
        try:
            start = time.monotonic()
            await engine.infer(ticket(PLANS[0]), _images(1))
            assert time.monotonic() - start < 2.5  # nobody else coming: no 5 s wait
            runner.calls.clear()
            with engine.expecting() as arrival:  # another request is being decoded
                first = engine.submit(ticket(PLANS[0]), _images(1, 1))
                await asyncio.sleep(0.05)
                second = engine.submit(ticket(PLANS[1]), _images(1, 2), arrival)
            await first.future, await second.future
            assert runner.calls[0] == (0, 2)  # one batch of both
            with engine.expecting():
                pass  # a request that failed before reaching the queue is forgotten
            again = time.monotonic()
            await engine.infer(ticket(PLANS[0]), _images(1))
            assert time.monotonic() - again < 2.5
        finally:
            engine.stop()

    _run(main())


def test_metrics_follow_the_batches() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.describe_model("m", "fake", "cpu", "fake-cpu", K)
    images = _images(32)
    conf, _ = _all_confidences(images)
    exits = decide_exits(conf, PLANS[0].thresholds)

    async def main() -> None:
        engine = Engine(FakeRunner(), exit_mflops=[1, 2, 3, 4], metrics=metrics)
        engine.start()
        try:
            await engine.infer(ticket(PLANS[0]), images)
        finally:
            engine.stop()

    _run(main())
    get = metrics.registry.get_sample_value
    for k in range(K):
        assert get("exitwise_exits_total", {"exit": str(k + 1)}) == (exits == k).sum()
        if (exits >= k).any():
            rows = get("exitwise_stage_batch_size_sum", {"stage": str(k + 1)})
            assert rows == (exits >= k).sum()
    assert get("exitwise_mflops_per_image_sum") == pytest.approx(float((exits + 1).sum()))
    assert get("exitwise_batch_size_sum") == 32 and get("exitwise_queue_depth") == 0
    assert get("exitwise_queue_wait_seconds_count") == 1  # one request
    assert get("exitwise_compute_seconds_count") == len([k for k in range(K) if (exits >= k).any()])
    assert (
        get(
            "exitwise_model_info",
            {"model": "m", "backend": "fake", "device": "cpu", "provider": "fake-cpu"},
        )
        == 1
    )


class BusyRunner(FakeRunner):
    """The fake runner with every stage spending ``seconds`` of CPU (not sleeping)."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def run_stage(self, index: int, state: State) -> tuple[State, torch.Tensor]:
        end = time.thread_time() + self.seconds
        while time.thread_time() < end:
            pass
        return super().run_stage(index, state)


def test_metrics_show_the_engine_workers_cpu_time_beside_the_process() -> None:
    # Stages that burn 30 ms of the worker's CPU, and 0.3 s of the event loop's thread: the
    # worker's counter has its own 30 ms a stage (not the loop's), the process's has both.
    metrics = Metrics(CollectorRegistry())
    get = metrics.registry.get_sample_value
    process_before = get("process_cpu_seconds_total")

    async def main() -> None:
        engine = Engine(BusyRunner(0.03), exit_mflops=[1, 2, 3, 4], metrics=metrics)
        engine.start()
        try:
            assert get("exitwise_engine_cpu_seconds_total") == 0.0
            await engine.infer(ticket(_plan([math.inf] * 3)), _images(2))  # all 4 stages
            end = time.thread_time() + 0.3
            while time.thread_time() < end:
                pass
        finally:
            engine.stop()

    _run(main())
    engine_s = get("exitwise_engine_cpu_seconds_total")
    assert 4 * 0.03 <= engine_s < 0.3
    if process_before is not None:  # Linux: /proc
        assert get("process_cpu_seconds_total") - process_before >= engine_s + 0.3 - 0.02


def test_survivors_of_several_batches_run_the_next_stage_together() -> None:
    # Three requests of 4 images queued before the worker starts, batches of 4: stage 1 runs
    # twice before stage 2 has a full batch, so stage 2's first batch mixes two stage-1 batches.
    runner = FakeRunner()
    plan = _plan([0.9, 0.85, 0.8])
    requests = [_images(4, seed=s) for s in (3, 4, 5)]

    async def main() -> list[Outcome]:
        engine = Engine(runner, exit_mflops=[1, 2, 3, 4], max_batch_size=4, max_wait_s=10.0)
        jobs = [engine.submit(ticket(plan, 1), x) for x in requests]
        engine.start()
        try:
            return [await job.future for job in jobs]
        finally:
            engine.stop()

    outcomes = _run(main())
    images = torch.cat(requests)
    conf, pred = _all_confidences(images)
    exits = decide_exits(conf, plan.thresholds)
    got = np.concatenate([o.exit for o in outcomes])
    assert got.tolist() == exits.tolist()
    classes = np.concatenate([o.class_id for o in outcomes])
    assert classes.tolist() == pred[np.arange(12), exits].tolist()
    top = np.concatenate([o.top_probs[:, 0] for o in outcomes])
    assert top.tolist() == pytest.approx(conf[np.arange(12), exits].tolist())
    # Every row ran each stage once, until its exit; stage 2+ batches hold more rows than the
    # survivors of any single stage-1 batch of 4.
    for k in range(K):
        assert sum(rows for s, rows in runner.calls if s == k) == int((exits >= k).sum())
    first = [rows for s, rows in runner.calls if s == 0]
    assert first == [4, 4, 4]
    survivors_per_batch = [int((exits[i : i + 4] >= 1).sum()) for i in (0, 4, 8)]
    second = [rows for s, rows in runner.calls if s == 1]
    assert max(second) > max(survivors_per_batch)


def test_cancelled_rows_leave_every_stage_queue() -> None:
    async def main() -> None:
        runner = FakeRunner(delay=0.05)
        engine = Engine(runner, exit_mflops=[1, 2, 3, 4], max_batch_size=2)
        never = _plan([math.inf, math.inf, math.inf])  # every image runs to the last exit
        engine.start()
        try:
            task = asyncio.ensure_future(engine.infer(ticket(never), _images(4)))
            await asyncio.sleep(0.12)  # some rows have moved on to later stages
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert engine.queued_images == 0
            out = await engine.infer(ticket(never), _images(1))
            assert out.exit.tolist() == [K - 1]
        finally:
            engine.stop()

    _run(main())


def test_requests_that_go_away_never_lend_their_slots_to_others() -> None:
    # Clients give up while their rows wait (a slow stage ahead of them), and new requests
    # keep coming into a small engine. A slot of a request that went away is given to another
    # request only once the worker has dropped every row of it: every answer is its own
    # images', and the engine ends with every slot free (and no deadline left to scan for:
    # the requests that go away have one).
    runner = FakeRunner(delay=0.002)
    plan = _plan([0.9, 0.85, 0.8])

    async def main() -> None:
        engine = Engine(runner, exit_mflops=[1, 2, 3, 4], max_batch_size=2, max_queue_images=4)
        engine.start()
        try:
            rng = np.random.default_rng(7)
            for round_ in range(150):
                gone = engine.submit(ticket(plan, deadline=5.0), _images(2, seed=1000 + round_))
                if rng.uniform() < 0.7:
                    await asyncio.sleep(rng.uniform(0, 0.004))
                engine.cancel(gone)
                images = _images(2, seed=round_)
                out = await engine.infer(ticket(plan, 1), images)
                conf, pred = _all_confidences(images)
                exits = decide_exits(conf, plan.thresholds)
                assert out.exit.tolist() == exits.tolist()
                assert out.class_id.tolist() == pred[np.arange(2), exits].tolist()
            for _ in range(100):  # the last request's dropped rows, met by the worker
                if not engine.slots._used.any():
                    break
                await asyncio.sleep(0.01)
            assert not engine.slots._used.any() and engine.queued_images == 0
            assert engine.slots.timed == 0 and engine.slots.topped == 0
        finally:
            engine.stop()

    _run(main())


def test_a_batch_of_requests_is_answered_and_freed_in_one_go() -> None:
    # Requests of 1, 3 and 2 images, one with a deadline and one with top-k, complete in one
    # batch: their slots are gathered and freed with one index (not one call per request), and
    # what each request's slots held comes back to it alone.
    slots = Slots(16, K)
    plan = _plan([0.5] * 3)
    tickets = [ticket(plan), ticket(plan, top_k=2, deadline=1.0), ticket(plan)]
    jobs = []
    for job_id, (t, n) in enumerate(zip(tickets, (1, 3, 2), strict=True)):
        start = slots.allocate(job_id, t, n)
        jobs.append(Job(t, start, n, None, None, remaining=n))  # type: ignore[arg-type]
    assert spans(jobs).tolist() == [0, 1, 2, 3, 4, 5]
    assert spans(jobs[1:2]).tolist() == [1, 2, 3] and spans(jobs[::-1]).tolist() == [
        4,
        5,
        1,
        2,
        3,
        0,
    ]
    assert (slots.timed, slots.topped) == (3, 3)
    slots.passed(np.arange(6), 0, np.arange(6), np.linspace(0.5, 1.0, 6))
    outcomes, finite = slots.outcomes(jobs, time.monotonic())
    assert finite and [o.class_id.tolist() for o in outcomes] == [[0], [1, 2, 3], [4, 5]]
    slots.trace[5, 0] = np.nan
    assert not slots.outcomes(jobs, time.monotonic())[1]
    slots.free(jobs[:2])
    assert (slots.timed, slots.topped) == (0, 0)
    assert slots.live.tolist()[:6] == [False] * 4 + [True] * 2
    assert slots.allocate(3, ticket(plan), 10) == 6  # the ring goes on past the last request
    assert slots.allocate(4, ticket(plan), 4) == 0  # then the four freed slots, together again


def test_a_full_queue_answers_degradable_rows_past_exit_1_to_make_room() -> None:
    # A queue bound of 4. Request a (2 images, degradable, never confident) runs stage 1 while
    # b (2 images) waits for it, so a's rows go on to wait for stage 2: the queue is full. A
    # degradable request then gets its room from a's rows: each is answered from exit 1, the
    # exit it passed (reason overload, its top-k from there), the one waiting longest first.
    # A request that does not allow degradation is refused, and rows of a request that does
    # not allow it are never cut.
    metrics = Metrics(CollectorRegistry())
    metrics.describe_model("m", "fake", "cpu", "fake-cpu", K)
    never = _plan([math.inf, math.inf, math.inf])
    runner = FakeRunner()

    def degradable(plan: ExitPlan, top_k: int = 0) -> Ticket:
        return dataclasses.replace(ticket(plan, top_k), degrade=True)

    async def main() -> None:
        engine = Engine(
            runner, exit_mflops=[1, 2, 3, 4], max_batch_size=2, max_queue_images=4,
            metrics=metrics,
        )  # fmt: skip
        a_images, b_images = _images(2, seed=1), _images(2, seed=2)
        a = engine.submit(degradable(never, top_k=2), a_images)
        b = engine.submit(ticket(never), b_images)  # does not allow degradation
        stage, parts = engine._next()  # the worker's first batch, run here: a at stage 1
        assert stage == 0 and [p.job for p in parts] == [a]
        engine._run(stage, parts)
        assert engine.queue_rows() == [2, 2, 0, 0]
        with pytest.raises(QueueFullError, match="4 of 4"):
            engine.submit(ticket(never), _images(1))
        engine.check_room(1, degrade=True)  # what the route asks before reading a body
        c = engine.submit(degradable(never), _images(1, seed=3))
        assert engine.queue_rows() == [3, 1, 0, 0] and not a.future.done()
        d = engine.submit(degradable(never), _images(1, seed=4))
        assert engine.queue_rows() == [4, 0, 0, 0]
        out = await a.future
        assert out.exit.tolist() == [0, 0] and out.reasons() == ["overload"] * 2
        conf, pred = _all_confidences(a_images)
        assert out.class_id.tolist() == pred[:, 0].tolist()
        assert out.top_probs[:, 0].tolist() == pytest.approx(conf[:, 0].tolist())
        # Stage 1 is full of rows that passed no exit: nothing left to cut.
        with pytest.raises(QueueFullError):
            engine.submit(degradable(never), _images(1))
        with pytest.raises(QueueFullError):
            engine.check_room(1, degrade=True)
        engine.start()
        try:
            for job in (b, c, d):
                assert (await job.future).reasons() == ["cap"] * job.n
        finally:
            engine.stop()
        assert not engine.slots._used.any()

    _run(main())
    get = metrics.registry.get_sample_value
    assert get("exitwise_stops_total", {"reason": "overload"}) == 2
    assert get("exitwise_exits_total", {"exit": "1"}) == 2


def test_a_cut_row_answers_from_the_deepest_exit_it_passed_and_others_rows_stay() -> None:
    # a (degradable) and b (not) both pass exits 1 and 2 and wait for stage 3 in a full queue.
    # A degradable request needing one image's room cuts a: answered from exit 2, its class
    # and top-k from there; b's row stays, whatever room is asked.
    never = _plan([math.inf, math.inf, math.inf])

    async def main() -> None:
        engine = Engine(
            FakeRunner(), exit_mflops=[1, 2, 3, 4], max_batch_size=4, max_queue_images=4
        )
        xa, xb = _images(1, seed=1), _images(1, seed=2)
        a = engine.submit(dataclasses.replace(ticket(never, 2), degrade=True), xa)
        b = engine.submit(ticket(never, 2), xb)
        for stage in range(2):
            parts = engine._take(stage, time.monotonic(), math.inf)
            engine._incoming = 1  # more on their way: the survivors queue, not run on
            engine._run(stage, parts)
        engine._incoming = 0
        assert engine.queue_rows() == [0, 0, 2, 0]
        engine.submit(dataclasses.replace(ticket(never), degrade=True), _images(2, seed=3))
        engine.submit(dataclasses.replace(ticket(never), degrade=True), _images(1, seed=4))
        assert engine.queue_rows() == [3, 0, 1, 0]
        out = await a.future
        conf, pred = _all_confidences(xa)
        assert out.reasons() == ["overload"] and out.exit.tolist() == [1]
        assert out.class_id.tolist() == [pred[0, 1]] and out.top_ids[0, 0] == pred[0, 1]
        assert out.top_probs[0, 0] == pytest.approx(conf[0, 1])
        with pytest.raises(QueueFullError):  # b's row is all that waits past exit 1
            engine.submit(dataclasses.replace(ticket(never), degrade=True), _images(1))
        assert not b.future.done()
        engine.start()
        try:
            assert (await b.future).reasons() == ["cap"]
        finally:
            engine.stop()

    _run(main())


def test_no_row_is_cut_for_a_request_refused_for_want_of_slots() -> None:
    # Requests whose clients went away hold their slots until the worker meets their rows.
    # With every slot held, a degradable request finding the queue full is refused before
    # anything is cut: the cut would have bought nothing.
    never = _plan([math.inf, math.inf, math.inf])

    async def main() -> None:
        engine = Engine(
            FakeRunner(), exit_mflops=[1, 2, 3, 4], max_batch_size=2, max_queue_images=4
        )
        assert engine.slots.capacity == 16
        a = engine.submit(dataclasses.replace(ticket(never), degrade=True), _images(2, seed=1))
        for _ in range(6):  # 12 slots held by requests that went away
            engine.cancel(engine.submit(ticket(never), _images(2)), RuntimeError("gone"))
        b = engine.submit(ticket(never), _images(2, seed=2))
        stage, parts = engine._next()
        engine._run(stage, parts)
        assert engine.queue_rows() == [2, 2, 0, 0] and engine.slots._used.all()
        with pytest.raises(QueueFullError, match="holding too many images"):
            engine.submit(dataclasses.replace(ticket(never), degrade=True), _images(1, seed=3))
        assert engine.queue_rows() == [2, 2, 0, 0]
        engine.start()
        try:
            assert (await a.future).reasons() == ["cap", "cap"]
            await b.future
        finally:
            engine.stop()

    _run(main())


def test_a_request_running_alone_gets_its_top_k_once_not_at_every_stage(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Rows that wait in a queue may be answered there from the exit they passed (a deadline,
    # a full queue), so their top-k is taken at every stage; rows that run on at once, alone in
    # the engine, cannot be, and take theirs where they leave only.
    import serving.engine as engine_module

    calls: list[int] = []
    real = engine_module.top_k_of

    def counting(logits: torch.Tensor, wanted: np.ndarray, k: int) -> Any:
        calls.append(int(wanted.sum()))
        return real(logits, wanted, k)

    monkeypatch.setattr(engine_module, "top_k_of", counting)
    never = _plan([math.inf, math.inf, math.inf])

    async def main() -> Outcome:
        engine = Engine(FakeRunner(), exit_mflops=[1, 2, 3, 4])
        engine.start()
        try:
            return await engine.infer(
                dataclasses.replace(ticket(never, 2), degrade=True), _images(3)
            )
        finally:
            engine.stop()

    out = _run(main())
    assert out.exit.tolist() == [K - 1] * 3 and out.top_ids.shape == (3, 2)
    assert calls == [3]
