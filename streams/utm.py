"""Campaign parameters of a page URL: the five utm_* values and the ad platforms' click ids.

Parameter names match case-insensitively ("UTM_Source" counts), and the first
non-empty occurrence of a name wins. Values are kept as sent, decoded once as a
form value ("+" and "%20" become spaces). `display_utm` folds the spellings of
one value into the key that reports group by.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from streams.paths import decode_path

UTM_PARAMS: tuple[str, ...] = ("utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content")

# Click ids that ad and social platforms append to the landing URL.
CLICK_ID_PARAMS: tuple[str, ...] = (
    "gclid",  # Google Ads
    "gbraid",  # Google Ads, iOS app-to-web
    "wbraid",  # Google Ads, iOS web-to-app
    "dclid",  # Google Display & Video 360 / Campaign Manager
    "msclkid",  # Microsoft Advertising
    "fbclid",  # Facebook and Instagram, on ads and on ordinary outbound links
    "ttclid",  # TikTok Ads
    "twclid",  # X (Twitter) Ads
    "li_fat_id",  # LinkedIn Ads
    "yclid",  # Yandex Direct
)

_CAMPAIGN_PARAM_NAMES = frozenset(UTM_PARAMS + CLICK_ID_PARAMS)
_WHITESPACE_RUN = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class UtmParams:
    """The campaign parameters of one URL, each field None when the URL lacks it or it is empty."""

    source: str | None = None
    medium: str | None = None
    campaign: str | None = None
    term: str | None = None
    content: str | None = None
    click_ids: tuple[tuple[str, str], ...] = ()
    """(parameter name, value) pairs in the order of CLICK_ID_PARAMS."""

    @property
    def click_id_name(self) -> str | None:
        """The parameter name of the first click id, such as "gclid", or None."""
        return self.click_ids[0][0] if self.click_ids else None

    def is_empty(self) -> bool:
        return not self.click_ids and not any((self.source, self.medium, self.campaign, self.term, self.content))


NO_UTM = UtmParams()


def parse_utm(url: str | None) -> UtmParams:
    """Parse the utm_* parameters and click ids from the query string of `url`.

    `url` may be absolute, a path with a query, or a bare query string that
    starts with "?". Returns NO_UTM when there is nothing to find. Never
    raises: a malformed URL or escape is read as far as it goes.
    """
    if not url or "?" not in url:
        return NO_UTM
    query = _query_of(url)
    if not query:
        return NO_UTM

    found: dict[str, str] = {}
    for pair in query.split("&"):
        name, _, value = pair.partition("=")
        name = _decode_form(name).strip().lower()
        if name not in _CAMPAIGN_PARAM_NAMES or name in found:
            continue
        value = _decode_form(value).strip()
        if value:
            found[name] = value

    if not found:
        return NO_UTM
    return UtmParams(
        source=found.get("utm_source"),
        medium=found.get("utm_medium"),
        campaign=found.get("utm_campaign"),
        term=found.get("utm_term"),
        content=found.get("utm_content"),
        click_ids=tuple((name, found[name]) for name in CLICK_ID_PARAMS if name in found),
    )


def display_utm(value: str | None) -> str | None:
    """Return the grouping key of a utm value: lower-case, trimmed, with "+" and escapes decoded.

    "Spring+Sale", "spring%20sale" and " SPRING  SALE " all become
    "spring sale". Runs of whitespace collapse to one space. Returns None for
    None or a value that is empty after trimming.

    NOTE: a value that was already decoded is decoded again, so a literal "+"
    in it ("c++") becomes a space, as it would in any form-encoded query.
    """
    if value is None:
        return None
    decoded = _decode_form(value)
    folded = _WHITESPACE_RUN.sub(" ", decoded).strip().lower()
    return folded or None


def _query_of(url: str) -> str:
    if url.startswith("?"):
        return url[1:].split("#", 1)[0]
    try:
        return urlsplit(url).query
    except ValueError:
        # urlsplit rejects a malformed IPv6 host, but the query still follows the first "?".
        return url.split("?", 1)[1].split("#", 1)[0]


def _decode_form(text: str) -> str:
    return decode_path(text.replace("+", " "))
