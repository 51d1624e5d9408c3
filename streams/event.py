"""The event model and its wire format on the stream.

One stream entry carries a batch of events from one request (or one slice of an imported log)
in the field `events`, as a JSON array. Batching entries is what lets one collector process
write tens of thousands of events per second: the cost of an XADD is per entry, not per byte.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

WIRE_VERSION = b"1"
EVENTS_FIELD = b"events"
VERSION_FIELD = b"v"

PAGEVIEW = "pageview"


@dataclass(slots=True)
class Event:
    """One accepted event, as the collector hands it to the stream.

    `ip` travels on the stream only, for enrichment (geo, network owner) in the processor;
    no sink writes it to PostgreSQL. `visitor_id` is the keyed hash of the day's salt, site,
    IP and user agent, computed at ingest.
    """

    id: str
    site: str
    type: str
    action: str
    timestamp_ms: int
    received_ms: int
    visitor_id: str
    url: str | None = None
    referrer: str | None = None
    user_agent: str | None = None
    ip: str | None = None
    user_id: str | None = None
    props: dict[str, Any] = field(default_factory=dict)
    source: str = "collect"


def encode_entry(events: list[Event]) -> dict[bytes, bytes]:
    """Return the fields of one stream entry carrying `events`."""
    # orjson writes dataclasses natively, field by field in declaration order, as asdict() would.
    payload = orjson.dumps(events)
    return {VERSION_FIELD: WIRE_VERSION, EVENTS_FIELD: payload}


class MalformedEntry(ValueError):
    """A stream entry that is not a batch of events in the current wire format."""

    def __init__(self, entry_id: str, reason: str) -> None:
        super().__init__(f"malformed stream entry {entry_id}: {reason}")
        self.entry_id = entry_id
        self.reason = reason


def decode_entry(entry_id: str, fields: dict[bytes, bytes]) -> list[Event]:
    """Return the events of one stream entry; raise MalformedEntry if it cannot be read."""
    version = fields.get(VERSION_FIELD)
    if version != WIRE_VERSION:
        raise MalformedEntry(entry_id, f"unknown wire version {version!r}")

    try:
        items = orjson.loads(fields[EVENTS_FIELD])
        return [Event(**item) for item in items]
    except (KeyError, TypeError, orjson.JSONDecodeError) as error:
        raise MalformedEntry(entry_id, str(error)) from error
