"""Deadlines and load: the latency model, the deadline stop rule in the engine, the degradation
state machine and its ladder of operating points."""

from __future__ import annotations

import asyncio
import math
import time

import numpy as np
import pytest
import torch

from exitwise.bundle import Calibration, OperatingPoint, SplitResult
from serving.budgets import BudgetResolver
from serving.degrade import Degrader
from serving.engine import Engine
from serving.latency import LatencyModel, buckets_up_to
from tests.unit.test_serving_engine import FakeRunner, K, _images, _plan


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
    m.observe(0, 8, 0.014)  # slower now: the moving mean follows, a tenth of the way
    assert m.estimate(0, 8) == pytest.approx(0.005)
    assert m.floor(0, 8) == pytest.approx(0.004) and m.floor(1, 8) == 0.0  # warm-up's figure
    assert m.describe()[0]["ms_per_batch"] == {"1": 1.0, "8": 5.0}


class SlowRunner(FakeRunner):
    """Each stage takes ``per_stage`` seconds."""

    def __init__(self, per_stage: float) -> None:
        super().__init__(delay=per_stage)


def _serve(engine: Engine, images: torch.Tensor, thresholds: list[float], deadline_ms: float):  # type: ignore[no-untyped-def]
    async def main():  # type: ignore[no-untyped-def]
        engine.start()
        try:
            start = time.monotonic()
            out = await engine.infer(
                images, _plan(thresholds), 0, start + 30, answer_by=start + deadline_ms / 1000
            )
            return out, time.monotonic() - start
        finally:
            engine.stop()

    return asyncio.run(main())


def test_an_image_stops_where_the_next_stage_would_miss_its_deadline() -> None:
    # Stages of 0.2 s and a deadline of 0.5 s: two stages fit (0.4 s), a third would end at
    # 0.6 s. The margins (0.1 s either way) absorb a busy machine's scheduling delays.
    runner = SlowRunner(per_stage=0.2)
    engine = Engine(runner, exit_mflops=[1, 2, 3, 4], max_batch_size=8)
    for k in range(K):
        for n in engine.latency.buckets:
            engine.latency.set(k, n, 0.2)
    never = [math.inf] * (K - 1)  # nobody is confident: only the deadline can stop them early
    out, _ = _serve(engine, _images(4), never, deadline_ms=500)
    assert [r.exit_index for r in out.results] == [1] * 4
    assert {r.reason for r in out.results} == {"deadline"}
    assert [n for _, n in runner.calls] == [4, 4]  # stage 3 never ran


def test_reasons_confident_and_cap_and_no_deadline_changes_nothing() -> None:
    images = _images(16, seed=3)
    a = Engine(FakeRunner(), exit_mflops=[1, 2, 3, 4])
    b = Engine(FakeRunner(), exit_mflops=[1, 2, 3, 4])
    thresholds = [0.9, 0.85, 0.8]
    with_deadline, _ = _serve(a, images, thresholds, deadline_ms=10_000)

    async def plain():  # type: ignore[no-untyped-def]
        b.start()
        try:
            return await b.infer(images, _plan(thresholds), 0, time.monotonic() + 30)
        finally:
            b.stop()

    without = asyncio.run(plain())
    assert with_deadline.results == without.results  # a generous deadline changes no answer
    reasons = {r.reason for r in without.results}
    assert reasons <= {"confident", "cap"} and "confident" in reasons
    for r in without.results:
        assert (r.reason == "cap") == (r.exit_index == K - 1)  # the last exit has no threshold


def test_rows_waiting_past_their_deadline_are_answered_from_their_last_exit() -> None:
    # A slow first stage for a crowd, then a short deadline: the rows waiting for stage 2 are
    # answered from exit 1 rather than run late.
    runner = SlowRunner(per_stage=0.03)
    engine = Engine(runner, exit_mflops=[1, 2, 3, 4], max_batch_size=4, max_stage_wait_s=10)
    for k in range(K):
        for n in engine.latency.buckets:
            engine.latency.set(k, n, 0.03)

    async def main():  # type: ignore[no-untyped-def]
        engine.start()
        try:
            start = time.monotonic()
            never = _plan([math.inf] * (K - 1))
            late = [
                engine.submit(_images(4, s), never, 0, start + 30, answer_by=start + 0.05)
                for s in range(3)
            ]
            return [await j.future for j in late]
        finally:
            engine.stop()

    outcomes = asyncio.run(main())
    results = [r for o in outcomes for r in o.results]
    assert all(r.reason == "deadline" for r in results)
    assert min(r.exit_index for r in results) == 0  # some never got past exit 1


def test_degrader_steps_down_under_a_long_queue_and_back_with_hysteresis() -> None:
    d = Degrader(max_level=3, high_s=0.05, low_s=0.0125, hold_s=0.15)
    t = 0.0
    levels = []
    for wait in [0.0, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]:
        levels.append(d.update(wait, t))
        t += 0.1
    assert levels == [0, 1, 1, 2, 2, 3, 3, 3, 3]  # one step per hold time, up to the cheapest
    # In the band between the thresholds nothing moves (no flapping on a middling queue).
    for _ in range(10):
        assert d.update(0.03, t) == 3
        t += 0.1
    down = []
    for _ in range(8):
        down.append(d.update(0.001, t))
        t += 0.1
    assert down == [2, 2, 1, 1, 0, 0, 0, 0]
    with pytest.raises(ValueError):
        Degrader(max_level=1, high_s=0.01, low_s=0.02, hold_s=0)


def _point(name: str, mflops: float) -> OperatingPoint:
    result = SplitResult(accuracy=90, mflops=mflops, exit_fractions=[0.5, 0.3, 0.1, 0.1], images=10)
    return OperatingPoint(name=name, q=1.0, thresholds=[0.9, 0.8, 0.7, None], heldout=result)


def test_the_degradation_ladder() -> None:
    cal = Calibration(
        weights_sha256="0" * 64,
        heldout_sha256="0" * 64,
        created="2026-01-01",
        exit_mflops=[1, 2, 3, 4],
        operating_points=[_point("cheap", 1.5), _point("mid", 2.2), _point("dear", 3.1)],
        default_operating_point="mid",
    )
    r = BudgetResolver([1, 2, 3, 4], cal)
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
