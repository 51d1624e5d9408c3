"""Tests of streams.referrer on the referrers of a real Apache access log and on hand-written cases."""

from __future__ import annotations

import collections
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.referrer import (
    BRAND_DOMAINS,
    DIRECT,
    EMAIL,
    INTERNAL,
    MEDIUM_NOT_SET,
    REFERRAL,
    SEARCH,
    SOCIAL,
    Referral,
    classify_referrer,
    referrer_host,
    registrable_domain,
)
from streams.utm import parse_utm

ACCESS_LOG = Path(__file__).resolve().parents[1] / "data" / "access-logs" / "apache_combined.log"

# The log's site and its alias.
SITE_HOSTS = ("semicomplete.com", "www.semicomplete.com")

# Combined format: the referrer is the second-last quoted field. Line 8899 is
# cut off inside the user agent, so the pattern stops at the quote that opens it.
COMBINED_LINE = re.compile(r'^\S+ \S+ \S+ \[[^\]]*\] "(?:[^"\\]|\\.)*" \d{3} \S+ "((?:[^"\\]|\\.)*)" "')

# Google's web, image and encrypted search hosts as the log spells them,
# matched without streams.referrer's tables to give an independent count.
GOOGLE_SEARCH_HOST = re.compile(r"^(?:www\.|encrypted\.|images\.)?google\.(?:com|co|[a-z]{2})(?:\.[a-z]{2})?$")


@pytest.fixture(scope="module")
def log_referrers() -> list[str]:
    referrers = []
    with ACCESS_LOG.open(encoding="ascii") as log:
        for line in log:
            match = COMBINED_LINE.match(line)
            assert match is not None, f"unparsed line {line[:80]!r}"
            referrers.append(match.group(1))
    return referrers


@pytest.fixture(scope="module")
def log_referrals(log_referrers: list[str]) -> list[Referral]:
    return [classify_referrer(referrer, SITE_HOSTS) for referrer in log_referrers]


def test_log_has_ten_thousand_referrers(log_referrers: list[str]) -> None:
    assert len(log_referrers) == 10_000


def test_log_self_referrals_are_internal(log_referrers: list[str], log_referrals: list[Referral]) -> None:
    own_hosts = collections.Counter(
        urlsplit(referrer).hostname for referrer in log_referrers if referrer != "-"
    )
    assert own_hosts["www.semicomplete.com"] == 3_038
    assert own_hosts["semicomplete.com"] == 2_001

    internal = [referral for referral in log_referrals if referral.medium == INTERNAL]
    assert len(internal) == 5_039
    assert all(referral.source is None for referral in internal)
    assert collections.Counter(referral.referrer_host for referral in internal) == {
        "www.semicomplete.com": 3_038,
        "semicomplete.com": 2_001,
    }


def test_log_missing_referrers_are_direct(log_referrers: list[str], log_referrals: list[Referral]) -> None:
    assert log_referrers.count("-") == 4_073
    direct = [referral for referral in log_referrals if referral.medium == DIRECT]
    assert direct == [Referral(None, DIRECT, None)] * 4_073


def test_log_medium_counts(log_referrals: list[Referral]) -> None:
    assert collections.Counter(referral.medium for referral in log_referrals) == {
        INTERNAL: 5_039,
        DIRECT: 4_073,
        SEARCH: 602,
        REFERRAL: 283,
        SOCIAL: 3,
    }


def test_log_search_and_social_sources(log_referrals: list[Referral]) -> None:
    named = collections.Counter(
        (referral.source, referral.medium) for referral in log_referrals if referral.medium in (SEARCH, SOCIAL)
    )
    assert named == {
        ("Google", SEARCH): 573,
        ("DuckDuckGo", SEARCH): 14,
        ("Bing", SEARCH): 6,
        ("Baidu", SEARCH): 4,
        ("Yandex", SEARCH): 3,
        ("Daum", SEARCH): 2,
        ("Twitter", SOCIAL): 3,
    }


