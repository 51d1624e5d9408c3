"""Every Redis key, stream and consumer group name Weir uses, in one place.

Keys that belong to one visitor or one day carry their variable part in braces (a hash tag),
so that on Redis Cluster a multi-key command only ever touches keys of one slot.
"""

from __future__ import annotations

EVENTS_STREAM = "weir:events"
"""The stream the collector and the log importer write and the processors read."""

PROCESSOR_GROUP = "weir:processors"
"""The consumer group all processor replicas join."""

DEAD_LETTER_STREAM = "weir:events:dead"
"""Entries that failed MAX_DELIVERIES times, each with the error that stopped it."""

SITES_HASH = "weir:sites"
"""Host name (domain or alias, lower case) to the site's JSON record; mirrors the `sites` table."""


def salt_key(day_iso: str) -> str:
    """Key of the random visitor-id salt of one UTC day (`YYYY-MM-DD`)."""
    return f"weir:salt:{{{day_iso}}}"

