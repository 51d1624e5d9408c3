"""Traffic source and medium of a visit, from its Referer header and campaign parameters.

The medium is one of:

| medium     | when                                                              | source            |
|------------|-------------------------------------------------------------------|-------------------|
| `direct`   | no referrer, or one without a host or with a scheme other than http, https and android-app | None |
| `internal` | the referrer is the site itself: its domain or an alias, www or not, any case, any port | None |
| `search`   | a search engine in SEARCH_ENGINES                                 | engine name       |
| `social`   | a social network in SOCIAL_NETWORKS                               | network name      |
| `email`    | a webmail host in WEBMAIL                                         | provider name     |
| `referral` | any other host                                                    | registrable domain |

`internal` is kept apart from `direct` so that the sessionizer can tell a click
inside the site from an arrival. A session whose first event is `internal`
(a tab reopened after the session timed out) counts as direct, as Google
Analytics does with referral exclusions. A subdomain of the site is not the
site: list it among the aliases to make it internal.

The referral source is the registrable domain of the host ("en.wikipedia.org"
gives "wikipedia.org"), by the Public Suffix List of the publicsuffixlist
package with its private section, so "someone.github.io" stays its own source.
`referrer_host` keeps the whole host.

Campaign parameters take precedence over the referrer, following Google
Analytics' channel rules. utm_source and utm_medium, when present, replace the
source and the medium one by one, in their display_utm form ("Newsletter"
becomes "newsletter"). A utm_source without utm_medium keeps the
medium of the referrer, or "(not set)" when the referrer is direct or internal.
Without utm parameters, the click id of an ad platform (CLICK_ID_CHANNELS)
makes the visit that platform's "cpc". An fbclid names Facebook only when the
referrer is missing, because Facebook adds it to ordinary outbound links too.

NOTE: the engine, network and webmail tables below are kept here by hand. No
package on PyPI carries a maintained list: pyreferrer 0.6.6 (2021) and
referer-parser 0.4.1 (2016) ship Snowplow lists that lack, for example,
search.brave.com, startpage.com, x.com, bsky.app and threads.net.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from publicsuffixlist import PublicSuffixList

from streams.sites import normalize_host
from streams.utm import display_utm

logger = logging.getLogger(__name__)

DIRECT = "direct"
INTERNAL = "internal"
SEARCH = "search"
SOCIAL = "social"
EMAIL = "email"
REFERRAL = "referral"
CPC = "cpc"
MEDIUM_NOT_SET = "(not set)"

# Distinct (referrer, site hosts) pairs, and distinct referrer hosts, kept in
# the two classification caches. A distinct referrer costs about 370 bytes in
# them plus the referrer string (measured with tracemalloc on CPython 3.11 over
# the 628 distinct referrers of the test access log), so full caches take an
# estimated 10 MB.
CACHE_SIZE = 20_000


@dataclass(frozen=True, slots=True)
class Referral:
    """The origin of a visit: a source name, a medium, and the referrer's host when it had one."""

    source: str | None
    medium: str
    referrer_host: str | None


NO_REFERRER = Referral(source=None, medium=DIRECT, referrer_host=None)

# A domain matches itself and every subdomain ("search.yahoo.com" matches
# "uk.search.yahoo.com"). The most specific matching domain wins.
SEARCH_ENGINES: dict[str, tuple[str, ...]] = {
    "Bing": ("bing.com",),
    "DuckDuckGo": ("duckduckgo.com",),
    "Yahoo": ("search.yahoo.com", "search.yahoo.co.jp"),
    "Yandex": ("ya.ru",),  # and yandex.<any suffix>, in BRAND_DOMAINS
    "Baidu": ("baidu.com",),
    "Ecosia": ("ecosia.org",),
    "Brave": ("search.brave.com",),
    "Startpage": ("startpage.com", "startpage.nl", "ixquick.com"),
    "Qwant": ("qwant.com",),
    "Naver": ("search.naver.com",),
    "Seznam": ("search.seznam.cz", "seznam.cz"),
    "Daum": ("search.daum.net",),
    "Sogou": ("sogou.com",),
    "360 Search": ("so.com",),
    "Kagi": ("kagi.com",),
    "Mojeek": ("mojeek.com",),
    "Ask": ("ask.com",),
    "AOL": ("search.aol.com",),
    "Coc Coc": ("coccoc.com",),
    "Petal Search": ("petalsearch.com",),
    "Swisscows": ("swisscows.com",),
    "MetaGer": ("metager.org", "metager.de"),
    "Presearch": ("presearch.com",),
    "Yep": ("yep.com",),
    "Dogpile": ("dogpile.com",),
    "Lycos": ("search.lycos.com",),
    "Rambler": ("nova.rambler.ru",),
    "Mail.ru Search": ("go.mail.ru",),
}

