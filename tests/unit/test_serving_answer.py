"""The future a request's handler awaits (serving.jobs.Answer): the engine's delivery wakes the
handler in the same callback, and everything else behaves as a plain asyncio future."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from serving.jobs import Answer

Make = Callable[[asyncio.AbstractEventLoop], "asyncio.Future[Any]"]


def _complete(fut: asyncio.Future[Any], value: Any) -> None:
    if isinstance(fut, Answer):
        fut.deliver(value)
    else:
        fut.set_result(value)


def _order(make: Make) -> list[Any]:
    """What runs first once the future completes in a loop callback: the awaiting task, or a
    callback that was already waiting in the loop's ready queue (as the reads of new requests
    do under load)."""

    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        fut, order = make(loop), []

        async def handler() -> None:
            order.append(("resumed", await fut))

        task = loop.create_task(handler())
        await asyncio.sleep(0)  # the handler now awaits the future

        def engine_callback() -> None:
            loop.call_soon(order.append, "queued before")
            _complete(fut, 7)

        loop.call_soon(engine_callback)
        await task
        return order

    return asyncio.run(main())


def test_delivery_resumes_the_handler_before_callbacks_already_queued() -> None:
    assert _order(lambda loop: Answer(loop=loop)) == [("resumed", 7), "queued before"]
    # A plain future's waiter resumes only after them: one more pass of the loop.
    assert _order(lambda loop: loop.create_future()) == ["queued before", ("resumed", 7)]


def test_a_delivered_exception_is_raised_in_the_handler() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        fut = Answer(loop=loop)
        loop.call_soon(fut.deliver, ValueError("no image"))
        with pytest.raises(ValueError, match="no image"):
            await fut

    asyncio.run(main())


def test_delivery_inside_a_task_schedules_the_wake_up() -> None:
    # A task cannot start while another runs: delivered from inside one, the waiter is woken
    # as a plain future's would be, not in place.
    async def main() -> None:
        loop = asyncio.get_running_loop()
        fut = Answer(loop=loop)
        waiter = loop.create_task(asyncio.wait_for(fut, 5))
        await asyncio.sleep(0)
        fut.deliver(3)
        assert not waiter.done()
        assert await waiter == 3

    asyncio.run(main())


def test_cancelling_the_handler_cancels_the_answer_it_awaits() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        fut = Answer(loop=loop)
        task = loop.create_task(_await(fut))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert fut.cancelled()

    asyncio.run(main())


async def _await(fut: asyncio.Future[Any]) -> Any:
    return await fut


def test_set_exception_and_gather_behave_as_for_a_plain_future() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        failed, fine = Answer(loop=loop), Answer(loop=loop)
        loop.call_soon(failed.set_exception, TimeoutError("late"))
        loop.call_soon(fine.set_result, 5)
        got = await asyncio.gather(failed, fine, return_exceptions=True)
        assert isinstance(got[0], TimeoutError) and got[1] == 5
        # A callback added after completion is scheduled, as for any future.
        seen: list[Any] = []
        fine.add_done_callback(lambda f: seen.append(f.result()))
        await asyncio.sleep(0)
        assert seen == [5]

    asyncio.run(main())


def test_a_failing_callback_does_not_keep_the_others_from_running() -> None:
    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        errors: list[Any] = []
        loop.set_exception_handler(lambda _loop, context: errors.append(context["exception"]))
        fut, seen = Answer(loop=loop), []

        def bad(_: Any) -> None:
            raise RuntimeError("a broken callback")

        def removed(_: Any) -> None:
            seen.append("removed")

        fut.add_done_callback(bad)
        fut.add_done_callback(lambda f: seen.append(f.result()))
        fut.add_done_callback(removed)
        assert fut.remove_done_callback(removed) == 1
        loop.call_soon(fut.deliver, 9)
        await asyncio.sleep(0.01)
        assert [str(e) for e in errors] == ["a broken callback"]
        return seen

    assert asyncio.run(main()) == [9]
