"""Background tasks stop even when a cancellation is lost, as Python 3.11's wait_for can lose one."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis

from streams.agent import AgentOptions, AgentRunner, AgentSpec
from streams.consumer import Entry, StreamConsumer
from tests.streams.test_agent import DEAD, GROUP, STREAM, add_entries, pending
from weir.tasks import cancel_all_and_wait, cancel_and_wait, shielded


async def test_lost_cancellation_is_repeated():
    lost = 0

    async def keeps_going() -> None:
        nonlocal lost
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                if lost:
                    raise
                lost += 1  # the first cancellation is lost, as asyncio.wait_for on Python 3.11 can lose it

    task = asyncio.create_task(keeps_going())
    await asyncio.sleep(0)

    async with asyncio.timeout(5):
        await cancel_and_wait(task, recancel_after_s=0.05)

    assert task.cancelled()
    assert lost == 1


async def test_ended_task_exception_is_retrieved():
    async def fails() -> None:
        raise ValueError("boom")

    failed = asyncio.create_task(fails())
    await asyncio.wait([failed])
    sleeping = asyncio.create_task(asyncio.sleep(10))

    await cancel_all_and_wait([failed, sleeping])

    assert isinstance(failed.exception(), ValueError)
    assert sleeping.cancelled()


async def test_redis_ping_loop_always_stops(redis_url):
    # With socket_timeout set, redis-py 5.2 sends each command through asyncio.wait_for, so a
    # cancellation that lands as a send completes is lost on Python 3.11 and the loop runs on.
    client = Redis.from_url(redis_url, socket_timeout=30)
    rng = random.Random(7)
    commands = 0

    async def ping_forever() -> None:
        nonlocal commands
        while True:
            await client.ping()
            commands += 1

    try:
        for _ in range(100):
            task = asyncio.create_task(ping_forever())
            await asyncio.sleep(rng.random() * 0.003)
            async with asyncio.timeout(5):
                await cancel_and_wait(task)
            assert task.done()
    finally:
        await client.aclose()
    assert commands > 100


class LosesOneCancellation(StreamConsumer):
    """A consumer whose claim renewal loses the first cancellation that reaches it."""

    lost = 0

    async def touch(self, entry_ids: list[str]) -> None:
        await super().touch(entry_ids)
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            if self.lost:
                raise
            self.lost += 1


async def test_renewal_losing_cancellation_still_acks(redis: Redis):
    ids = await add_entries(redis, 2)
    consumer = LosesOneCancellation(redis, STREAM, GROUP, "c1", DEAD)
    await consumer.ensure_group()
    seen: list[str] = []

    async def handler(entries: list[Entry]) -> None:
        await asyncio.sleep(0.1)  # long enough for the renewal to touch the entries once
        seen.extend(e.entry_id for e in entries)

    options = AgentOptions(batch_size=2, block_ms=20, reclaim_idle_ms=30)
    runner = AgentRunner(AgentSpec("t", handler), consumer, options)
    stopping = asyncio.Event()
    task = asyncio.create_task(runner.run(stopping))
    try:
        async with asyncio.timeout(10):
            while len(seen) < 2 or await pending(redis) != 0:
                await asyncio.sleep(0.02)
    finally:
        stopping.set()
        async with asyncio.timeout(10):
            await task

    assert seen == ids
    assert consumer.lost == 1
    assert await pending(redis) == 0


async def cancel_during_call(call: Callable[[asyncio.Event], Awaitable[object]], description: str,
                             *args: object) -> asyncio.Task:
    """Cancel a caller of `shielded(call(release), description, *args)`, then set `release` and let the call end."""
    release = asyncio.Event()
    caller = asyncio.create_task(shielded(call(release), description, *args))
    await asyncio.sleep(0)
    await cancel_and_wait(caller)
    release.set()
    for _ in range(3):
        await asyncio.sleep(0)
    return caller


async def test_shielded_late_failure_logged(caplog):
    async def fails_later(release: asyncio.Event) -> None:
        await release.wait()
        raise ConnectionError("Redis went away")

    caller = await cancel_during_call(fails_later, "acknowledge first_entry_id=%s", "1-0")

    assert caller.cancelled()
    assert ("acknowledge first_entry_id=1-0 failed after its caller was cancelled "
            "error=ConnectionError('Redis went away')") in caplog.text


async def test_shielded_call_outlives_caller():
    finished: list[str] = []

    async def slow(release: asyncio.Event) -> str:
        await release.wait()
        finished.append("done")
        return "done"

    caller = await cancel_during_call(slow, "slow call")

    assert caller.cancelled()
    assert finished == ["done"]
    assert await shielded(asyncio.sleep(0, result=7), "sleep") == 7
