"""Trim the event stream without ever removing an entry a consumer group still needs.

XADD MAXLEN would drop the oldest entries whether or not they were processed. This trims by
MINID instead: the cut is the oldest entry that any group has not acknowledged (its oldest
pending entry, or the first entry after its last delivered one), and also no newer than the
replay window, so `weir replay stream` can re-read recent entries.
"""

from __future__ import annotations

import logging
import time

from redis.asyncio import Redis

logger = logging.getLogger(__name__)


def _parse_id(entry_id: bytes | str) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


async def safe_trim_id(redis: Redis, stream: str) -> tuple[int, int] | None:
    """Return the oldest entry id some group still needs, (ms, seq); None when the stream has no groups."""
    groups = await redis.xinfo_groups(stream)
    if not groups:
        return None
    needed = []
    for group in groups:
        name = group["name"]
        pending = await redis.xpending(stream, name)
        if int(pending["pending"]) > 0:
            needed.append(_parse_id(pending["min"]))
        last_ms, last_seq = _parse_id(group["last-delivered-id"])
        needed.append((last_ms, last_seq + 1))
    return min(needed)


async def trim_stream(redis: Redis, stream: str, keep_window_s: float, now_ms: int | None = None) -> int:
    """Trim entries that every group acknowledged and that are older than the window; return the count."""
    if not await redis.exists(stream):
        return 0
    needed = await safe_trim_id(redis, stream)
    if needed is None:
        return 0
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    window_start = (now_ms - int(keep_window_s * 1000), 0)
    cut = min(needed, window_start)
    removed = await redis.xtrim(stream, minid=f"{cut[0]}-{cut[1]}", approximate=False)
    if removed:
        logger.info("stream trimmed stream=%s removed=%d min_id=%d-%d", stream, removed, *cut)
    return int(removed)
