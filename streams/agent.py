"""Agents: decorated async functions that consume a stream in batches through a consumer group.

An agent's handler receives a list of entries and either returns (the batch is committed, the
entries are acknowledged) or raises (nothing is acknowledged; the entries are retried, one by
one once a batch has failed, and dead-lettered after `max_deliveries`). A stop request lets the
batch in hand finish, commit and acknowledge before the loop ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from streams import metrics
from streams.consumer import Entry, StreamConsumer
from streams.event import MalformedEntry
from weir.tasks import cancel_and_wait, shielded

logger = logging.getLogger(__name__)

BatchHandler = Callable[[list[Entry]], Awaitable[None]]

CYCLE_BLOCK_MS = 100
"""How long a runner of several streams waits on each one once a whole round found nothing, so an
entry waits at most about this times the number of streams while the runner is idle."""


class PoisonEntry(Exception):
    """Raised by a handler for an entry that can never succeed; it is dead-lettered at once."""

    def __init__(self, entry_id: str, reason: str) -> None:
        super().__init__(f"entry {entry_id} cannot be processed: {reason}")
        self.entry_id = entry_id


@dataclass(frozen=True, slots=True)
class AgentOptions:
    batch_size: int = 100
    block_ms: int = 1000
    reclaim_idle_ms: int = 60_000
    """Pending entries idle this long on another consumer are taken over."""
    reclaim_interval_s: float = 10.0
    max_deliveries: int = 5
    retry_backoff_s: float = 1.0
    max_retry_backoff_s: float = 30.0
    is_transient: Callable[[BaseException], bool] = lambda error: False
    """Errors for which the batch is retried in place until it succeeds (a database that is down,
    a schema the guard must repair) instead of being split up and dead-lettered."""


@dataclass(frozen=True, slots=True)
class AgentSpec:
    name: str
    handler: BatchHandler


AGENTS: dict[str, AgentSpec] = {}


def agent(name: str) -> Callable[[BatchHandler], BatchHandler]:
    """Register the decorated batch handler as the agent `name`."""

    def register(handler: BatchHandler) -> BatchHandler:
        AGENTS[name] = AgentSpec(name, handler)
        return handler

    return register


class AgentRunner:
    """Runs one agent's loop on one consumer until `stopping` is set."""

    def __init__(self, spec: AgentSpec, consumer: StreamConsumer, options: AgentOptions) -> None:
        self.spec = spec
        self.consumer = consumer
        self.options = options
        self._retrying = True  # start by finishing whatever this consumer left pending
        self._isolate = False
        self._last_errors: dict[str, str] = {}
        self._next_reclaim = 0.0

    async def run(self, stopping: asyncio.Event) -> None:
        """Loop: pick the next batch, process it, until `stopping` is set between batches."""
        logger.info("agent started agent=%s stream=%s group=%s consumer=%s", self.spec.name, self.consumer.stream,
                    self.consumer.group, self.consumer.consumer)
        while not stopping.is_set():
            await self.step(stopping, self.options.block_ms)
        logger.info("agent stopped agent=%s consumer=%s", self.spec.name, self.consumer.consumer)

    async def step(self, stopping: asyncio.Event, block_ms: int | None) -> bool:
        """Pick the next batch and process it; return whether there was a batch.

        New entries are awaited for up to `block_ms`, or not at all when it is None. A failed
        read is logged, waited out and reported as no batch.
        """
        try:
            entries = await self._next_batch(block_ms)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - Redis down: wait and try again, nothing to lose
            logger.warning("stream read failed agent=%s stream=%s error=%r; retrying in %.1fs", self.spec.name,
                           self.consumer.stream, error, self.options.retry_backoff_s)
            await _sleep_unless(stopping, self.options.retry_backoff_s)
            await self._recreate_lost_group(error)
            return False
        if entries:
            await self.process(entries, stopping)
        return bool(entries)

    async def _recreate_lost_group(self, error: Exception) -> None:
        """Create the group again after a Redis that lost its data (no persistence) came back."""
        if "NOGROUP" not in str(error):
            return
        try:
            await self.consumer.ensure_group()
            logger.error("consumer group was missing and is created again stream=%s group=%s; entries added "
                         "while Redis had no group are read from the start of the stream",
                         self.consumer.stream, self.consumer.group)
        except Exception as retry_error:  # noqa: BLE001 - the next read reports it again
            logger.warning("could not create consumer group group=%s error=%r", self.consumer.group, retry_error)

    async def _next_batch(self, block_ms: int | None) -> list[Entry]:
        if self._retrying:
            entries = await self.consumer.read_own_pending(1 if self._isolate else self.options.batch_size)
            if entries:
                return entries
            self._retrying = self._isolate = False

        now = time.monotonic()
        if now >= self._next_reclaim:
            self._next_reclaim = now + self.options.reclaim_interval_s
            claimed = await self.consumer.reclaim(self.options.reclaim_idle_ms, self.options.batch_size)
            if claimed:
                metrics.ENTRIES_RECLAIMED.labels(self.consumer.stream).inc(len(claimed))
                return claimed
        return await self.consumer.read_new(self.options.batch_size, block_ms)

    async def process(self, entries: list[Entry], stopping: asyncio.Event) -> None:
        """Run the handler on `entries`, then acknowledge them; on failure leave them pending."""
        # Step 1: park entries that already failed too often.
        live = []
        for entry in entries:
            if entry.deliveries > self.options.max_deliveries:
                reason = self._last_errors.pop(entry.entry_id, "failed on every delivery (error not seen by this consumer)")
                await self._dead_letter(entry, f"gave up after {entry.deliveries - 1} deliveries: {reason}")
            else:
                live.append(entry)
        if not live:
            return

        # Step 2: process and commit, retrying in place while the failure is transient.
        started = time.perf_counter()
        attempt = 0
        while True:
            try:
                async with self._renewing_claim(live):
                    await self.spec.handler(live)
                break
            except (MalformedEntry, PoisonEntry) as error:
                await self._dead_letter(_find(live, error.entry_id), str(error))
                self._retrying = True
                return
            except asyncio.CancelledError:
                # A cancelled batch did not fail (a stop cancels batches that outlast STOP_TIMEOUT_S),
                # so its delivery must not count towards MAX_DELIVERIES.
                await self._give_back(live)
                raise
            except Exception as error:  # noqa: BLE001 - every failure leaves the batch pending
                attempt += 1
                transient = self.options.is_transient(error)
                self._record_failure(live, error, attempt, transient)
                delay_s = min(self.options.retry_backoff_s * 2 ** (attempt - 1), self.options.max_retry_backoff_s)
                await _sleep_unless(stopping, delay_s)
                if not transient or stopping.is_set():
                    return
                await self._keep_claimed(live)

        # Step 3: acknowledge what was committed; shielded so a cancellation cannot skip it.
        try:
            await shielded(self.consumer.ack([e.entry_id for e in live]),
                           "acknowledge agent=%s stream=%s first_entry_id=%s", self.spec.name, self.consumer.stream,
                           live[0].entry_id)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - unacknowledged entries come back and are skipped as stored
            logger.warning("acknowledge failed after commit agent=%s stream=%s entries=%d first_entry_id=%s "
                           "error=%r; the entries will be redelivered and skipped as duplicates", self.spec.name,
                           self.consumer.stream, len(live), live[0].entry_id, error)
            await _sleep_unless(stopping, self.options.retry_backoff_s)
            return
        for entry in live:
            self._last_errors.pop(entry.entry_id, None)
        metrics.PROCESSING_SECONDS.observe(time.perf_counter() - started)
        metrics.BATCH_ENTRIES.observe(len(live))

    @contextlib.asynccontextmanager
    async def _renewing_claim(self, live: list[Entry]):
        """Reset the entries' idle time every third of RECLAIM_IDLE_MS while the handler runs.

        A batch can take longer than RECLAIM_IDLE_MS, for example while it waits for the locks
        of a rebuild. Without renewal another consumer would reclaim it meanwhile, each reclaim
        would count a delivery, and a batch that stays slow would end in the dead-letter stream
        although nothing failed. A consumer that dies stops renewing, so its entries are still
        reclaimed after RECLAIM_IDLE_MS. A handler that blocks the event loop for longer than
        that cannot renew either.
        """
        renewal = asyncio.create_task(self._renew_claim([e.entry_id for e in live]))
        try:
            yield
        finally:
            # A renewal that ran on past its cancellation would keep the entries claimed forever.
            await cancel_and_wait(renewal)

    async def _renew_claim(self, entry_ids: list[str]) -> None:
        interval_s = self.options.reclaim_idle_ms / 3000
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.consumer.touch(entry_ids)
            except Exception as error:  # noqa: BLE001 - Redis may be down; the batch itself reports that
                logger.warning("could not renew the claim on a batch in progress agent=%s stream=%s entries=%d "
                               "first_entry_id=%s error=%r", self.spec.name, self.consumer.stream, len(entry_ids),
                               entry_ids[0], error)

    async def _keep_claimed(self, live: list[Entry]) -> None:
        """Reset the entries' idle time so no other consumer reclaims a batch still being retried."""
        try:
            await self.consumer.touch([e.entry_id for e in live])
        except Exception as error:  # noqa: BLE001 - Redis may be what is down; reclaiming is then harmless
            logger.debug("could not touch pending entries agent=%s error=%r", self.spec.name, error)

    def _record_failure(self, live: list[Entry], error: Exception, attempt: int, transient: bool) -> None:
        description = f"{error.__class__.__name__}: {error}"
        for entry in live:
            self._last_errors[entry.entry_id] = description
        if len(self._last_errors) > 10_000:
            self._last_errors.clear()
        ids = ",".join(e.entry_id for e in live[:20])
        outcome = "retrying in place" if transient else "left pending, retried one entry at a time"
        logger.error("batch failed agent=%s stream=%s attempt=%d entries=%d entry_ids=%s%s outcome=%r error=%s",
                     self.spec.name, self.consumer.stream, attempt, len(live), ids, ",..." if len(live) > 20 else "",
                     outcome, description, extra={"entry_ids": [e.entry_id for e in live]})
        metrics.BATCH_FAILURES.labels(self.spec.name, error.__class__.__name__).inc()
        if not transient:
            self._retrying = True
            self._isolate = len(live) > 1 or self._isolate

    async def _give_back(self, live: list[Entry]) -> None:
        try:
            await shielded(self.consumer.give_back(live, self.options.reclaim_idle_ms),
                           "give back of a cancelled batch agent=%s stream=%s first_entry_id=%s", self.spec.name,
                           self.consumer.stream, live[0].entry_id)
        except asyncio.CancelledError:
            return  # Cancelled again while waiting. The call goes on, and the caller re-raises.
        except Exception as error:  # noqa: BLE001 - the entries stay pending and count one delivery more
            logger.warning("could not give back a cancelled batch agent=%s stream=%s entries=%d first_entry_id=%s "
                           "error=%r", self.spec.name, self.consumer.stream, len(live), live[0].entry_id, error)
            return
        logger.info("cancelled batch given back agent=%s stream=%s entries=%d first_entry_id=%s", self.spec.name,
                    self.consumer.stream, len(live), live[0].entry_id)

    async def _dead_letter(self, entry: Entry, reason: str) -> None:
        try:
            await shielded(self.consumer.dead_letter(entry, reason), "dead-lettering entry_id=%s", entry.entry_id)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - the entry stays pending and is parked on a later delivery
            logger.warning("dead-lettering failed entry_id=%s error=%r; the entry stays pending", entry.entry_id, error)
            return
        metrics.ENTRIES_DEAD_LETTERED.labels(self.consumer.stream).inc()


