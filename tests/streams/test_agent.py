"""Agents acknowledge only committed batches, retry transient failures in place and park poison."""

from __future__ import annotations

import asyncio
import subprocess

from redis.asyncio import Redis

from streams.agent import AgentOptions, AgentRunner, AgentSpec
from streams.consumer import Entry, StreamConsumer
from streams.dead_letter import list_dead_letters, requeue
from streams.event import decode_entry
from streams.trim import trim_stream
from tests.conftest import REPO, weir_command

STREAM, GROUP, DEAD = "test:events", "test:group", "test:events:dead"


class TransientError(Exception):
    pass


async def add_entries(redis: Redis, count: int, prefix: str = "e") -> list[str]:
    return [(await redis.xadd(STREAM, {b"v": b"1", b"events": f'[{{"n": "{prefix}{i}"}}]'.encode()})).decode()
            for i in range(count)]


async def make_consumer(redis: Redis, name: str = "c1") -> StreamConsumer:
    consumer = StreamConsumer(redis, STREAM, GROUP, name, DEAD)
    await consumer.ensure_group()
    return consumer


async def run_until(runner: AgentRunner, condition, timeout_s: float = 10.0) -> None:
    stopping = asyncio.Event()
    task = asyncio.create_task(runner.run(stopping))
    try:
        async with asyncio.timeout(timeout_s):
            while not await condition():
                await asyncio.sleep(0.02)
    finally:
        stopping.set()
        await asyncio.wait_for(task, 10)


async def pending(redis: Redis) -> int:
    return int((await redis.xpending(STREAM, GROUP))["pending"])


async def test_batch_is_acknowledged_after_handler_returns(redis):
    await add_entries(redis, 5)
    seen: list[str] = []

    async def handler(entries: list[Entry]) -> None:
        seen.extend(e.entry_id for e in entries)

    runner = AgentRunner(AgentSpec("t", handler), await make_consumer(redis), AgentOptions(batch_size=2, block_ms=50))
    await run_until(runner, lambda: _done(redis, seen, 5))

    assert len(seen) == 5
    assert await pending(redis) == 0


async def _done(redis, seen, count):
    return len(seen) >= count and await pending(redis) == 0


async def test_transient_failure_retries_in_place_without_dead_letter(redis):
    await add_entries(redis, 3)
    calls: list[int] = []

    async def handler(entries: list[Entry]) -> None:
        calls.append(len(entries))
        if len(calls) < 4:
            raise TransientError("database restarting")

    options = AgentOptions(batch_size=10, block_ms=50, retry_backoff_s=0.01, max_deliveries=2,
                           is_transient=lambda error: isinstance(error, TransientError))
    runner = AgentRunner(AgentSpec("t", handler), await make_consumer(redis), options)

    async def acknowledged():
        return len(calls) >= 4 and await pending(redis) == 0

    await run_until(runner, acknowledged)

    assert calls == [3, 3, 3, 3]
    assert await redis.xlen(DEAD) == 0


async def test_failed_batch_stays_pending_with_nothing_acknowledged(redis):
    await add_entries(redis, 4)
    attempts = []

    async def handler(entries: list[Entry]) -> None:
        attempts.append(len(entries))
        raise TransientError("down")

    options = AgentOptions(batch_size=10, block_ms=50, retry_backoff_s=0.01,
                           is_transient=lambda error: isinstance(error, TransientError))
    runner = AgentRunner(AgentSpec("t", handler), await make_consumer(redis), options)

    async def tried_twice():
        return len(attempts) >= 2

    await run_until(runner, tried_twice)

    assert await pending(redis) == 4
    assert await redis.xlen(DEAD) == 0


async def test_poison_entry_is_dead_lettered_alone(redis):
    ids = await add_entries(redis, 4)
    poison = ids[2]
    committed: list[str] = []

    async def handler(entries: list[Entry]) -> None:
        if any(e.entry_id == poison for e in entries):
            raise ValueError("value out of range for column")
        committed.extend(e.entry_id for e in entries)

    options = AgentOptions(batch_size=10, block_ms=50, retry_backoff_s=0.01, max_deliveries=3)
    runner = AgentRunner(AgentSpec("t", handler), await make_consumer(redis), options)

    async def parked():
        return await redis.xlen(DEAD) == 1 and await pending(redis) == 0

    await run_until(runner, parked)

    letters = await list_dead_letters(redis, DEAD)
    assert sorted(committed) == sorted(i for i in ids if i != poison)
    assert [(l.original_entry_id, l.stream, l.deliveries) for l in letters] == [(poison, STREAM, 4)]
    assert letters[0].error.startswith("gave up after 3 deliveries: ValueError: value out of range for column")


