"""Partitions of the event stream: which streams exist, which one an event goes to, which agent reads which.

| STREAM_PARTITIONS | REDIS_CLUSTER | event streams                        | dead-letter streams                            |
|-------------------|---------------|--------------------------------------|------------------------------------------------|
| 1                 | false         | `weir:events`                        | `weir:events:dead`                             |
| 1                 | true          | `weir:events:{0}`                    | `weir:events:dead:{0}`                         |
| N > 1             | either        | `weir:events:{0}` … `weir:events:{N-1}` | `weir:events:dead:{0}` … `weir:events:dead:{N-1}` |

The braces are a hash tag. On Redis Cluster a partition's stream and its dead-letter stream
therefore share one slot, so moving an entry between them is one script on one node. The
partitions themselves spread over the slots, and so over the shards. One partition on a single Redis keeps the
names Weir always used, so an existing deployment needs no change.

The collector and the log importer send an event to partition `crc32(site ":" visitor_id) mod N`,
so one visitor's events stay in one stream in the order they were written. Sessions do not
depend on that: they are computed in PostgreSQL under a lock per visitor, so any consumer may
take any batch.

NOTE: processors read partitions 0 … N-1 of their own STREAM_PARTITIONS only. Entries left in a
stream outside that range after a change of STREAM_PARTITIONS are not processed, so drain
the streams (backlog 0) before changing the setting.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from streams.event import Event
from streams.keys import DEAD_LETTER_STREAM, EVENTS_STREAM, partition_dead_letter_stream, partition_stream


class StreamLayoutConfig(Protocol):
    """The two settings that decide the stream names (`weir.settings.StreamLayoutSettings`)."""

    REDIS_CLUSTER: bool
    STREAM_PARTITIONS: int


def partition_of(site: str, visitor_id: str, partitions: int) -> int:
    """Return the partition of a visitor: crc32 of `site:visitor_id`, modulo `partitions`."""
    return zlib.crc32(f"{site}:{visitor_id}".encode()) % partitions


@dataclass(frozen=True, slots=True)
class StreamPartitions:
    """The event streams of one deployment and their dead-letter streams."""

    count: int = 1
    cluster: bool = False
    """On a cluster even one partition gets hash-tagged names, so its dead-letter moves stay in one slot."""

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"invalid partition count {self.count}: give 1 or more")

    @classmethod
    def from_settings(cls, settings: StreamLayoutConfig) -> StreamPartitions:
        return cls(settings.STREAM_PARTITIONS, settings.REDIS_CLUSTER)

    @property
    def hash_tagged(self) -> bool:
        return self.count > 1 or self.cluster

    def streams(self) -> list[str]:
        """Return the event streams, partition 0 first."""
        if not self.hash_tagged:
            return [EVENTS_STREAM]
        return [partition_stream(partition) for partition in range(self.count)]

    def dead_letter_streams(self) -> list[str]:
        """Return the dead-letter streams, in the order of `streams`."""
        if not self.hash_tagged:
            return [DEAD_LETTER_STREAM]
        return [partition_dead_letter_stream(partition) for partition in range(self.count)]

    def dead_letter_stream(self, stream: str) -> str:
        """Return the dead-letter stream of `stream`; DEAD_LETTER_STREAM for a stream outside this layout.

        A stream outside the layout is one a test or a replay names itself. On Redis Cluster
        its dead-letter moves fail unless it shares DEAD_LETTER_STREAM's slot.
        """
        for event_stream, dead_letter_stream in zip(self.streams(), self.dead_letter_streams()):
            if event_stream == stream:
                return dead_letter_stream
        return DEAD_LETTER_STREAM

    def stream_of(self, event: Event) -> str:
        """Return the stream that `event` belongs in."""
        if not self.hash_tagged:
            return EVENTS_STREAM
        return partition_stream(partition_of(event.site, event.visitor_id, self.count))

    def route(self, events: Iterable[Event]) -> dict[str, list[Event]]:
        """Group `events` by stream, keeping their order within each stream."""
        by_stream: dict[str, list[Event]] = {}
        for event in events:
            by_stream.setdefault(self.stream_of(event), []).append(event)
        return by_stream


def assign_streams(streams: Sequence[str], agents: int) -> list[list[str]]:
    """Return the streams each of `agents` agents of one process reads.

    With no more streams than agents, agent i reads stream i mod N, so every stream gets
    floor(agents / N) or ceil(agents / N) consumers. With more streams than agents, agent i
    reads streams i, i + agents, i + 2 * agents, … in turn. Either way every process covers
    every stream, so any number of processes share the work and reclaim each other's entries.
    """
    if not streams:
        raise ValueError("no streams to assign")
    if agents < 1:
        raise ValueError(f"invalid agent count {agents}: give 1 or more")
    if len(streams) <= agents:
        return [[streams[agent % len(streams)]] for agent in range(agents)]
    return [list(streams[agent::agents]) for agent in range(agents)]