SOCIAL_NETWORKS: dict[str, tuple[str, ...]] = {
    "Facebook": ("facebook.com", "fb.com", "fb.me", "messenger.com"),
    "Instagram": ("instagram.com",),
    "Twitter": ("twitter.com", "x.com", "t.co"),
    "LinkedIn": ("linkedin.com", "lnkd.in"),
    "Reddit": ("reddit.com", "redd.it"),
    "YouTube": ("youtube.com", "youtu.be"),
    "Pinterest": ("pin.it",),  # and pinterest.<any suffix>, in BRAND_DOMAINS
    "Hacker News": ("news.ycombinator.com",),
    "TikTok": ("tiktok.com",),
    "Threads": ("threads.net", "threads.com"),
    "Bluesky": ("bsky.app",),
    "VK": ("vk.com", "vk.ru"),
    "Odnoklassniki": ("ok.ru",),
    "Weibo": ("weibo.com", "weibo.cn", "t.cn"),
    "Telegram": ("t.me", "web.telegram.org"),
    "WhatsApp": ("whatsapp.com", "wa.me"),
    "Discord": ("discord.com", "discordapp.com"),
    "Quora": ("quora.com",),
    "Tumblr": ("tumblr.com",),
    "Snapchat": ("snapchat.com",),
    "XING": ("xing.com",),
    "Lobsters": ("lobste.rs",),
    "Slashdot": ("slashdot.org",),
    "Digg": ("digg.com",),
    "Product Hunt": ("producthunt.com",),
    "Douban": ("douban.com",),
    "Zhihu": ("zhihu.com",),
    "LINE": ("line.me",),
    "Flickr": ("flickr.com",),
    "Nextdoor": ("nextdoor.com",),
    # Well-known instances. Others are found by MASTODON_HOST_PREFIXES.
    "Mastodon": (
        "mastodon.social",
        "mastodon.online",
        "mastodon.world",
        "mastodon.cloud",
        "mstdn.social",
        "mstdn.jp",
        "mas.to",
        "fosstodon.org",
        "hachyderm.io",
        "infosec.exchange",
        "techhub.social",
        "universeodon.com",
        "social.vivaldi.net",
        "pawoo.net",
    ),
}

WEBMAIL: dict[str, tuple[str, ...]] = {
    "Outlook.com": (
        "outlook.live.com",
        "outlook.office.com",
        "outlook.office365.com",
        "outlook.cloud.microsoft",
        "mail.live.com",
    ),
    "Yahoo Mail": ("mail.yahoo.com", "mail.yahoo.co.jp"),
    "AOL Mail": ("mail.aol.com",),
    "Proton Mail": ("mail.proton.me", "mail.protonmail.com"),
    "Zoho Mail": ("mail.zoho.com", "mail.zoho.eu", "mail.zoho.in"),
    "Mail.ru": ("e.mail.ru", "touch.mail.ru"),
    "163 Mail": ("mail.163.com",),
    "126 Mail": ("mail.126.com",),
    "QQ Mail": ("mail.qq.com",),
    "Fastmail": ("app.fastmail.com", "www.fastmail.com"),
    # GMX and WEB.DE send links from mail through these redirectors.
    "GMX": ("navigator.gmx.net", "deref-gmx.net", "deref-gmx.com"),
    "WEB.DE": ("navigator.web.de", "deref-web.de", "deref-web-02.de"),
    "Seznam Email": ("email.seznam.cz",),
    "Orange Mail": ("messagerie.orange.fr",),
}


@dataclass(frozen=True, slots=True)
class _Brand:
    """Names for the hosts of one brand under every public suffix, by subdomain ("*" for any other)."""

    by_subdomain: dict[str, tuple[str, str]]


_GOOGLE_SEARCH = ("Google", SEARCH)
_YANDEX_SEARCH = ("Yandex", SEARCH)

