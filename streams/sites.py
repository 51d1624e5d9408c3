"""The directory of known sites in Redis, which the collector reads to accept or reject events.

The `sites` table in PostgreSQL is the record; this hash mirrors it because the collector
talks only to Redis. `weir site add` and `weir site remove-alias` write both, and every processor
start copies the table into the hash again, so a Redis that lost its data learns the sites back.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass, field

import orjson
from redis.asyncio import Redis

from streams.keys import SITES_HASH

logger = logging.getLogger(__name__)

CACHE_TTL_S = 5.0
"""How long a collector trusts its copy of the directory; a new site is accepted within this."""

# KEYS: the directory hash. ARGV: the number of sites N, their N domains, then host, record, host,
# record, ... The script deletes each host that is not in ARGV and whose record names one of the N
# sites, writes the others and returns the deleted hosts. A host of a site that is not among the
# N stays, so a processor started against an empty or wrong database cannot empty the directory
# that collectors read. Redis runs a script atomically, so an HGETALL returns the old directory or
# the new one, never one without a live site. The chunks of 1000 stay below the 8000 values that
# unpack() takes (LUAI_MAXCSTACK in Redis 7.0's Lua).
_PUBLISH_SCRIPT = """
local count = tonumber(ARGV[1])
local listed = {}
for i = 2, count + 1 do
    listed[ARGV[i]] = true
end
local keep = {}
for i = count + 2, #ARGV, 2 do
    keep[ARGV[i]] = true
