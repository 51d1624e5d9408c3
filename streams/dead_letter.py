"""The dead-letter stream: entries that failed MAX_DELIVERIES times, kept with their error.

Requeueing copies an entry's original fields back onto the event stream and deletes it from the
dead-letter stream in one MULTI/EXEC, so it is never in both or in neither. The event ids inside
are unchanged, so an entry whose events were stored after all is skipped by the sinks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from redis.asyncio import Redis

logger = logging.getLogger(__name__)

_META_PREFIX = b"dead_letter_"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    entry_id: str
    """Id in the dead-letter stream."""
    original_entry_id: str
    stream: str
    error: str
    deliveries: int
    dead_lettered_at_ms: int
    fields: dict[bytes, bytes]
    """The entry's original fields, without the dead-letter metadata."""


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _parse(entry_id: bytes | str, fields: dict[bytes, bytes]) -> DeadLetter:
    original = {k: v for k, v in fields.items() if not k.startswith(_META_PREFIX)}
    return DeadLetter(
        entry_id=_text(entry_id),
        original_entry_id=_text(fields.get(b"dead_letter_entry_id")),
        stream=_text(fields.get(b"dead_letter_stream")),
        error=_text(fields.get(b"dead_letter_error")),
        deliveries=int(fields.get(b"dead_letter_deliveries") or 0),
        dead_lettered_at_ms=int(fields.get(b"dead_letter_at_ms") or 0),
        fields=original,
    )


async def list_dead_letters(redis: Redis, dead_letter_stream: str, count: int = 100) -> list[DeadLetter]:
    """Return up to `count` dead-lettered entries, oldest first."""
    return [_parse(entry_id, fields) for entry_id, fields in await redis.xrange(dead_letter_stream, count=count)]


async def requeue(redis: Redis, dead_letter_stream: str, entry_ids: list[str] | None = None,
                  target_stream: str | None = None) -> list[str]:
    """Move dead-lettered entries (all when `entry_ids` is None) back to their stream; return new ids."""
    if entry_ids is None:
        letters = [_parse(i, f) for i, f in await redis.xrange(dead_letter_stream)]
    else:
        letters = []
        for entry_id in entry_ids:
            found = await redis.xrange(dead_letter_stream, min=entry_id, max=entry_id)
            if not found:
                raise KeyError(f"no entry {entry_id} in {dead_letter_stream}")
            letters.append(_parse(*found[0]))

    new_ids = []
    for letter in letters:
        stream = target_stream or letter.stream
        async with redis.pipeline(transaction=True) as pipe:
            pipe.xadd(stream, letter.fields)
            pipe.xdel(dead_letter_stream, letter.entry_id)
            new_id, _deleted = await pipe.execute()
        new_ids.append(_text(new_id))
        logger.info("dead letter requeued entry_id=%s original_entry_id=%s stream=%s new_entry_id=%s",
                    letter.entry_id, letter.original_entry_id, stream, _text(new_id))
    return new_ids