async def test_malformed_entry_is_dead_lettered_at_once(redis):
    good = [(await redis.xadd(STREAM, {b"v": b"1", b"events": b"[]"})).decode()]
    bad = (await redis.xadd(STREAM, {b"v": b"9", b"events": b"[]"})).decode()
    committed: list[str] = []

    async def handler(entries: list[Entry]) -> None:
        for entry in entries:
            decode_entry(entry.entry_id, entry.fields)
        committed.extend(e.entry_id for e in entries)

    runner = AgentRunner(AgentSpec("t", handler), await make_consumer(redis), AgentOptions(block_ms=50))

    async def settled():
        return await redis.xlen(DEAD) == 1 and await pending(redis) == 0 and committed

    await run_until(runner, settled)

    letters = await list_dead_letters(redis, DEAD)
    assert committed == good
    assert letters[0].original_entry_id == bad
    assert letters[0].error == f"malformed stream entry {bad}: unknown wire version b'9'"


async def test_dead_consumer_entries_are_reclaimed(redis):
    await add_entries(redis, 3)
    dead = await make_consumer(redis, "dead")
    await dead.read_new(10, 10)
    seen: list[str] = []

    async def handler(entries: list[Entry]) -> None:
        seen.extend(e.entry_id for e in entries)

    options = AgentOptions(block_ms=50, reclaim_idle_ms=100, reclaim_interval_s=0.05)
    runner = AgentRunner(AgentSpec("t", handler), await make_consumer(redis, "alive"), options)
    await asyncio.sleep(0.15)

    async def reclaimed():
        return len(seen) == 3 and await pending(redis) == 0

    await run_until(runner, reclaimed)


async def test_slow_batch_is_not_reclaimed(redis):
    # The batch takes five times RECLAIM_IDLE_MS; the claim renewal keeps the other consumer off it.
    ids = await add_entries(redis, 3)
    slow_seen: list[str] = []
    other_seen: list[str] = []

    async def slow_handler(entries: list[Entry]) -> None:
        await asyncio.sleep(0.5)
        slow_seen.extend(e.entry_id for e in entries)

    async def other_handler(entries: list[Entry]) -> None:
        other_seen.extend(e.entry_id for e in entries)

    options = AgentOptions(block_ms=20, reclaim_idle_ms=100, reclaim_interval_s=0.02)
    slow = AgentRunner(AgentSpec("t", slow_handler), await make_consumer(redis, "slow"), options)
    other = AgentRunner(AgentSpec("t", other_handler), await make_consumer(redis, "other"), options)
    stopping = asyncio.Event()
    slow_task = asyncio.create_task(slow.run(stopping))
    await asyncio.sleep(0.1)  # the slow consumer reads the three entries first
    other_task = asyncio.create_task(other.run(stopping))

    async with asyncio.timeout(10):
        while len(slow_seen) < 3 or await pending(redis) != 0:
            await asyncio.sleep(0.02)
    stopping.set()
    await asyncio.wait_for(asyncio.gather(slow_task, other_task), 10)

    assert slow_seen == ids
    assert other_seen == []
    assert await redis.xlen(DEAD) == 0


async def test_requeue_moves_entry_back_once(redis):
    await redis.xadd(DEAD, {b"v": b"1", b"events": b"[]", b"dead_letter_entry_id": b"1-0",
                            b"dead_letter_stream": STREAM.encode(), b"dead_letter_error": b"boom",
                            b"dead_letter_deliveries": b"6", b"dead_letter_at_ms": b"1"})

    new_ids = await requeue(redis, DEAD)

    assert await redis.xlen(DEAD) == 0
    entries = await redis.xrange(STREAM)
    assert [e[0].decode() for e in entries] == new_ids
    assert entries[0][1] == {b"v": b"1", b"events": b"[]"}


def test_dlq_cli_lists_and_requeues(redis_url):
    import redis as sync_redis

    client = sync_redis.Redis.from_url(redis_url)
    client.xadd("weir:events:dead", {b"v": b"1", b"events": b"[]", b"dead_letter_entry_id": b"5-0",
                                     b"dead_letter_stream": b"weir:events", b"dead_letter_error": b"boom",
                                     b"dead_letter_deliveries": b"6", b"dead_letter_at_ms": b"1"})
    env = {"PATH": "/usr/bin:/bin", "REDIS_URL": redis_url}

    listed = subprocess.run(weir_command("dlq", "list"), cwd=REPO, env=env, capture_output=True, text=True)
    requeued = subprocess.run(weir_command("dlq", "requeue", "--all"), cwd=REPO, env=env, capture_output=True, text=True)

    assert listed.returncode == 0
    assert listed.stdout.splitlines()[-1] == "1 dead-lettered entry in weir:events:dead"
    assert "from weir:events 5-0\tdeliveries 6\tboom" in listed.stdout
    assert requeued.stdout.strip() == "requeued 1 entry"
    assert client.xlen("weir:events") == 1
    assert client.xlen("weir:events:dead") == 0