def test_log_google_count_matches_hosts(log_referrers: list[str], log_referrals: list[Referral]) -> None:
    google_hosts = [
        referrer
        for referrer in log_referrers
        if referrer != "-" and GOOGLE_SEARCH_HOST.match(urlsplit(referrer).hostname or "")
    ]
    classified = [referral for referral in log_referrals if referral.source == "Google"]
    assert len(google_hosts) == 573
    assert len(classified) == len(google_hosts)
    assert {referral.medium for referral in classified} == {SEARCH}


def test_log_referral_sources(log_referrals: list[Referral]) -> None:
    sources = collections.Counter(referral.source for referral in log_referrals if referral.medium == REFERRAL)
    assert sources["s-chassis.co.nz"] == 51  # 29 from the apex, 22 from www
    assert sources["stackoverflow.com"] == 34
    assert sources["wikipedia.org"] == 12  # en., es. and de.wikipedia.org
    assert sources["google.com"] == 0  # translate.googleusercontent.com is not google.com
    assert sources["googleusercontent.com"] == 2
    assert sources["kufli.blogspot.com"] == 10  # blogspot.com is a public suffix
    assert sources["z0mbix.github.io"] == 1  # so is github.io
    assert len(sources) == 74


@pytest.mark.parametrize(
    ("referrer", "expected"),
    [
        ("https://www.google.co.uk/", Referral("Google", SEARCH, "www.google.co.uk")),
        ("https://www.google.com.br/url?q=x", Referral("Google", SEARCH, "www.google.com.br")),
        ("https://encrypted.google.com/", Referral("Google", SEARCH, "encrypted.google.com")),
        ("https://docs.google.com/document/d/1", Referral("google.com", REFERRAL, "docs.google.com")),
        ("https://mail.google.com/mail/u/0/", Referral("Gmail", EMAIL, "mail.google.com")),
        ("https://www.bing.com/search?q=weir", Referral("Bing", SEARCH, "www.bing.com")),
        ("https://duckduckgo.com/", Referral("DuckDuckGo", SEARCH, "duckduckgo.com")),
        ("https://uk.search.yahoo.com/search?p=x", Referral("Yahoo", SEARCH, "uk.search.yahoo.com")),
        ("https://mail.yahoo.com/d/folders/1", Referral("Yahoo Mail", EMAIL, "mail.yahoo.com")),
        ("https://yandex.com.tr/search/?text=x", Referral("Yandex", SEARCH, "yandex.com.tr")),
        ("https://mail.yandex.ru/", Referral("Yandex Mail", EMAIL, "mail.yandex.ru")),
        ("https://ya.ru/", Referral("Yandex", SEARCH, "ya.ru")),
        ("https://www.baidu.com/link?url=x", Referral("Baidu", SEARCH, "www.baidu.com")),
        ("https://www.ecosia.org/search?q=x", Referral("Ecosia", SEARCH, "www.ecosia.org")),
        ("https://search.brave.com/search?q=x", Referral("Brave", SEARCH, "search.brave.com")),
        ("https://brave.com/download/", Referral("brave.com", REFERRAL, "brave.com")),
        ("https://www.startpage.com/", Referral("Startpage", SEARCH, "www.startpage.com")),
        ("https://m.search.naver.com/search.naver?query=x", Referral("Naver", SEARCH, "m.search.naver.com")),
        ("https://search.seznam.cz/?q=x", Referral("Seznam", SEARCH, "search.seznam.cz")),
        ("https://email.seznam.cz/", Referral("Seznam Email", EMAIL, "email.seznam.cz")),
        ("https://m.facebook.com/", Referral("Facebook", SOCIAL, "m.facebook.com")),
        ("https://l.facebook.com/l.php?u=x", Referral("Facebook", SOCIAL, "l.facebook.com")),
        ("https://lm.facebook.com/l.php?u=x", Referral("Facebook", SOCIAL, "lm.facebook.com")),
        ("https://t.co/abc", Referral("Twitter", SOCIAL, "t.co")),
        ("https://x.com/someone/status/1", Referral("Twitter", SOCIAL, "x.com")),
        ("https://www.linkedin.com/feed/", Referral("LinkedIn", SOCIAL, "www.linkedin.com")),
        ("https://lnkd.in/abc", Referral("LinkedIn", SOCIAL, "lnkd.in")),
        ("https://old.reddit.com/r/python/", Referral("Reddit", SOCIAL, "old.reddit.com")),
        ("https://www.youtube.com/watch?v=x", Referral("YouTube", SOCIAL, "www.youtube.com")),
        ("https://l.instagram.com/?u=x", Referral("Instagram", SOCIAL, "l.instagram.com")),
        ("https://www.pinterest.co.uk/pin/1/", Referral("Pinterest", SOCIAL, "www.pinterest.co.uk")),
        ("https://news.ycombinator.com/item?id=1", Referral("Hacker News", SOCIAL, "news.ycombinator.com")),
        ("https://ycombinator.com/", Referral("ycombinator.com", REFERRAL, "ycombinator.com")),
        ("https://mastodon.social/@someone", Referral("Mastodon", SOCIAL, "mastodon.social")),
        ("https://mastodon.gamedev.place/@x", Referral("Mastodon", SOCIAL, "mastodon.gamedev.place")),
        ("https://bsky.app/profile/x", Referral("Bluesky", SOCIAL, "bsky.app")),
        ("https://outlook.live.com/mail/0/", Referral("Outlook.com", EMAIL, "outlook.live.com")),
        ("https://en.wikipedia.org/wiki/Log", Referral("wikipedia.org", REFERRAL, "en.wikipedia.org")),
        ("https://someone.github.io/post", Referral("someone.github.io", REFERRAL, "someone.github.io")),
        ("https://google.blogspot.com/", Referral("google.blogspot.com", REFERRAL, "google.blogspot.com")),
        ("https://www.google.evil.example/", Referral("evil.example", REFERRAL, "www.google.evil.example")),
        ("https://blog.example.co.uk/post", Referral("example.co.uk", REFERRAL, "blog.example.co.uk")),
        ("http://203.0.113.7:8080/x", Referral("203.0.113.7", REFERRAL, "203.0.113.7")),
        ("http://[2001:db8::1]/x", Referral("2001:db8::1", REFERRAL, "2001:db8::1")),
        ("http://localhost:3000/", Referral("localhost", REFERRAL, "localhost")),
        ("android-app://com.google.android.gm/", Referral("Gmail", EMAIL, "com.google.android.gm")),
        (
            "android-app://com.google.android.googlequicksearchbox/https/www.google.com",
            Referral("Google", SEARCH, "com.google.android.googlequicksearchbox"),
        ),
        ("android-app://com.slack/", Referral("com.slack", REFERRAL, "com.slack")),
    ],
)
def test_known_referrers(referrer: str, expected: Referral) -> None:
    assert classify_referrer(referrer, SITE_HOSTS) == expected


