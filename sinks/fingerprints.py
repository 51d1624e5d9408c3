"""The session_fingerprints sink: read, replace and delete fingerprint rows in the batch transaction."""

from __future__ import annotations

import asyncpg
import orjson

from sinks.schema import SESSION_FINGERPRINTS, quote_ident

ROW_COLUMNS = tuple(c.name for c in SESSION_FINGERPRINTS.columns if c.name != "updated_at")
_QUOTED = ", ".join(quote_ident(c) for c in ROW_COLUMNS)
_TYPES = {c.name: c.type for c in SESSION_FINGERPRINTS.columns}

_SELECT = f"""
SELECT {_QUOTED} FROM session_fingerprints
 WHERE site = $1 AND session_id = ANY($2::text[])
 ORDER BY session_id
   FOR UPDATE
"""

_UPSERT = f"""
INSERT INTO session_fingerprints ({_QUOTED}, updated_at)
SELECT {", ".join(f"u.{quote_ident(c)}" for c in ROW_COLUMNS)}, now()
  FROM jsonb_to_recordset($1::jsonb) AS u({", ".join(f"{quote_ident(c)} {_TYPES[c]}" for c in ROW_COLUMNS)})
 ORDER BY u.site, u.session_id
ON CONFLICT (site, session_id) DO UPDATE SET
{", ".join(f"    {quote_ident(c)} = EXCLUDED.{quote_ident(c)}" for c in ROW_COLUMNS if c not in ("site", "session_id"))},
    updated_at = now()
"""


async def load_fingerprints(conn: asyncpg.Connection, site: str, session_ids: list[str]) -> dict[str, asyncpg.Record]:
    """Return the stored rows of `session_ids`, locked for this transaction."""
    if not session_ids:
        return {}
    rows = await conn.fetch(_SELECT, site, sorted(session_ids))
    return {row["session_id"]: row for row in rows}


async def save_fingerprints(conn: asyncpg.Connection, rows: list[dict]) -> None:
    """Insert or replace `rows` (mappings with every ROW_COLUMNS key)."""
    if rows:
        payload = orjson.dumps([{c: row[c] for c in ROW_COLUMNS} for row in rows]).decode()
        await conn.execute(_UPSERT, payload)


async def delete_fingerprints(conn: asyncpg.Connection, site: str, session_ids: list[str]) -> None:
    """Delete the rows of sessions that merged into others."""
    if session_ids:
        await conn.execute("DELETE FROM session_fingerprints WHERE site = $1 AND session_id = ANY($2::text[])",
                           site, session_ids)