end
local removed = {}
for _, host in ipairs(redis.call('HKEYS', KEYS[1])) do
    if not keep[host] then
        local ok, record = pcall(cjson.decode, redis.call('HGET', KEYS[1], host))
        if ok and type(record) == 'table' and listed[record['domain']] then
            removed[#removed + 1] = host
        end
    end
end
for i = 1, #removed, 1000 do
    redis.call('HDEL', KEYS[1], unpack(removed, i, math.min(i + 999, #removed)))
end
for i = count + 2, #ARGV, 1000 do
    redis.call('HSET', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
return removed
"""
MAX_LOGGED_HOSTS = 20
"""Maximum number of removed hosts a publish names in its log line; the count covers them all."""


@dataclass(frozen=True, slots=True)
class Site:
    domain: str
    timezone: str = "UTC"
    aliases: tuple[str, ...] = field(default_factory=tuple)

    def hosts(self) -> tuple[str, ...]:
        return (self.domain, *self.aliases)


_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*:")
_AUTHORITY_END = re.compile(r"[/?#]")
_SPECIAL_AUTHORITY_END = re.compile(r"[/\\?#]")
_SPECIAL_SCHEMES = frozenset({"ftp:", "file:", "http:", "https:", "ws:", "wss:"})
"""The WHATWG URL Standard's special schemes, in which a backslash is a path separator like "/"."""
_TAB_OR_NEWLINE = str.maketrans("", "", "\t\n\r")


def normalize_host(host: str) -> str:
    """Return the host name in `host`: lower-cased, without port or trailing dot.

    A URL (`https://example.com/path`, any scheme, or `//example.com`) gives its host, without
    user name or password, and in http, https and the other special schemes the host ends at a
    backslash, so `https://ex.com\\@evil.example` gives `ex.com`, the host a browser reads. IPv6
    literals keep their brackets and colons. Anything else is returned cleaned but not checked, so
    a caller that takes user input must still check the result.
    """
    host = host.strip().lower()
    if "/" in host:
        host = _url_host(host)
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    if host.count(":") == 1:
        # Only a number counts as a port: "http:/example.com" stays whole, to be rejected, rather
        # than becoming the host "http".
        name, _, port = host.partition(":")
        if not port or (port.isascii() and port.isdigit()):
            host = name
    return host.rstrip(".")


def _url_host(value: str) -> str:
    """Return the host and port of URL `value`, or `value` itself when it is not a URL with a host part."""
    # The WHATWG URL parser removes every tab and newline before it reads a URL.
    value = value.translate(_TAB_OR_NEWLINE)
    scheme, slashes, rest = value.partition("//")
    if not slashes or (scheme and not _SCHEME.fullmatch(scheme)):
        return value
    # A browser resolves a scheme-relative URL against its page, which is http or https, so a
    # backslash ends its host too. In other schemes a backslash is part of the authority.
    special = not scheme or scheme in _SPECIAL_SCHEMES
    authority = (_SPECIAL_AUTHORITY_END if special else _AUTHORITY_END).split(rest, maxsplit=1)[0]
    # The last "@" of the authority ends the user name and password, as in the WHATWG parser.
    return authority.rpartition("@")[2]


_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
MAX_HOST_CHARS = 253
MAX_LABEL_CHARS = 63
MAX_LISTED_CHARACTERS = 5
"""Maximum number of distinct invalid characters that host_name_problem names."""


def is_host_name(host: str) -> bool:
    """True for a DNS host name: dot-separated labels of letters, digits and inner hyphens."""
    return 0 < len(host) <= MAX_HOST_CHARS and all(_LABEL.match(label) for label in host.split("."))


def host_name_problem(host: str) -> str | None:
    """Return why `host`, as normalize_host returns it, is not a host name, or None when it is one.

    The reason is a clause that starts with "it", for a message that names the value first. It
    is None exactly when is_host_name is true, so for the names that `weir site add` accepts.
    """
    if not host:
        return "it contains no host name"
    if len(host) > MAX_HOST_CHARS:
        return f"it is longer than {MAX_HOST_CHARS} characters"
    others = sorted({char for char in host if not (char.isascii() and (char.isalnum() or char in ".-"))})
    if others:
        listed = " ".join(repr(char) for char in others[:MAX_LISTED_CHARACTERS])
        punycode = ", so write an internationalised name in its xn-- form" if not host.isascii() else ""
        return f"it contains {listed}, but a host name has only ASCII letters, digits, hyphens and dots{punycode}"
    for label in host.split("."):
        if not label:
            return "it has an empty label: two dots in a row, or a dot at the start"
        if len(label) > MAX_LABEL_CHARS:
            return f"its label {label[:20]!r}... is longer than {MAX_LABEL_CHARS} characters"
        if not _LABEL.match(label):
            return f"its label {label!r} starts or ends with a hyphen"
    return None


class SiteDirectory:
    """Maps a host (a site's domain or one of its aliases) to its site, cached for CACHE_TTL_S."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._sites: dict[str, Site] = {}
        self._normalized_sites: dict[str, Site] = {}
        """The entries of `_sites` whose host is already normalized, so a host sent in that
        form is found without normalizing it again."""
        self._loaded_at = float("-inf")
        self._reload_lock = asyncio.Lock()
        self._publish_script = redis.register_script(_PUBLISH_SCRIPT)

    async def publish(self, sites: list[Site]) -> list[str]:
        """Write `sites` to the Redis hash, each under its domain and every alias; return the hosts removed.

        A host whose record names one of `sites` but that the site no longer names (a removed
        alias) is deleted, in the same atomic step that writes the others. Hosts of sites not in
        `sites` stay. Of two publishes at once the later one wins, so publish_sites runs them
        one at a time.

        Each host maps to one site. A site's domain always maps to that site, even where another
        site lists it as an alias, and an alias listed by two sites goes to the one earlier in
        `sites`. `weir site add` rejects both conflicts, so they come only from rows stored
        before it did, and each is logged as a warning.
        """
        owners = {normalize_host(site.domain): site for site in sites}
        for site in sites:
            for alias in site.aliases:
                host = normalize_host(alias)
                owner = owners.setdefault(host, site)
                if owner.domain == site.domain:
                    continue
                if normalize_host(owner.domain) == host:
                    logger.warning("alias is another site's domain; the domain keeps it host=%s site=%s alias_of=%s",
                                   host, owner.domain, site.domain)
                else:
                    logger.warning("alias is listed by two sites; the first keeps it host=%s site=%s alias_of=%s",
                                   host, owner.domain, site.domain)
        records = {site.domain: orjson.dumps({"domain": site.domain, "timezone": site.timezone,
                                              "aliases": list(site.aliases)}) for site in sites}
        pairs = [value for host, site in owners.items() for value in (host, records[site.domain])]
        args = [len(records), *records, *pairs]
        removed = sorted(host.decode() for host in await self._publish_script(keys=[SITES_HASH], args=args))
        if removed:
            listed = ",".join(removed[:MAX_LOGGED_HOSTS]) + (",..." if len(removed) > MAX_LOGGED_HOSTS else "")
            logger.info("site directory hosts removed count=%d hosts=%s", len(removed), listed)
        self._loaded_at = float("-inf")
        return removed

    def cached_lookup(self, host: str) -> Site | None | bool:
        """Return what `lookup` would, or False when the cached directory is too old to answer."""
        if time.monotonic() - self._loaded_at > CACHE_TTL_S:
            return False
        site = self._normalized_sites.get(host)
        if site is not None:
            return site
        return self._sites.get(normalize_host(host))

    async def lookup(self, host: str) -> Site | None:
        """Return the site that `host` belongs to, or None when no site claims it."""
        if time.monotonic() - self._loaded_at > CACHE_TTL_S:
            # One reload at a time: requests that arrive meanwhile wait for it instead of sending
            # their own HGETALL.
            async with self._reload_lock:
                if time.monotonic() - self._loaded_at > CACHE_TTL_S:
                    await self._reload()
        return self._sites.get(normalize_host(host))

    async def _reload(self) -> None:
        raw = await self._redis.hgetall(SITES_HASH)
        sites = {}
        for host, record in raw.items():
            data = orjson.loads(record)
            sites[host.decode()] = Site(data["domain"], data["timezone"], tuple(data.get("aliases", ())))
        self._sites = sites
        self._normalized_sites = {host: site for host, site in sites.items() if normalize_host(host) == host}
        self._loaded_at = time.monotonic()
