"""Enrichment: pure functions from stream events to what the sinks store beside them."""

from __future__ import annotations

from dataclasses import dataclass

from streams.bots import BotDetector
from streams.event import Event
from streams.fingerprint import VisitorNetwork


@dataclass(frozen=True, slots=True)
class Enrichment:
    is_bot: bool
    network: VisitorNetwork | None = None


def enrich(event: Event, bots: BotDetector) -> Enrichment:
    """Return what the processor derives from one event alone."""
    return Enrichment(is_bot=bots.is_bot(event.user_agent))
