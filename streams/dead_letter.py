"""The dead-letter stream: entries that failed MAX_DELIVERIES times, kept with their error.

Requeueing deletes an entry from the dead-letter stream and copies its original fields back onto
the event stream in one script, so it is never in both or in neither. Of two requeues of the same
entry at once, only the one whose delete removed it adds it to the stream. The event ids inside
are unchanged, so an entry whose events were stored after all is skipped by the sinks. On Redis
Cluster the two streams must share a slot, as a partition's event and dead-letter streams do.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from weir.redis import RedisClient

logger = logging.getLogger(__name__)

_META_PREFIX = b"dead_letter_"

# KEYS: the target stream, the dead-letter stream. ARGV: the dead letter's id, then the fields
# and values to add. A script rather than MULTI/EXEC, which redis-py's cluster pipelines reject.
# It returns nil when another requeue removed the entry first.
_REQUEUE_SCRIPT = """
if redis.call('XDEL', KEYS[2], ARGV[1]) == 0 then
    return false
end
return redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
"""


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


async def list_dead_letters(redis: RedisClient, dead_letter_stream: str, count: int = 100) -> list[DeadLetter]:
    """Return up to `count` dead-lettered entries, oldest first."""
    return [_parse(entry_id, fields) for entry_id, fields in await redis.xrange(dead_letter_stream, count=count)]


async def requeue(redis: RedisClient, dead_letter_stream: str, entry_ids: list[str] | None = None,
                  target_stream: str | None = None) -> list[str]:
    """Move dead-lettered entries (all when `entry_ids` is None) back to their stream; return new ids.

    An id given twice is moved once, and an entry that a concurrent requeue moved first is
    skipped, so the result counts only the entries that this call moved.
    """
    if entry_ids is None:
        letters = [_parse(i, f) for i, f in await redis.xrange(dead_letter_stream)]
    else:
        letters = []
        for entry_id in dict.fromkeys(entry_ids):
            found = await redis.xrange(dead_letter_stream, min=entry_id, max=entry_id)
            if not found:
                raise KeyError(f"no entry {entry_id} in {dead_letter_stream}")
            letters.append(_parse(*found[0]))

    move = redis.register_script(_REQUEUE_SCRIPT)
    new_ids = []
    for letter in letters:
        stream = target_stream or letter.stream
        fields = [item for pair in letter.fields.items() for item in pair]
        new_id = await move(keys=[stream, dead_letter_stream], args=[letter.entry_id, *fields])
        if new_id is None:
            logger.info("dead letter already requeued by another run entry_id=%s original_entry_id=%s",
                        letter.entry_id, letter.original_entry_id)
            continue
        new_ids.append(_text(new_id))
        logger.info("dead letter requeued entry_id=%s original_entry_id=%s stream=%s new_entry_id=%s",
                    letter.entry_id, letter.original_entry_id, stream, _text(new_id))
    return new_ids


async def list_all_dead_letters(redis: RedisClient, dead_letter_streams: list[str], count: int = 100) -> list[DeadLetter]:
    """Return up to `count` entries of all `dead_letter_streams` (the partitions'), oldest first."""
    letters = [letter for stream in dead_letter_streams for letter in await list_dead_letters(redis, stream, count)]
    letters.sort(key=lambda letter: _id_tuple(letter.entry_id))
    return letters[:count]


async def requeue_all(redis: RedisClient, dead_letter_streams: list[str],
                      entry_ids: list[str] | None = None) -> list[str]:
    """Requeue `entry_ids` from the dead-letter stream that contains each, or every entry of all; return new ids.

    Raises KeyError naming the first id that no dead-letter stream contains, before moving any entry.
    """
    if entry_ids is None:
        return [new_id for stream in dead_letter_streams for new_id in await requeue(redis, stream)]

    by_stream: dict[str, list[str]] = {}
    for entry_id in dict.fromkeys(entry_ids):
        for stream in dead_letter_streams:
            if await redis.xrange(stream, min=entry_id, max=entry_id):
                by_stream.setdefault(stream, []).append(entry_id)
                break
        else:
            raise KeyError(f"no entry {entry_id} in {', '.join(dead_letter_streams)}")
    return [new_id for stream, ids in by_stream.items() for new_id in await requeue(redis, stream, ids)]


def _id_tuple(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
