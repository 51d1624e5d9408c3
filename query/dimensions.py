"""Dimensions the API can filter and break down by, and the column behind each.

Event dimensions live on `raw_events` (alias `e`); session dimensions on
`session_fingerprints` (alias `s`). Only names from these maps ever reach SQL; values are
always bind parameters.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

MAX_ASN = 4_294_967_295
"""The largest autonomous system number (ASNs are 32-bit, RFC 6793)."""

_ASN = re.compile(r"0|[1-9][0-9]{0,9}")
_COUNTRY = re.compile(r"[A-Z]{2}")
_COUNTRY_PART = re.compile(r"[A-Za-z]{1,2}")
GOVERNMENT_VALUES = ("government", "other")


@dataclass(frozen=True, slots=True)
class ValueFormat:
    """The filter values that can match a dimension, and how the error for any other one reads."""

    accepts: Callable[[str, str], bool]
    """A check called with the operator and one value. False means that no row can hold the value."""
    expected: str
    """The end of the error sentence "NAME takes ...", e.g. "whole numbers such as 13335"."""


def _accepts_asn(op: str, value: str) -> bool:
    # The column is compared as text, so "013335" would never match 13335.
    if op == "contains":
        return value.isascii() and value.isdigit() and len(value) <= 10
    return _ASN.fullmatch(value) is not None and int(value) <= MAX_ASN


def _accepts_country(op: str, value: str) -> bool:
    # `contains` is case-insensitive (ILIKE), but the other operators compare exactly.
    pattern = _COUNTRY_PART if op == "contains" else _COUNTRY
    return pattern.fullmatch(value) is not None


VALUE_FORMATS = {
    "asn": ValueFormat(_accepts_asn, "whole numbers from 0 to 4294967295 without the AS prefix, such as 13335"),
    "country": ValueFormat(_accepts_country, "ISO 3166-1 alpha-2 codes in capitals, such as DE"),
    "government": ValueFormat(lambda _op, value: value in GOVERNMENT_VALUES,
                              "government or other, the values /api/network?dimension=government returns"),
}


@dataclass(frozen=True, slots=True)
class Dimension:
    name: str
    expression: str
    """SQL text of the value, as text, on alias `e` or `s`."""
    level: str
    """"event" (raw_events) or "session" (session_fingerprints)."""
    condition: str | None = None
    """Extra condition an event dimension implies (a page filter only matches pageviews)."""
    value_format: ValueFormat | None = None
    """The values a filter may give. None allows any text that is not empty."""


EVENT_DIMENSIONS = {
    "page": Dimension("page", "e.event_action", "event", "e.event_type = 'pageview'"),
    "event": Dimension("event", "e.event_action", "event", "e.event_type <> 'pageview'"),
}

SESSION_DIMENSIONS = {
    name: Dimension(name, expression, "session", value_format=VALUE_FORMATS.get(name))
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