@pytest.mark.parametrize(
    "referrer",
    [
        "http://semicomplete.com/",
        "https://www.semicomplete.com/blog/",
        "https://WWW.SemiComplete.COM/x",
        "https://semicomplete.com:8443/x",
        "https://www.semicomplete.com./x",
        "semicomplete.com/page",
        "semicomplete.com:8080/page",
        "//www.semicomplete.com/",
    ],
)
def test_self_referral_spellings_are_internal(referrer: str) -> None:
    referral = classify_referrer(referrer, ("SemiComplete.com",))
    assert referral.medium == INTERNAL
    assert referral.source is None


def test_site_alias_is_internal() -> None:
    referral = classify_referrer("https://shop.example.org/cart", ["example.com", "Shop.Example.org:443"])
    assert referral == Referral(None, INTERNAL, "shop.example.org")


def test_site_subdomain_is_not_internal() -> None:
    referral = classify_referrer("https://blog.semicomplete.com/", SITE_HOSTS)
    assert referral == Referral("semicomplete.com", REFERRAL, "blog.semicomplete.com")


@pytest.mark.parametrize(
    "referrer",
    [None, "", "   ", "-", "about:blank", "file:///home/x.html", "chrome-extension://abc/", "mailto:a@b.c", "http://[::1/"],
)
def test_referrer_without_host_is_direct(referrer: str | None) -> None:
    assert classify_referrer(referrer, SITE_HOSTS) == Referral(None, DIRECT, None)


