"""A request's life in the engine where it meets another's: cancels that come after the answer,
requests that go away while their rows run a stage, requests split between batches.

The worker's loop runs inline here (``_next``/``_run`` on the test's thread), so each
interleaving is exact rather than left to timing."""

from __future__ import annotations

import asyncio
import math
import time

import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry

from exitwise.models import State
from exitwise.preprocess import InvalidImageError, Preprocessing, normalize
from serving.engine import Encoded, Engine, EngineFailureError
from serving.errors import ClientGoneError, DeadlineExceededError
from serving.images import decode_pixels
from serving.jobs import REASONS, Job, Rows
from serving.metrics import Metrics
from tests.serving_helpers import png
from tests.unit.test_serving_engine import FakeRunner, K, _all_confidences, _images, _plan, ticket

EVERY_IMAGE_AT_EXIT_1 = _plan([0.0, 0.0, 0.0])
EVERY_IMAGE_TO_THE_END = _plan([math.inf] * 3)


def work(engine: Engine) -> None:
    """The worker's loop, inline, until nothing is left to run."""
    engine._stopping = True  # _next returns None when idle instead of waiting
    try:
        while (step := engine._next()) is not None:
            engine._run(*step)
    finally:
        engine._stopping = False


def _engine(**kwargs: object) -> Engine:
    return Engine(FakeRunner(), exit_mflops=[1, 2, 3, 4], **kwargs)  # type: ignore[arg-type]


def _answered_where_another_got_the_slots(engine: Engine) -> tuple[torch.Tensor, Job]:
    """Requests go round the slot ring until the next one is given the first request's slots;
    that one's images and its job."""
    for seed in (2, 3):
        engine.submit(ticket(EVERY_IMAGE_AT_EXIT_1), _images(4, seed))
        work(engine)
    images = _images(4, 9)
    job = engine.submit(ticket(EVERY_IMAGE_AT_EXIT_1), images)
    assert job.start == 0  # the slots of the first request
    return images, job


@pytest.mark.parametrize("how", ["timeout", "client_gone"])
def test_a_cancel_after_the_answer_leaves_the_slots_next_owner_alone(how: str) -> None:
    # The worker answers A and frees its slots; before the answer reaches A's handler, A is
    # cancelled (its handler's timeout, or the client-gone watch that fired just before). By
    # then B holds A's slots: the cancel must not drop B's rows (B was answered exit -1,
    # class 0 with no stage run).
    async def main() -> None:
        engine = _engine(max_batch_size=1, max_queue_images=4)
        left = asyncio.Event()

        async def gone() -> None:
            await left.wait()

        task = asyncio.ensure_future(
            engine.infer(ticket(EVERY_IMAGE_AT_EXIT_1), _images(4, 1), gone=gone)
        )
        for _ in range(3):
            await asyncio.sleep(0)  # A submitted, its watch waiting
        if how == "client_gone":
            left.set()
            await asyncio.sleep(0)  # the watch returned; the cancel it calls is scheduled
        work(engine)  # A answered, its slots freed
        images, b = _answered_where_another_got_the_slots(engine)
        if how == "timeout":
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        else:  # the answer reached first stands (the client is gone all the same)
            assert (await task).exit.tolist() == [0, 0, 0, 0]
        work(engine)
        out = await asyncio.wait_for(b.future, 2)
        _, pred = _all_confidences(images)
        assert out.exit.tolist() == [0, 0, 0, 0]
        assert out.class_id.tolist() == pred[:, 0].tolist()

    asyncio.run(main())


def test_rows_of_a_request_gone_while_their_stage_ran_are_neither_answered_nor_run_on() -> None:
    # The client leaves while its rows run stage 1. They come back to nobody: not counted in
    # the exits and stop reasons (what /metrics says was served), and not run through stages
    # 2-4 when nothing else waits (the straight-on path).
    metrics = Metrics(CollectorRegistry())
    metrics.describe_model("m", "fake", "cpu", "fake-cpu", K)
    runner = FakeRunner()

    async def main() -> None:
        engine = Engine(runner, exit_mflops=[1, 2, 3, 4], metrics=metrics)
        job = engine.submit(ticket(EVERY_IMAGE_TO_THE_END), _images(2))
        step = engine._next()  # the worker takes the batch
        assert step is not None
        engine.cancel(job, ClientGoneError("the client went away"))
        engine._run(*step)  # the batch comes back
        work(engine)
        assert isinstance(job.future.exception(), ClientGoneError)
        assert engine.queued_images == 0 and not engine.slots._used.any()
        # The next request is served as usual.
        other = engine.submit(ticket(EVERY_IMAGE_TO_THE_END), _images(1))
        work(engine)
        assert (await other.future).exit.tolist() == [K - 1]

    asyncio.run(main())
    answered = {
        k + 1: metrics.registry.get_sample_value("exitwise_exits_total", {"exit": str(k + 1)})
        for k in range(K)
    }
    assert answered == {1: 0.0, 2: 0.0, 3: 0.0, 4: 1.0}
    assert runner.calls == [(0, 2), (0, 1), (1, 1), (2, 1), (3, 1)]