# Brands that run the same site under many country suffixes (google.co.uk,
# yandex.com.tr, pinterest.de). The subdomain is what precedes the registrable
# domain, without "www.". A subdomain with no entry and no "*" is a referral.
BRAND_DOMAINS: dict[str, _Brand] = {
    "google": _Brand(
        {
            # Web, image, news and scholar search. Other Google hosts (docs, maps,
            # groups) are referrals from google.com.
            "": _GOOGLE_SEARCH,
            "encrypted": _GOOGLE_SEARCH,
            "images": _GOOGLE_SEARCH,
            "m": _GOOGLE_SEARCH,
            "ipv4": _GOOGLE_SEARCH,
            "ipv6": _GOOGLE_SEARCH,
            "cse": _GOOGLE_SEARCH,
            "news": _GOOGLE_SEARCH,
            "scholar": _GOOGLE_SEARCH,
            "mail": ("Gmail", EMAIL),
            "inbox": ("Gmail", EMAIL),
        }
    ),
    "yandex": _Brand({"*": _YANDEX_SEARCH, "mail": ("Yandex Mail", EMAIL)}),
    "pinterest": _Brand({"*": ("Pinterest", SOCIAL)}),
}

# Instance hosts that start with one of these labels are taken for Mastodon
# ("mastodon.gamedev.place"). A heuristic: a non-Mastodon site named so is
# miscounted as social.
MASTODON_HOST_PREFIXES: tuple[str, ...] = ("mastodon.", "mstdn.")

# Referrers of Android apps arrive as "android-app://<package>".
ANDROID_APPS: dict[str, tuple[str, str]] = {
    "com.google.android.googlequicksearchbox": _GOOGLE_SEARCH,
    "com.google.android.gm": ("Gmail", EMAIL),
    "com.google.android.youtube": ("YouTube", SOCIAL),
    "com.facebook.katana": ("Facebook", SOCIAL),
    "com.facebook.orca": ("Facebook", SOCIAL),
    "com.instagram.android": ("Instagram", SOCIAL),
    "com.twitter.android": ("Twitter", SOCIAL),
    "com.linkedin.android": ("LinkedIn", SOCIAL),
    "com.reddit.frontpage": ("Reddit", SOCIAL),
    "com.pinterest": ("Pinterest", SOCIAL),
    "org.telegram.messenger": ("Telegram", SOCIAL),
    "com.microsoft.office.outlook": ("Outlook.com", EMAIL),
    "com.yahoo.mobile.client.android.mail": ("Yahoo Mail", EMAIL),
}

# Click ids that name a paid channel by themselves, as the platforms' own
# auto-tagging does in their analytics.
CLICK_ID_CHANNELS: dict[str, tuple[str, str]] = {
    "gclid": ("Google", CPC),
    "gbraid": ("Google", CPC),
    "wbraid": ("Google", CPC),
    "dclid": ("Google", CPC),
    "msclkid": ("Bing", CPC),
    "yclid": ("Yandex", CPC),
    "ttclid": ("TikTok", CPC),
    "twclid": ("Twitter", CPC),
    "li_fat_id": ("LinkedIn", CPC),
}


def _index_domains() -> dict[str, tuple[str, str]]:
    index: dict[str, tuple[str, str]] = {}
    for medium, table in ((SEARCH, SEARCH_ENGINES), (SOCIAL, SOCIAL_NETWORKS), (EMAIL, WEBMAIL)):
        for name, domains in table.items():
            for domain in domains:
                if domain in index:
                    raise ValueError(f"referrer domain {domain!r} is listed twice. Keep one entry.")
                index[domain] = (name, medium)
    return index


_KNOWN_DOMAINS = _index_domains()
_WEB_SCHEMES = frozenset({"http", "https", "android-app"})
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
# "example.com:8080/page" has no scheme even though it matches _SCHEME.
_HOST_AND_PORT = re.compile(r"[^/:]+:\d")
_PSL = PublicSuffixList()
# Brand matching uses the ICANN section only, so that "google.blogspot.com"
# (blogspot.com is a private suffix) is not taken for Google.
_PSL_ICANN = PublicSuffixList(only_icann=True)


def classify_referrer(
    referrer: str | None,
    site_hosts: Iterable[str],
    *,
    utm_source: str | None = None,
    utm_medium: str | None = None,
    click_id_name: str | None = None,
) -> Referral:
    """Return the source and medium of a visit.

    :param referrer: the Referer header or document.referrer, as sent; None,
        "" and "-" mean none.
    :param site_hosts: the site's domain and aliases, in any letter case, with
        or without "www." and port.
    :param utm_source: the raw utm_source of the landing URL, if any.
    :param utm_medium: the raw utm_medium of the landing URL, if any.
    :param click_id_name: the first click id parameter of the landing URL, such
        as "gclid" (UtmParams.click_id_name).

    Never raises: a referrer that cannot be parsed counts as direct.
    """
    by_referrer = _classify_referrer_only(referrer, _site_key(site_hosts))

    campaign_source = display_utm(utm_source)
    campaign_medium = display_utm(utm_medium)
    if campaign_source is not None or campaign_medium is not None:
        if campaign_medium is None:
            keeps_medium = by_referrer.medium not in (DIRECT, INTERNAL)
            campaign_medium = by_referrer.medium if keeps_medium else MEDIUM_NOT_SET
        return Referral(
            source=campaign_source if campaign_source is not None else by_referrer.source,
            medium=campaign_medium,
            referrer_host=by_referrer.referrer_host,
        )

    if click_id_name in CLICK_ID_CHANNELS:
        source, medium = CLICK_ID_CHANNELS[click_id_name]
        return Referral(source=source, medium=medium, referrer_host=by_referrer.referrer_host)
    if click_id_name == "fbclid" and by_referrer.medium == DIRECT:
        return Referral(source="Facebook", medium=SOCIAL, referrer_host=None)
    return by_referrer


