"""Running a record's delivery inline, and handing it to a task only when it has to wait."""

from __future__ import annotations

import asyncio

import pytest
from faust.transport import consumer as faust_consumer

from pipeline.worker import draining
from pipeline.worker.draining import run_inline

# `Consumer._drain_messages` of faust-streaming 0.15.3, which `draining` copies and changes.
# Another digest means another Faust: read its method, carry its changes over, then update.
FAUST_DRAIN_MESSAGES = "44a2500309e83c63"


async def test_a_delivery_that_does_not_wait_completes_inline_without_a_task() -> None:
    done: list[str] = []

    async def deliver() -> None:
        done.append("delivered")

    tasks_before = len(asyncio.all_tasks())
    assert run_inline(deliver()) is None
    assert done == ["delivered"]
    assert len(asyncio.all_tasks()) == tasks_before


async def test_an_error_raised_without_waiting_is_raised_at_once() -> None:
    async def deliver() -> None:
        raise ValueError("bad record")

    with pytest.raises(ValueError, match="bad record"):
        run_inline(deliver())


async def test_a_delivery_that_waits_goes_on_in_a_task_with_what_it_awaited() -> None:
    room = asyncio.get_running_loop().create_future()
    steps: list[object] = []

    async def deliver() -> str:
        steps.append("started")
        steps.append(await room)  # the value the future is resolved with reaches it
        await asyncio.sleep(0)  # and it may wait again
        return "delivered"

    task = run_inline(deliver())
    assert task is not None
    assert steps == ["started"]
    assert not task.done()
    room.set_result("room")
    assert await asyncio.wait_for(task, timeout=5) == "delivered"
    assert steps == ["started", "room"]


async def test_cancelling_the_task_cancels_the_waiting_delivery() -> None:
    # What a rebalance does through `wait_first`: the blocked delivery must not go on later.
    never = asyncio.get_running_loop().create_future()
    cleaned: list[str] = []

    async def deliver() -> None:
        try:
            await never
        except asyncio.CancelledError:
            cleaned.append("cancelled")
            raise

    task = run_inline(deliver())
    assert task is not None
    await asyncio.sleep(0)  # the task has taken over the wait, as `wait_first` lets it
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned == ["cancelled"]
    assert never.cancelled()


async def test_a_task_cancelled_before_its_first_step_still_cancels_the_delivery() -> None:
    never = asyncio.get_running_loop().create_future()
    cleaned: list[str] = []

    async def deliver() -> None:
        try:
            await never
        finally:
            cleaned.append("cleaned up")

    task = run_inline(deliver())
    assert task is not None
    task.cancel()  # at once: the task has not run yet
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned == ["cleaned up"]


async def test_an_error_after_waiting_reaches_whoever_awaits_the_task() -> None:
    room = asyncio.get_running_loop().create_future()

    async def deliver() -> None:
        await room
        raise KeyError("late")

    task = run_inline(deliver())
    assert task is not None
    room.set_result(None)
    with pytest.raises(KeyError, match="late"):
        await task


def test_the_worker_s_transport_has_the_copied_loop_and_faust_keeps_its_own() -> None:
    from pipeline.worker import transport

    assert draining.stock_source_digest() == FAUST_DRAIN_MESSAGES  # the method it copies
    assert draining.compatible() is None
    assert transport.Consumer._drain_messages is draining.drain_messages
    assert faust_consumer.Consumer._drain_messages is not draining.drain_messages  # not patched