def test_a_gone_row_among_live_ones_leaves_the_batch_without_an_answer() -> None:
    # Two requests share a stage-1 batch; one goes away while it runs. The other's rows go on
    # and are answered from the last exit; the gone one's are dropped there and then.
    async def main() -> None:
        runner = FakeRunner()
        engine = Engine(runner, exit_mflops=[1, 2, 3, 4])
        stays = engine.submit(ticket(EVERY_IMAGE_TO_THE_END), _images(2, 1))
        leaves = engine.submit(ticket(EVERY_IMAGE_TO_THE_END), _images(3, 2))
        step = engine._next()
        assert step is not None
        engine.cancel(leaves, ClientGoneError("the client went away"))
        engine._run(*step)
        work(engine)
        assert (await stays.future).exit.tolist() == [K - 1, K - 1]
        assert runner.calls == [(0, 5), (1, 2), (2, 2), (3, 2)]
        assert not engine.slots._used.any()

    asyncio.run(main())


SPEC = Preprocessing(input_size=2, channels=1, crop=2, mean=(0.5,), std=(0.25,))


def _decoding_engine() -> Engine:
    return _engine(
        max_batch_size=4,
        decode=lambda blobs, labels: decode_pixels(blobs, SPEC, 10_000, labels),
        normalize=lambda pixels: normalize(pixels, SPEC),
    )


@pytest.mark.parametrize(
    ("labels", "named"), [(["a.png", "b.png", "c.png", "d.png"], "'d.png'"), (None, "'4'")]
)
def test_a_bad_image_of_a_request_split_between_batches_is_named_by_its_place_in_it(
    labels: list[str] | None, named: str
) -> None:
    # Another request takes half the batch, so this one's four images are split between two
    # batches; its fourth cannot be decoded. The error names the fourth image, not the second
    # of its part.
    good = png(np.random.default_rng(0).integers(0, 256, (1, 2, 2), dtype=np.uint8))

    async def main() -> None:
        engine = _decoding_engine()
        other = engine.submit(ticket(EVERY_IMAGE_AT_EXIT_1), Encoded([good, good]))
        job = engine.submit(
            ticket(EVERY_IMAGE_AT_EXIT_1), Encoded([good, good, good, b"not an image"], labels)
        )
        work(engine)
        assert len((await other.future).exit) == 2
        with pytest.raises(InvalidImageError) as err:
            await job.future
        assert f"image {named}:" in str(err.value)

    asyncio.run(main())


@pytest.mark.parametrize("where", ["normalise", "metrics", "join", "answers"])
def test_a_fault_outside_the_network_call_fails_the_batch_and_frees_its_slots(where: str) -> None:
    # The worker's catch-all kept it serving, but the rows it held were neither answered nor
    # failed: their requests waited for their timeout (a 504), and their slots were never
    # freed, so the engine's room shrank with every such fault.
    good = png(np.random.default_rng(0).integers(0, 256, (1, 2, 2), dtype=np.uint8))
    broken = {"on": True}

    def faulty_normalize(pixels: torch.Tensor) -> torch.Tensor:
        if broken["on"]:
            raise RuntimeError("a bug in normalising")
        return normalize(pixels, SPEC)

    metrics = Metrics(CollectorRegistry())
    engine = _engine(
        max_batch_size=4,
        max_wait_s=0.5,  # the join case's two requests wait for each other: one batch
        metrics=metrics,
        decode=lambda blobs, labels: decode_pixels(blobs, SPEC, 10_000, labels),
        normalize=faulty_normalize if where == "normalise" else lambda p: normalize(p, SPEC),
    )
    # A bug in the bookkeeping after the stage's own work, or while counting the answers.
    method = {"metrics": "record_stage", "answers": "answered"}.get(where)
    if method is not None:
        real = getattr(metrics, method)

        def faulty(*args: object) -> None:
            if broken["on"]:
                raise RuntimeError(f"a bug in {method}")
            real(*args)

        setattr(metrics, method, faulty)

    async def main() -> None:
        engine.start()  # the real worker: its catch-all is what kept serving before
        try:
            if where == "join":  # two shapes in one batch: admission never lets that happen
                with engine.expecting():  # held back until both are queued: one batch
                    jobs = [
                        engine.submit(ticket(EVERY_IMAGE_AT_EXIT_1), _images(2, 1)),
                        engine.submit(ticket(EVERY_IMAGE_AT_EXIT_1), torch.zeros(2, 1, 2, 2)),
                    ]
            else:
                jobs = [engine.submit(ticket(EVERY_IMAGE_AT_EXIT_1), Encoded([good, good]))]
            for job in jobs:
                with pytest.raises(EngineFailureError):
                    await asyncio.wait_for(job.future, 5)
            assert not engine._jobs and not engine.slots._used.any(), "rows were left in hand"
            broken["on"] = False
            again = engine.submit(ticket(EVERY_IMAGE_AT_EXIT_1), Encoded([good]))
            assert (await asyncio.wait_for(again.future, 5)).exit.tolist() == [0]
        finally:
            engine.stop()

    asyncio.run(main())


