"""Every Redis key, stream and consumer group name Weir uses, in one place.

Keys that belong to one visitor or one day carry their variable part in braces (a hash tag),
so that on Redis Cluster a multi-key command only ever touches keys of one slot.
"""

from __future__ import annotations

EVENTS_STREAM = "weir:events"
"""The stream the collector and the log importer write and the processors read."""

PROCESSOR_GROUP = "weir:processors"
"""The consumer group all processor replicas join."""

ARCHIVE_GROUP = "weir:archive"
"""The consumer group of the archive sink, separate from the processors' group so its lag never delays them."""

DEAD_LETTER_STREAM = "weir:events:dead"
"""Entries that failed MAX_DELIVERIES times, each with the error that stopped it."""


def partition_stream(partition: int) -> str:
    """Event stream of one partition when the stream is split (`streams.partitions`).

    The hash tag is the partition number, so on Redis Cluster the partitions spread over the
    slots, and so over the shards.
    """
    return f"weir:events:{{{partition}}}"


def partition_dead_letter_stream(partition: int) -> str:
    """Dead-letter stream of one partition; it shares the partition's hash tag, so the move is one slot."""
    return f"weir:events:dead:{{{partition}}}"

SITES_HASH = "weir:sites"
"""Host name (domain or alias, lower case) to the site's JSON record; mirrors the `sites` table."""


def salt_key(day_iso: str) -> str:
    """Key of the random visitor-id salt of one UTC day (`YYYY-MM-DD`)."""
    return f"weir:salt:{{{day_iso}}}"



def live_visitors_key(site: str) -> str:
    """Sorted set of one site's live visitor ids, scored by the time of their newest event (unix ms)."""
    return f"weir:live:{{{site}}}:visitors"


def live_seen_key(site: str) -> str:
    """Sorted set of the event ids already in one site's live counters, scored by event time (unix ms)."""
    return f"weir:live:{{{site}}}:seen"


def live_meta_key(site: str) -> str:
    """Hash of one site's live counter version, last batch delay and update time."""
    return f"weir:live:{{{site}}}:meta"


def live_scratch_key(site: str) -> str:
    """Temporary sorted set where a snapshot read merges one site's per-second top lists."""
    return f"weir:live:{{{site}}}:scratch"


def live_counts_key(site: str, second: int) -> str:
    """Hash of one site's pageview and event counts for events in one unix second."""
    return f"weir:live:{{{site}}}:counts:{second}"


def live_pages_key(site: str, second: int) -> str:
    """Sorted set of one site's pageviews by path for events in one unix second."""
    return f"weir:live:{{{site}}}:pages:{second}"


def live_sources_key(site: str, second: int) -> str:
    """Sorted set of one site's pageviews by referrer source for events in one unix second."""
    return f"weir:live:{{{site}}}:sources:{second}"


def live_channel(site: str) -> str:
    """Pub/sub channel where the processor announces each change of one site's live counters."""
    return f"weir:live:{{{site}}}:updates"