async def add_dead_letters(redis: Redis, count: int, stream: str = STREAM, dead: str = DEAD) -> list[str]:
    return [(await redis.xadd(dead, {b"v": b"1", b"events": f'[{{"n": "d{i}"}}]'.encode(),
                                     b"dead_letter_entry_id": f"{i + 1}-0".encode(),
                                     b"dead_letter_stream": stream.encode(), b"dead_letter_error": b"boom",
                                     b"dead_letter_deliveries": b"6", b"dead_letter_at_ms": b"1"})).decode()
            for i in range(count)]


async def test_concurrent_requeues_move_each_entry_once(redis):
    await add_dead_letters(redis, 6)

    first, second = await asyncio.gather(requeue(redis, DEAD), requeue(redis, DEAD))

    assert len(first) + len(second) == 6
    assert await redis.xlen(STREAM) == 6
    assert await redis.xlen(DEAD) == 0


def test_dlq_requeue_repeated_id_once(redis_url):
    import redis as sync_redis

    client = sync_redis.Redis.from_url(redis_url)
    ids = asyncio.run(_add_dead_letters_at(redis_url, 2))
    env = {"PATH": "/usr/bin:/bin", "REDIS_URL": redis_url}

    requeued = subprocess.run(weir_command("dlq", "requeue", ids[0], ids[0]), cwd=REPO, env=env,
                              capture_output=True, text=True)

    assert requeued.returncode == 0, requeued.stderr
    assert requeued.stdout.splitlines() == ["requeued 1 entry"]
    assert client.xlen("weir:events") == 1
    assert [entry_id.decode() for entry_id, _ in client.xrange("weir:events:dead")] == ids[1:]
    client.close()


async def _add_dead_letters_at(redis_url: str, count: int) -> list[str]:
    client = Redis.from_url(redis_url)
    try:
        return await add_dead_letters(client, count, "weir:events", "weir:events:dead")
    finally:
        await client.aclose()


def test_dlq_list_limit_shows_total(redis_url):
    asyncio.run(_add_dead_letters_at(redis_url, 5))
    env = {"PATH": "/usr/bin:/bin", "REDIS_URL": redis_url}

    limited = subprocess.run(weir_command("dlq", "list", "--limit", "2"), cwd=REPO, env=env, capture_output=True,
                             text=True)
    whole = subprocess.run(weir_command("dlq", "list"), cwd=REPO, env=env, capture_output=True, text=True)

    assert limited.returncode == 0, limited.stderr
    assert len(limited.stdout.splitlines()) == 3
    assert limited.stdout.splitlines()[-1] == ("showing the oldest 2 of 5 dead-lettered entries in weir:events:dead; "
                                               "pass --limit 5 to see them all")
    assert whole.stdout.splitlines()[-1] == "5 dead-lettered entries in weir:events:dead"


async def test_trim_never_removes_unacknowledged_entries(redis):
    ids = await add_entries(redis, 6)
    consumer = await make_consumer(redis)
    delivered = await consumer.read_new(4, 10)
    await consumer.ack([delivered[0].entry_id, delivered[1].entry_id, delivered[3].entry_id])

    removed = await trim_stream(redis, STREAM, keep_window_s=0, now_ms=10**15)

    remaining = [e[0].decode() for e in await redis.xrange(STREAM)]
    assert removed == 2
    assert remaining == ids[2:]


async def test_trim_keeps_replay_window(redis):
    ids = await add_entries(redis, 3)
    consumer = await make_consumer(redis)
    await consumer.ack([e.entry_id for e in await consumer.read_new(10, 10)])
    newest_ms = int(ids[-1].split("-")[0])

    removed = await trim_stream(redis, STREAM, keep_window_s=3600, now_ms=newest_ms + 1000)

    assert removed == 0
    assert await redis.xlen(STREAM) == 3


async def test_idle_consumers_without_pending_are_removed(redis):
    await add_entries(redis, 2)
    gone = await make_consumer(redis, "gone")
    busy = await make_consumer(redis, "busy")
    alive = await make_consumer(redis, "alive")
    await gone.read_new(1, 10)
    await gone.ack([e.entry_id for e in await gone.read_own_pending(10)])
    await busy.read_new(1, 10)
    await asyncio.sleep(0.05)

    removed = await alive.remove_idle_consumers(idle_ms=20, keep={"alive"})

    names = sorted(i["name"].decode() for i in await redis.xinfo_consumers(STREAM, GROUP))
    assert removed == ["gone"]
    assert names == ["busy"]


async def test_give_back_undoes_the_delivery(redis):
    await add_entries(redis, 2)
    consumer = await make_consumer(redis)
    entries = await consumer.read_new(2, 10)

    await consumer.give_back(entries, 60_000)

    details = await redis.xpending_range(STREAM, GROUP, "-", "+", 10)
    assert [int(d["times_delivered"]) for d in details] == [0, 0]
    assert min(int(d["time_since_delivered"]) for d in details) >= 60_000
    claimed = await (await make_consumer(redis, "c2")).reclaim(60_000, 10)
    assert [e.entry_id for e in claimed] == [e.entry_id for e in entries]
    assert [e.deliveries for e in claimed] == [1, 1]