class StreamCycleRunner:
    """Runs one agent over several streams in one task, a batch from each stream in turn.

    Each stream has its own AgentRunner, with its consumer, pending retries and reclaiming.
    While batches keep coming, reads do not block. After a round that found nothing, each
    read waits up to CYCLE_BLOCK_MS, because a read that blocks longer on one stream would
    delay the others (on Redis Cluster one XREADGROUP cannot read streams of several slots).
    """

    def __init__(self, runners: list[AgentRunner], idle_block_ms: int = CYCLE_BLOCK_MS) -> None:
        if not runners:
            raise ValueError("a stream cycle needs at least one runner")
        self.runners = runners
        self.idle_block_ms = idle_block_ms

    async def run(self, stopping: asyncio.Event) -> None:
        """Loop over the streams until `stopping` is set; a stop lets the batch in hand finish."""
        first = self.runners[0]
        streams = ",".join(runner.consumer.stream for runner in self.runners)
        logger.info("agent started agent=%s streams=%s group=%s consumer=%s", first.spec.name, streams,
                    first.consumer.group, first.consumer.consumer)
        busy = True
        while not stopping.is_set():
            block_ms = None if busy else self.idle_block_ms
            busy = False
            for runner in self.runners:
                if stopping.is_set():
                    break
                busy = await runner.step(stopping, block_ms) or busy
        logger.info("agent stopped agent=%s consumer=%s", first.spec.name, first.consumer.consumer)


def _find(entries: list[Entry], entry_id: str) -> Entry:
    return next(e for e in entries if e.entry_id == entry_id)


async def _sleep_unless(stopping: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stopping.wait(), seconds)
    except asyncio.TimeoutError:
        pass
