"""Enrichment: pure functions from stream events to what the sinks store beside them.

The client address is read here, for location and network owner, and goes no further: the
sinks receive the derived fields, never the address.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from streams.bots import BotDetector
from streams.event import Event
from streams.fingerprint import VisitorNetwork
from streams.geo import GeoLookup
from streams.network import NetworkLookup, public_address

# Distinct (address, user agent) pairs whose enrichment is kept. An entry costs about 300 bytes
# plus the two strings (measured with tracemalloc on CPython 3.11), so with 150-character user
# agents a full cache takes an estimated 25 MB.
CACHE_SIZE = 50_000
# Distinct addresses whose location and network owner are kept, as the VisitorNetwork of a human and
# of a bot client. An address with several user agents (a household, an office, a crawler's pool) is
# then parsed and looked up once. Entries share their objects with the lookups' row caches, so an
# entry costs about the 200 bytes of the key, the tuple and the cache's link (an estimate).
ADDRESS_CACHE_SIZE = 100_000


@dataclass(frozen=True, slots=True)
class Enrichment:
    is_bot: bool
    network: VisitorNetwork | None = None


class Enricher:
    """Holds the per-process lookups (bot lists, IP databases) and their caches."""

    def __init__(self, bots: BotDetector | None = None, geo: GeoLookup | None = None,
                 network: NetworkLookup | None = None) -> None:
        self.bots = bots or BotDetector()
        self.geo = geo or GeoLookup()
        self.network = network or NetworkLookup()
        # The result depends on the address and the user agent alone, which a visitor sends with every
        # event. So a visitor's later events cost one cache lookup instead of three and two new objects.
        self._enrich_cached = functools.lru_cache(maxsize=CACHE_SIZE)(self._enrich)
        self._networks_cached = functools.lru_cache(maxsize=ADDRESS_CACHE_SIZE)(self._networks)

    def enrich(self, event: Event) -> Enrichment:
        """Return what the processor derives from one event alone."""
        return self._enrich_cached(event.ip, event.user_agent)

    def _enrich(self, ip: str | None, user_agent: str | None) -> Enrichment:
        is_bot = self.bots.is_bot(user_agent)
        if not ip:
            return Enrichment(is_bot=is_bot)
        human, bot = self._networks_cached(ip)
        return Enrichment(is_bot=is_bot, network=bot if is_bot else human)

    def _networks(self, ip: str) -> tuple[VisitorNetwork, VisitorNetwork]:
        """Return the VisitorNetwork of a human and of a bot client at `ip`, parsing the address once."""
        address = public_address(ip)
        place = self.geo.lookup_address(address)
        owners = self.network.lookup_address(address)
        return tuple(VisitorNetwork(
            country=place.country, region=place.region, city=place.city, asn=owner.asn, org=owner.org,
            org_type=owner.org_type, is_government=owner.is_government, response_tier=owner.response_tier)
            for owner in owners)
