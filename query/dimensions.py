"""Dimensions the API can filter and break down by, and the column behind each.

Event dimensions live on `raw_events` (alias `e`); session dimensions on
`session_fingerprints` (alias `s`). Only names from these maps ever reach SQL; values are
always bind parameters.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Dimension:
    name: str
    expression: str
    """SQL text of the value, as text, on alias `e` or `s`."""
    level: str
    """"event" (raw_events) or "session" (session_fingerprints)."""
    condition: str | None = None
    """Extra condition an event dimension implies (a page filter only matches pageviews)."""


EVENT_DIMENSIONS = {
    "page": Dimension("page", "e.event_action", "event", "e.event_type = 'pageview'"),
    "event": Dimension("event", "e.event_action", "event", "e.event_type <> 'pageview'"),
}

SESSION_DIMENSIONS = {
    name: Dimension(name, expression, "session")
    for name, expression in {
        "entry_page": "s.entry_page",
        "exit_page": "s.exit_page",
        "source": "coalesce(s.source, 'Direct')",
        "channel": "s.medium",
        "referrer": "s.referrer_host",
        "utm_source": "s.utm_source",
        "utm_medium": "s.utm_medium",
        "utm_campaign": "s.utm_campaign",
        "utm_term": "s.utm_term",
        "utm_content": "s.utm_content",
        "country": "s.country",
        "region": "s.region",
        "city": "s.city",
        "browser": "s.browser",
        "os": "s.os",
        "device": "s.device_type",
        "screen": "s.screen_size",
        "asn": "s.asn::text",
        "org": "s.org",
        "org_type": 's."orgType"',
        "response_tier": 's."responseTier"',
        "government": 'CASE WHEN s."isGovernment" THEN \'government\' ELSE \'other\' END',
    }.items()
}

DIMENSIONS = {**EVENT_DIMENSIONS, **SESSION_DIMENSIONS}

TRAFFIC = ("channel", "source", "referrer", "utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content")
AUDIENCE = ("country", "region", "city", "browser", "os", "device", "screen")
NETWORK = ("asn", "org", "org_type", "response_tier", "government")

