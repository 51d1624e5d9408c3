"""Enrichment: pure functions from stream events to what the sinks store beside them.

The client address is read here, for location and network owner, and goes no further: the
sinks receive the derived fields, never the address.
"""

from __future__ import annotations

from dataclasses import dataclass

from streams.bots import BotDetector
from streams.event import Event
from streams.fingerprint import VisitorNetwork
from streams.geo import GeoLookup
from streams.network import NetworkLookup


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

    def enrich(self, event: Event) -> Enrichment:
        """Return what the processor derives from one event alone."""
        is_bot = self.bots.is_bot(event.user_agent)
        if not event.ip:
            return Enrichment(is_bot=is_bot)
        place = self.geo.lookup(event.ip)
        owner = self.network.lookup(event.ip, is_bot=is_bot)
        return Enrichment(is_bot=is_bot, network=VisitorNetwork(
            country=place.country, region=place.region, city=place.city, asn=owner.asn, org=owner.org,
            org_type=owner.org_type, is_government=owner.is_government, response_tier=owner.response_tier))
