"""The `sites` table: the record of which domains Weir collects for, and their time zones."""

from __future__ import annotations

import logging
import time
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import asyncpg

from streams.sites import MAX_HOST_CHARS, Site, SiteDirectory, is_host_name, normalize_host

logger = logging.getLogger(__name__)


class InvalidSite(ValueError):
    """A domain, alias or time zone that cannot be used; the message names it and the fix."""


HOST_DEPENDENT_ZONES = frozenset({"localtime", "posixrules", "Factory"})
"""Names in the zone database that are not a place's time: `localtime` and `posixrules` are
whatever the machine that reads them sets, and `Factory` is a placeholder for "no zone set"."""


def check_site_timezone(timezone: str) -> None:
    """Raise InvalidSite unless `timezone` is an IANA zone that means the same on every machine."""
    try:
        ZoneInfo(timezone)
        known = timezone not in HOST_DEPENDENT_ZONES
    except (ZoneInfoNotFoundError, ValueError):
        known = False
    if known:
        return
    hint = "use an IANA name such as Europe/Berlin or UTC"
    matches = [name for name in available_timezones() if name.lower() == timezone.lower()]
    if matches and matches[0] not in HOST_DEPENDENT_ZONES:
        # Zone names are case-sensitive on Linux, so `utc` is unknown although `UTC` is not.
        hint = f"did you mean {matches[0]!r}? Zone names are case-sensitive"
    raise InvalidSite(f"unknown time zone {timezone!r}: {hint}")


def validate_site(domain: str, timezone: str, aliases: list[str]) -> Site:
    """Return the normalised Site; raise InvalidSite naming the bad value."""
    typed, domain = domain, normalize_host(domain)
    if not is_host_name(domain):
        # The message shows the value as typed: for "http://" the normalised host is empty.
        raise InvalidSite(f"invalid domain {_abbreviated(typed)!r}: give a host name such as example.com "
                          f"(letters, digits, hyphens and dots, at most {MAX_HOST_CHARS} characters)")
    check_site_timezone(timezone)
    cleaned = []
    for alias in aliases:
        host = normalize_host(alias)
        if not is_host_name(host):
            raise InvalidSite(f"invalid alias {_abbreviated(alias)!r}: give a host name such as www.{domain}")
        if host != domain and host not in cleaned:
            cleaned.append(host)
    return Site(domain, timezone, tuple(cleaned))


def _abbreviated(value: str, limit: int = 80) -> str:
    """Return `value`, cut to `limit` characters with "..." at the end when it is longer."""
    return value if len(value) <= limit else value[:limit - 3] + "..."


def host_conflict(site: Site, stored: list[Site]) -> str | None:
    """Return why `site` cannot be stored beside the `stored` sites, or None when none of its hosts is taken.

    A host belongs to one site only: an alias must not be another site's domain or alias, and a new
    domain must not be another site's alias. A domain that is stored already is not checked again,
    so a site stored with such a conflict by an older version can still change its time zone.
    """
    existing = any(other.domain == site.domain for other in stored)
    for other in stored:
        if other.domain == site.domain:
            continue
        # Rows written by older versions may contain aliases in another spelling.
        other_aliases = {normalize_host(alias) for alias in other.aliases}
        if not existing and site.domain in other_aliases:
            return (f"domain {site.domain!r} is already an alias of site {other.domain!r}: a host belongs to one "
                    f"site only, so add aliases to {other.domain!r} instead, or first run "
                    f"`weir site remove-alias {other.domain} {site.domain}`")
        for alias in site.aliases:
            if alias == other.domain:
                return (f"alias {alias!r} is the domain of site {other.domain!r}: a host belongs to one site only, "
                        f"so drop --alias {alias}")
            if alias in other_aliases:
                return (f"alias {alias!r} is already an alias of site {other.domain!r}: a host belongs to one "
                        f"site only, so drop --alias {alias}, or first run "
                        f"`weir site remove-alias {other.domain} {alias}`")
    return None


async def add_site(conn: asyncpg.Connection, site: Site) -> None:
    """Store `site` as upsert_site does; raise InvalidSite, changing nothing, when another site owns one of its hosts."""
    async with conn.transaction():
        # The lock lets one `weir site add` at a time check and write, so two of them cannot both
        # find a host free and claim it. Readers of the table do not wait for it.
        await conn.execute("LOCK TABLE sites IN SHARE ROW EXCLUSIVE MODE")
        conflict = host_conflict(site, await load_sites(conn))
        if conflict is not None:
            raise InvalidSite(conflict)
        await upsert_site(conn, site)