def referrer_host(referrer: str | None) -> str | None:
    """Return the lower-case host of a referrer without port, or the package of an android-app:// referrer.

    Returns None for a missing referrer, for "-" and for a scheme other than
    http, https and android-app ("about:blank", "file:///..."). A referrer
    without a scheme ("example.com/page", "//example.com/") is read as http.
    """
    if referrer is None:
        return None
    text = referrer.strip()
    if not text or text == "-":
        return None
    if text.startswith("//"):
        text = "http:" + text
    elif not _SCHEME.match(text) or _HOST_AND_PORT.match(text):
        text = "http://" + text
    try:
        parts = urlsplit(text)
        host = parts.hostname
    except ValueError:
        # A malformed IPv6 literal ("http://[::1/") makes urlsplit raise.
        return None
    if parts.scheme not in _WEB_SCHEMES or not host:
        return None
    return host.rstrip(".") or None


def _site_key(site_hosts: Iterable[str]) -> tuple[str, ...] | frozenset[str]:
    if isinstance(site_hosts, (tuple, frozenset)):
        return site_hosts
    return tuple(site_hosts)


@functools.lru_cache(maxsize=CACHE_SIZE)
def _classify_referrer_only(referrer: str | None, site_hosts: tuple[str, ...] | frozenset[str]) -> Referral:
    host = referrer_host(referrer)
    if host is None:
        return NO_REFERRER
    if _without_www(host) in _own_hosts(site_hosts):
        return Referral(source=None, medium=INTERNAL, referrer_host=host)
    if referrer is not None and referrer.lstrip()[:14].lower() == "android-app://":
        source, medium = ANDROID_APPS.get(host, (host, REFERRAL))
        return Referral(source=source, medium=medium, referrer_host=host)

    source, medium = _classify_host(host)
    return Referral(source=source, medium=medium, referrer_host=host)


@functools.lru_cache(maxsize=1_024)
def _own_hosts(site_hosts: tuple[str, ...] | frozenset[str]) -> frozenset[str]:
    return frozenset(_without_www(normalize_host(host)) for host in site_hosts if host.strip())


def _without_www(host: str) -> str:
    return host[4:] if host.startswith("www.") else host


@functools.lru_cache(maxsize=CACHE_SIZE)
def _classify_host(host: str) -> tuple[str, str]:
    known = _known_source(host)
    if known is not None:
        return known
    return registrable_domain(host), REFERRAL


def _known_source(host: str) -> tuple[str, str] | None:
    """Return (name, medium) of a known search engine, social network or webmail host."""
    # Step 1: the host, then each parent domain, so the most specific entry wins.
    labels = host.split(".")
    for start in range(len(labels) - 1):
        known = _KNOWN_DOMAINS.get(".".join(labels[start:]))
        if known is not None:
            return known

    # Step 2: a brand under any public suffix (google.co.uk, yandex.com.tr).
    registrable = _PSL_ICANN.privatesuffix(host)
    if registrable is not None:
        brand = BRAND_DOMAINS.get(registrable.partition(".")[0])
        if brand is not None:
            subdomain = _without_www(host[: -len(registrable)])
            named = brand.by_subdomain.get(subdomain.rstrip("."))
            return named if named is not None else brand.by_subdomain.get("*")

    # Step 3: Mastodon instances outside the list.
    if host.startswith(MASTODON_HOST_PREFIXES):
        return ("Mastodon", SOCIAL)
    return None


def registrable_domain(host: str) -> str:
    """Return the registrable domain of a host ("en.wikipedia.org" gives "wikipedia.org").

    An IP address, a single-label host ("localhost") and a host that is itself
    a public suffix are returned whole.
    """
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    else:
        return host
    return _PSL.privatesuffix(host) or host
