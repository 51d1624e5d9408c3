"""Event ids: UUIDv7, time-ordered, and stable for ids that clients send.

A fresh event gets a random UUIDv7 from its receive time. An event that carries a client id
(a message id from an SDK, a line of an imported log) gets a UUIDv7 whose time part is the
event time and whose random part is a hash of site and client id, so a retried or re-imported
event maps to the same id and the sink's unique key `(id, timestamp)` skips it.
"""

from __future__ import annotations

import hashlib
import os
import uuid

_VERSION_7 = 0x7
_VARIANT_RFC4122 = 0b10


def _compose(unix_ms: int, tail80: int) -> uuid.UUID:
    """Build a UUIDv7 from a 48-bit millisecond time and 80 more bits (74 of them kept)."""
    unix_ms &= (1 << 48) - 1
    rand_a = (tail80 >> 62) & 0xFFF
    rand_b = tail80 & ((1 << 62) - 1)
    value = (unix_ms << 80) | (_VERSION_7 << 76) | (rand_a << 64) | (_VARIANT_RFC4122 << 62) | rand_b
    return uuid.UUID(int=value)


def new_event_id(unix_ms: int) -> uuid.UUID:
    """Return a random UUIDv7 for an event received at `unix_ms`."""
    return _compose(unix_ms, int.from_bytes(os.urandom(10), "big"))


def stable_event_id(site: str, client_id: str, unix_ms: int) -> uuid.UUID:
    """Return the UUIDv7 that a client id of `site` maps to, for an event at `unix_ms`."""
    digest = hashlib.blake2b(f"{site}\x00{client_id}".encode(), digest_size=10).digest()
    return _compose(unix_ms, int.from_bytes(digest, "big"))
