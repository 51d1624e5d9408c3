"""The `sites` table: the record of which domains Weir collects for, and their time zones."""

from __future__ import annotations

import logging
import re
import time
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import asyncpg

from streams.sites import Site, SiteDirectory, normalize_host

logger = logging.getLogger(__name__)


class InvalidSite(ValueError):
    """A domain, alias or time zone that cannot be used; the message names it and the fix."""


_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
MAX_HOST_CHARS = 253


def is_host_name(host: str) -> bool:
    """True for a DNS host name: dot-separated labels of letters, digits and inner hyphens."""
    return 0 < len(host) <= MAX_HOST_CHARS and all(_LABEL.match(label) for label in host.split("."))


def validate_site(domain: str, timezone: str, aliases: list[str]) -> Site:
    """Return the normalised Site; raise InvalidSite naming the bad value."""
    typed, domain = domain, normalize_host(domain)
    if not is_host_name(domain):
        # The message shows the value as typed: for "http://" the normalised host is empty.
        shown = typed if len(typed) <= 80 else typed[:77] + "..."
        raise InvalidSite(f"invalid domain {shown!r}: give a host name such as example.com "
                          f"(letters, digits, hyphens and dots, at most {MAX_HOST_CHARS} characters)")
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidSite(f"unknown time zone {timezone!r}: use an IANA name such as Europe/Berlin or UTC") from None
    cleaned = []
    for alias in aliases:
        host = normalize_host(alias)
        if not is_host_name(host):
            shown = alias if len(alias) <= 80 else alias[:77] + "..."
            raise InvalidSite(f"invalid alias {shown!r}: give a host name such as www.{domain}")
        if host != domain and host not in cleaned:
            cleaned.append(host)
    return Site(domain, timezone, tuple(cleaned))


async def upsert_site(conn: asyncpg.Connection, site: Site) -> None:
    """Insert `site` or update its time zone and add its aliases."""
    await conn.execute(
        """INSERT INTO sites (domain, timezone, aliases) VALUES ($1, $2, $3)
           ON CONFLICT (domain) DO UPDATE
              SET timezone = EXCLUDED.timezone,
                  aliases = ARRAY(SELECT DISTINCT unnest(sites.aliases || EXCLUDED.aliases))""",
        site.domain, site.timezone, list(site.aliases),
    )


async def load_sites(conn: asyncpg.Connection) -> list[Site]:
    rows = await conn.fetch("SELECT domain, timezone, aliases FROM sites ORDER BY domain")
    return [Site(r["domain"], r["timezone"], tuple(sorted(r["aliases"]))) for r in rows]


async def get_site(conn: asyncpg.Connection, domain: str) -> Site | None:
    row = await conn.fetchrow("SELECT domain, timezone, aliases FROM sites WHERE domain = $1", normalize_host(domain))
    return Site(row["domain"], row["timezone"], tuple(sorted(row["aliases"]))) if row else None


async def publish_sites(conn: asyncpg.Connection, directory: SiteDirectory) -> int:
    """Copy every row of `sites` into the Redis directory the collector reads; return the count."""
    sites = await load_sites(conn)
    await directory.publish(sites)
    logger.info("site directory published sites=%d", len(sites))
    return len(sites)


class SiteCache:
    """The sites table as the processor reads it: reloaded every `ttl_s`, and on a miss."""

    def __init__(self, ttl_s: float = 30.0) -> None:
        self._ttl_s = ttl_s
        self._sites: dict[str, Site] = {}
        self._loaded_at = float("-inf")

    async def get(self, conn: asyncpg.Connection, domain: str) -> Site:
        """Return the site `domain`; one that is not in the table counts in UTC with no aliases."""
        if time.monotonic() - self._loaded_at > self._ttl_s or domain not in self._sites:
            self._sites = {site.domain: site for site in await load_sites(conn)}
            self._loaded_at = time.monotonic()
        site = self._sites.get(domain)
        if site is None:
            # The collector accepts only known sites, so this is a site deleted since; keep its events.
            logger.warning("events for a site missing from the sites table site=%s; counting in UTC", domain)
            site = self._sites[domain] = Site(domain, "UTC")
        return site