async def remove_alias(conn: asyncpg.Connection, domain: str, alias: str) -> Site:
    """Remove `alias` from the aliases of site `domain` and return the site as stored.

    Both names are normalised as `weir site add` does, and every stored spelling of the alias is
    removed. Raises InvalidSite, changing nothing, when there is no such site or the alias is not
    one of its aliases. The directory in Redis keeps the alias until publish_sites runs.
    """
    domain_host, alias_host = normalize_host(domain), normalize_host(alias)
    async with conn.transaction():
        # The lock of add_site, so a concurrent add that claims this alias checks it before the
        # removal or after the commit.
        await conn.execute("LOCK TABLE sites IN SHARE ROW EXCLUSIVE MODE")
        sites = await load_sites(conn)
        site = next((item for item in sites if item.domain == domain_host), None)
        if site is None:
            raise InvalidSite(_unknown_site_message(domain, domain_host))
        # Rows written by older versions may contain aliases in another spelling, or values that
        # are not host names at all, so the match is on the normalised value without checking it.
        stored = [item for item in site.aliases if normalize_host(item) == alias_host]
        if not stored:
            raise InvalidSite(_not_an_alias_message(alias, alias_host, site, sites))
        await conn.execute("UPDATE sites SET aliases = array(SELECT a FROM unnest(aliases) AS a WHERE a <> ALL($2)) "
                           "WHERE domain = $1", site.domain, stored)
    return await get_site(conn, site.domain)


def _unknown_site_message(typed: str, host: str) -> str:
    if not is_host_name(host):
        return (f"invalid domain {_abbreviated(typed)!r}: give the domain of a site as `weir site list` "
                "prints it, such as example.com")
    return f"unknown site {host!r}: list sites with `weir site list`"


def _not_an_alias_message(typed: str, host: str, site: Site, sites: list[Site]) -> str:
    if host == site.domain:
        return (f"{host!r} is the domain of site {site.domain!r}, not an alias: a site keeps its domain, so give "
                "one of its aliases")
    if not is_host_name(host):
        return f"invalid alias {_abbreviated(typed)!r}: give a host name such as www.{site.domain}"
    owner = next((item for item in sites if host in {normalize_host(alias) for alias in item.aliases}), None)
    if owner is not None:
        return (f"{host!r} is not an alias of site {site.domain!r} but of site {owner.domain!r}: run "
                f"`weir site remove-alias {owner.domain} {host}`")
    aliases = ", ".join(site.aliases) or "none"
    return f"{host!r} is not an alias of site {site.domain!r}, whose aliases are: {_abbreviated(aliases)}"


async def upsert_site(conn: asyncpg.Connection, site: Site) -> None:
    """Insert `site` or update its time zone and add its aliases."""
    await conn.execute(
        """INSERT INTO sites (domain, timezone, aliases) VALUES ($1, $2, $3)
           ON CONFLICT (domain) DO UPDATE
              SET timezone = EXCLUDED.timezone,
                  aliases = ARRAY(SELECT DISTINCT unnest(sites.aliases || EXCLUDED.aliases))""",
        site.domain, site.timezone, list(site.aliases),
    )


async def load_sites(conn: asyncpg.Connection, oldest_first: bool = False) -> list[Site]:
    """Return every site, by domain, or with `oldest_first` by the time each was added."""
    order = "created_at, domain" if oldest_first else "domain"
    rows = await conn.fetch(f"SELECT domain, timezone, aliases FROM sites ORDER BY {order}")
    return [Site(r["domain"], r["timezone"], tuple(sorted(r["aliases"]))) for r in rows]


async def get_site(conn: asyncpg.Connection, domain: str) -> Site | None:
    row = await conn.fetchrow("SELECT domain, timezone, aliases FROM sites WHERE domain = $1", normalize_host(domain))
    return Site(row["domain"], row["timezone"], tuple(sorted(row["aliases"]))) if row else None


async def find_site(conn: asyncpg.Connection, host: str) -> Site | None:
    """Return the site whose domain or one of whose aliases is `host`, or None when no site claims it.

    Hosts map to sites as in the collector's directory (SiteDirectory.publish): a domain keeps its
    site even where another site lists it as an alias, and an alias that older versions let two
    sites list belongs to the site added first.
    """
    site = await get_site(conn, host)
    if site is not None:
        return site
    normalized = normalize_host(host)
    for site in await load_sites(conn, oldest_first=True):
        # Rows written by older versions may contain aliases in another spelling.
        if any(normalize_host(alias) == normalized for alias in site.aliases):
            return site
    return None


async def publish_sites(conn: asyncpg.Connection, directory: SiteDirectory) -> int:
    """Copy every row of `sites` into the Redis directory the collector reads; return the count.

    A host whose site is in the table but no longer names it (a removed alias) is deleted from the
    directory, and hosts of sites missing from the table stay (see SiteDirectory.publish). Where
    an older version let two sites list the same alias, the site added first keeps it.
    """
    async with conn.transaction():
        # The lock that add_site takes is held until Redis has the copy, so no row changes between
        # the read and the write, and publishes run one at a time. Otherwise a publish that read
        # the rows before a `weir site add` could write after that add's own publish and delete
        # the new site from the directory. Readers of the table do not wait.
        await conn.execute("LOCK TABLE sites IN SHARE ROW EXCLUSIVE MODE")
        sites = await load_sites(conn, oldest_first=True)
        removed = await directory.publish(sites)
    logger.info("site directory published sites=%d hosts_removed=%d", len(sites), len(removed))
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
