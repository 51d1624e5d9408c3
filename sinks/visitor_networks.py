"""The visitor_networks table: each visitor's location and network owner, kept for rebuilds."""

from __future__ import annotations

from collections.abc import Iterable

import asyncpg

from streams.fingerprint import VisitorNetwork

_INSERT = """
INSERT INTO visitor_networks (site, visitor_id, country, region, city, asn, org, "orgType", "isGovernment", "responseTier")
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::integer[], $7::text[], $8::text[],
                     $9::boolean[], $10::text[])
 ORDER BY 1, 2
ON CONFLICT DO NOTHING
"""


async def record_networks(conn: asyncpg.Connection, networks: Iterable[tuple[str, str, VisitorNetwork]]) -> None:
    """Store (site, visitor id, network) for visitors not stored yet."""
    unique = {(site, visitor): network for site, visitor, network in networks}
    if not unique:
        return
    items = sorted(unique.items())
    columns = list(zip(*[(site, visitor, n.country, n.region, n.city, n.asn, n.org, n.org_type, n.is_government,
                          n.response_tier) for (site, visitor), n in items]))
    await conn.execute(_INSERT, *[list(column) for column in columns])


async def load_networks(conn: asyncpg.Connection, site: str, visitors: list[str]) -> dict[str, VisitorNetwork]:
    rows = await conn.fetch('SELECT visitor_id, country, region, city, asn, org, "orgType", "isGovernment", '
                            '"responseTier" FROM visitor_networks WHERE site = $1 AND visitor_id = ANY($2::text[])',
                            site, visitors)
    return {r["visitor_id"]: VisitorNetwork(r["country"], r["region"], r["city"], r["asn"], r["org"], r["orgType"],
                                            r["isGovernment"], r["responseTier"]) for r in rows}
