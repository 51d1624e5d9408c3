"""Event ids: UUIDv7, time-ordered, and stable for ids that clients send.

A fresh event gets a random UUIDv7 from its receive time. An event that carries a client id
(a message id from an SDK, a line of an imported log) gets a UUIDv7 whose time part is the
event time and whose random part is a hash of site and client id, so a retried or re-imported
event maps to the same id and the sink's unique key `(id, timestamp)` skips it.

The `*_text` functions return the same ids as `str(uuid)` does (lower-case hex in 8-4-4-4-12
groups) without building a `uuid.UUID`, which the collector would only format again.
"""

from __future__ import annotations

import functools
import hashlib
import operator
import os
import uuid
from collections.abc import Iterator

_VERSION_7 = 0x7
_VARIANT_RFC4122 = 0b10
_IDS_PER_BLOCK = 400
_VARIANT_BYTE = bytes((byte & 0x3F) | 0x80 for byte in range(256))
"""Byte translation that sets a byte's top two bits to the RFC 4122 variant (binary 10), keeping
its six low bits random."""
_WITHOUT_FIRST_DIGIT = operator.itemgetter(slice(1, None))

_random_tails: Iterator[str] = iter(())


def _forget_random_tails() -> None:
    global _random_tails
    _random_tails = iter(())


# A forked child must not hand out the random ids its parent hands out too.
os.register_at_fork(after_in_child=_forget_random_tails)


def _next_random_tail() -> str:
    """Return the random end of a UUIDv7 text, after its version digit: `xxx-Vxxx-xxxxxxxxxxxx`,
    where V is the variant digit, with 74 random bits from os.urandom as in `_compose_int`.

    os.urandom is one getrandom() system call per call. Called once per id, it took more of the
    collector's CPU than any other step of a batch in bench/collector profiles. So one call
    serves _IDS_PER_BLOCK ids, and the block is cut and joined by C loops (bytes.hex with a
    separator, str.split, map and zip). An id then cost 0.8 µs instead of 1.2 µs with an
    f-string per id, timed in turns in one process.
    """
    global _random_tails
    tail = next(_random_tails, None)
    if tail is None:
        _random_tails = iter(_random_tail_block(_IDS_PER_BLOCK))
        tail = next(_random_tails)
    return tail


def _random_tail_block(count: int) -> list[str]:
    # Per id, three parts. rand_a's 12 bits come from 2 bytes, whose first hex digit is dropped.
    # The variant digit and the first 12 bits of rand_b come from 2 bytes, the variant set in the
    # first. The last 48 bits of rand_b come from 6 bytes.
    rand_a = os.urandom(2 * count).hex(" ", 2).split(" ")
    middle = bytearray(os.urandom(2 * count))
    middle[0::2] = middle[0::2].translate(_VARIANT_BYTE)
    rand_b_head = middle.hex(" ", 2).split(" ")
    rand_b_tail = os.urandom(6 * count).hex(" ", 6).split(" ")
    return list(map("-".join, zip(map(_WITHOUT_FIRST_DIGIT, rand_a), rand_b_head, rand_b_tail)))


@functools.lru_cache(maxsize=256)
def _time_prefix(unix_ms: int) -> str:
    """Return the first 15 characters of a UUIDv7 text of `unix_ms`: its time and version digits."""
    digits = (unix_ms & ((1 << 48) - 1)).to_bytes(6, "big").hex()
    return f"{digits[:8]}-{digits[8:]}-{_VERSION_7:x}"


def _compose_int(unix_ms: int, tail80: int) -> int:
    """Return the 128-bit value of a UUIDv7 from a 48-bit millisecond time and 80 more bits (74 of them kept)."""
    unix_ms &= (1 << 48) - 1
    rand_a = (tail80 >> 62) & 0xFFF
    rand_b = tail80 & ((1 << 62) - 1)
    return (unix_ms << 80) | (_VERSION_7 << 76) | (rand_a << 64) | (_VARIANT_RFC4122 << 62) | rand_b


def _format(value: int) -> str:
    digits = value.to_bytes(16, "big").hex()
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


def _stable_tail(site: str, client_id: str) -> int:
    digest = hashlib.blake2b(f"{site}\x00{client_id}".encode(), digest_size=10).digest()
    return int.from_bytes(digest, "big")


def new_event_id(unix_ms: int) -> uuid.UUID:
    """Return a random UUIDv7 for an event received at `unix_ms`."""
    return uuid.UUID(new_event_id_text(unix_ms))


def new_event_id_text(unix_ms: int) -> str:
    """Return a random UUIDv7 for an event received at `unix_ms`, as `str(new_event_id(unix_ms))` writes it."""
    return _time_prefix(unix_ms) + _next_random_tail()


def stable_event_id(site: str, client_id: str, unix_ms: int) -> uuid.UUID:
    """Return the UUIDv7 that a client id of `site` maps to, for an event at `unix_ms`."""
    return uuid.UUID(int=_compose_int(unix_ms, _stable_tail(site, client_id)))


def stable_event_id_text(site: str, client_id: str, unix_ms: int) -> str:
    """Return `str(stable_event_id(site, client_id, unix_ms))`."""
    return _format(_compose_int(unix_ms, _stable_tail(site, client_id)))