class _SlowAfterStage1(FakeRunner):
    """Stage 1 at once, every later stage ``later`` seconds."""

    def __init__(self, later: float) -> None:
        super().__init__()
        self.later = later

    def run_stage(self, index: int, state: State) -> tuple[State, torch.Tensor]:
        if index > 0:
            time.sleep(self.later)
        return super().run_stage(index, state)


@pytest.mark.parametrize("how", ["timeout", "client gone"])
def test_a_request_that_ends_early_counts_none_of_its_images_as_served(how: str) -> None:
    # Of two images, one leaves at exit 1 and one is still in stage 2 when the request times
    # out (504) or its client goes away (499). The one answered was counted as served
    # (exits, stops, MFLOPs) although the client got no answer for it.
    metrics = Metrics(CollectorRegistry())
    x = torch.zeros((2, 1, 1, K))
    x[0] = 4.0  # confident at exit 1; the other never

    async def main() -> None:
        engine = Engine(_SlowAfterStage1(later=0.3), exit_mflops=[1, 2, 3, 4], metrics=metrics)
        engine.start()
        try:
            if how == "timeout":
                with pytest.raises(DeadlineExceededError):
                    await engine.infer(ticket(_plan([0.9] * 3), expires=0.1), x)
            else:

                async def gone() -> None:
                    await asyncio.sleep(0.1)

                with pytest.raises(ClientGoneError):
                    await engine.infer(ticket(_plan([0.9] * 3)), x, gone=gone)
            await asyncio.sleep(0.4)  # the row in stage 2 comes back and is dropped
        finally:
            engine.stop()

    asyncio.run(main())
    get = metrics.registry.get_sample_value
    exits = sum(get("exitwise_exits_total", {"exit": str(k)}) or 0 for k in range(1, K + 1))
    stops = sum(get("exitwise_stops_total", {"reason": r}) or 0 for r in REASONS)
    assert (exits, stops, get("exitwise_mflops_per_image_count")) == (0, 0, 0)


@pytest.mark.parametrize("how", ["timeout", "client gone"])
def test_an_answer_reached_before_the_request_ends_is_the_answer(how: str) -> None:
    # The worker answers the request (counted as served in /metrics) and hands the answer to
    # the loop; before the loop runs that hand-over, the request's timeout fires (or its
    # client-gone watch). The timeout's 504 won: the client got an error for images /metrics
    # counted as served.
    metrics = Metrics(CollectorRegistry())
    metrics.describe_model("m", "fake", "cpu", "fake-cpu", K)

    async def main() -> None:
        engine = _engine(metrics=metrics)
        left = asyncio.Event()

        async def gone() -> None:
            await left.wait()

        expires = 0.05 if how == "timeout" else 30.0
        task = asyncio.ensure_future(
            engine.infer(ticket(EVERY_IMAGE_AT_EXIT_1, expires=expires), _images(2), gone=gone)
        )
        await asyncio.sleep(0)  # submitted, its timer and watch set
        # The end comes first in the loop's next pass: the timer is due (the loop moves it to
        # its ready callbacks at the start of the pass), or the watch returns (its callback is
        # scheduled then). The worker answers in that pass, as the thread does, and the
        # hand-over lands behind the end.
        if how == "timeout":
            time.sleep(0.06)
        else:
            left.set()
        asyncio.get_running_loop().call_soon(work, engine)
        out = await asyncio.wait_for(task, 2)
        assert out.exit.tolist() == [0, 0]

    asyncio.run(main())
    get = metrics.registry.get_sample_value
    assert get("exitwise_exits_total", {"exit": "1"}) == 2


def test_a_fault_in_choosing_the_next_batch_leaves_the_worker_serving() -> None:
    # The worker thread ended on an exception outside a batch (the scheduler, taking rows):
    # the server stayed up and ready, and every request after waited for its timeout.
    engine = _engine()
    take, faults = engine._take, [1]

    def faulty_take(*args: object) -> list[Rows]:
        if faults:
            faults.pop()
            raise RuntimeError("a bug in taking rows")
        return take(*args)  # type: ignore[arg-type]

    engine._take = faulty_take  # type: ignore[method-assign]

    async def main() -> None:
        engine.start()
        try:
            job = engine.submit(ticket(EVERY_IMAGE_AT_EXIT_1), _images(2))
            assert (await asyncio.wait_for(job.future, 5)).exit.tolist() == [0, 0]
        finally:
            engine.stop()

    asyncio.run(main())
    assert not faults