def test_referrer_host_drops_userinfo_and_port() -> None:
    assert referrer_host("http://user:pw@Host.Example.org:81/x") == "host.example.org"


def test_utm_overrides_referrer() -> None:
    referral = classify_referrer(
        "https://www.google.com/", SITE_HOSTS, utm_source="Newsletter", utm_medium=" Email "
    )
    assert referral == Referral("newsletter", "email", "www.google.com")


def test_utm_source_keeps_referrer_medium() -> None:
    referral = classify_referrer("https://mail.google.com/", SITE_HOSTS, utm_source="spring+sale")
    assert referral == Referral("spring sale", EMAIL, "mail.google.com")


def test_utm_source_without_referrer_medium_not_set() -> None:
    assert classify_referrer(None, SITE_HOSTS, utm_source="partner") == Referral("partner", MEDIUM_NOT_SET, None)
    internal = classify_referrer("https://semicomplete.com/", SITE_HOSTS, utm_source="partner")
    assert internal == Referral("partner", MEDIUM_NOT_SET, "semicomplete.com")


def test_utm_medium_keeps_referrer_source() -> None:
    referral = classify_referrer("https://t.co/x", SITE_HOSTS, utm_medium="paid-social")
    assert referral == Referral("Twitter", "paid-social", "t.co")


def test_blank_utm_values_are_ignored() -> None:
    referral = classify_referrer("https://t.co/x", SITE_HOSTS, utm_source="  ", utm_medium="")
    assert referral == Referral("Twitter", SOCIAL, "t.co")


def test_gclid_makes_google_cpc() -> None:
    referral = classify_referrer("https://www.google.com/", SITE_HOSTS, click_id_name="gclid")
    assert referral == Referral("Google", "cpc", "www.google.com")


def test_utm_wins_over_click_id() -> None:
    referral = classify_referrer(None, SITE_HOSTS, utm_source="google", utm_medium="cpc", click_id_name="msclkid")
    assert referral == Referral("google", "cpc", None)


def test_fbclid_names_facebook_only_when_direct() -> None:
    assert classify_referrer(None, SITE_HOSTS, click_id_name="fbclid") == Referral("Facebook", SOCIAL, None)
    from_reddit = classify_referrer("https://www.reddit.com/", SITE_HOSTS, click_id_name="fbclid")
    assert from_reddit == Referral("Reddit", SOCIAL, "www.reddit.com")


def test_landing_url_campaign_end_to_end() -> None:
    utm = parse_utm("https://semicomplete.com/?utm_source=HN&utm_medium=Social&gclid=abc")
    referral = classify_referrer(
        "https://news.ycombinator.com/",
        SITE_HOSTS,
        utm_source=utm.source,
        utm_medium=utm.medium,
        click_id_name=utm.click_id_name,
    )
    assert referral == Referral("hn", "social", "news.ycombinator.com")


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("en.wikipedia.org", "wikipedia.org"),
        ("www.example.co.uk", "example.co.uk"),
        ("co.uk", "co.uk"),
        ("localhost", "localhost"),
        ("8.8.8.8", "8.8.8.8"),
        ("a.b.github.io", "b.github.io"),
    ],
)
def test_registrable_domain_cases(host: str, expected: str) -> None:
    assert registrable_domain(host) == expected


def test_brand_tables_use_bare_subdomains() -> None:
    for brand in BRAND_DOMAINS.values():
        for subdomain in brand.by_subdomain:
            assert not subdomain.startswith("www"), subdomain
            assert not subdomain.endswith("."), subdomain


@given(st.text(max_size=200))
def test_classify_never_raises(referrer: str) -> None:
    referral = classify_referrer(referrer, SITE_HOSTS)
    assert referral.medium in (DIRECT, INTERNAL, SEARCH, SOCIAL, EMAIL, REFERRAL)


@given(st.from_regex(r"https?://[a-zA-Z0-9.\-\[\]:@%]{0,40}/?[ -~]{0,40}", fullmatch=True))
def test_classify_url_like_never_raises(referrer: str) -> None:
    referral = classify_referrer(referrer, SITE_HOSTS)
    assert (referral.referrer_host is None) == (referral.medium == DIRECT)
