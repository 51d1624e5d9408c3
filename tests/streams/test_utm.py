"""Tests of streams.utm (campaign parameters) and of streams.paths.decode_path, which it decodes with."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.paths import decode_path
from streams.utm import CLICK_ID_PARAMS, NO_UTM, UtmParams, display_utm, parse_utm

ACCESS_LOG = Path(__file__).resolve().parents[1] / "data" / "access-logs" / "apache_combined.log"

# The request line is the first quoted field of the combined format.
REQUEST_LINE = re.compile(r'^\S+ \S+ \S+ \[[^\]]*\] "((?:[^"\\]|\\.)*)"')


# parse_utm


def test_parse_all_utm_fields() -> None:
    utm = parse_utm(
        "https://example.com/landing?utm_source=Google&utm_medium=cpc&utm_campaign=Spring+Sale"
        "&utm_term=running%20shoes&utm_content=banner-1#top"
    )
    assert utm == UtmParams(
        source="Google",
        medium="cpc",
        campaign="Spring Sale",
        term="running shoes",
        content="banner-1",
    )


def test_parse_click_ids_in_table_order() -> None:
    url = "/p?fbclid=F1&ttclid=T1&gclid=G1&twclid=W1&li_fat_id=L1&dclid=D1&gbraid=B1&wbraid=R1&yclid=Y1&msclkid=M1"
    utm = parse_utm(url)
    assert utm.click_ids == (
        ("gclid", "G1"),
        ("gbraid", "B1"),
        ("wbraid", "R1"),
        ("dclid", "D1"),
        ("msclkid", "M1"),
        ("fbclid", "F1"),
        ("ttclid", "T1"),
        ("twclid", "W1"),
        ("li_fat_id", "L1"),
        ("yclid", "Y1"),
    )
    assert [name for name, _ in utm.click_ids] == list(CLICK_ID_PARAMS)
    assert utm.click_id_name == "gclid"
    assert utm.source is None


def test_parse_names_case_insensitive() -> None:
    utm = parse_utm("https://example.com/?UTM_Source=News&Utm_Medium=Email&GCLID=abc")
    assert utm == UtmParams(source="News", medium="Email", click_ids=(("gclid", "abc"),))


def test_parse_first_nonempty_value_wins() -> None:
    utm = parse_utm("https://example.com/?utm_source=&utm_source=%20&utm_source=first&utm_source=second")
    assert utm.source == "first"


def test_parse_keeps_value_case_and_trims() -> None:
    assert parse_utm("/?utm_campaign=%20Black%20Friday%20").campaign == "Black Friday"


def test_parse_invalid_escapes_kept() -> None:
    utm = parse_utm("/?utm_source=50%25off&utm_medium=%zz&utm_campaign=%E2%82&utm_term=caf%C3%A9")
    assert utm == UtmParams(source="50%off", medium="%zz", campaign="%E2%82", term="café")


def test_parse_bare_query_string() -> None:
    assert parse_utm("?utm_source=x&gclid=y") == UtmParams(source="x", click_ids=(("gclid", "y"),))


def test_parse_ignores_fragment_parameters() -> None:
    assert parse_utm("https://example.com/#?utm_source=x") is NO_UTM


@pytest.mark.parametrize(
    "url",
    [None, "", "https://example.com/", "https://example.com/?", "/?q=1&page=2", "/?utm_source=", "/?gclid"],
)
def test_parse_without_campaign(url: str | None) -> None:
    utm = parse_utm(url)
    assert utm is NO_UTM
    assert utm.is_empty()
    assert utm.click_id_name is None


def test_parse_malformed_host_still_reads_query() -> None:
    assert parse_utm("http://[::1/?utm_source=x").source == "x"


@given(st.text(max_size=300))
def test_parse_never_raises(url: str) -> None:
    parse_utm(url)
    parse_utm("https://example.com/?" + url)


# display_utm


@pytest.mark.parametrize(
    "spelling",
    ["Spring Sale", "spring+sale", "Spring%20Sale", "  SPRING   SALE ", "spring%20%20sale", "Spring\tSale"],
)
def test_display_groups_spellings(spelling: str) -> None:
    assert display_utm(spelling) == "spring sale"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("   ", None),
        ("+", None),
        ("Google", "google"),
        ("%C3%89t%C3%A9", "été"),
        ("ÉTÉ", "été"),
        ("50%25off", "50%off"),
        ("%zz", "%zz"),
        ("c++", "c"),  # a literal "+" is a space in a form value
    ],
)
def test_display_cases(value: str | None, expected: str | None) -> None:
    assert display_utm(value) == expected


# decode_path


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/plain/path", "/plain/path"),
        ("/a%20b", "/a b"),
        ("/a%2520b", "/a%20b"),  # decoded once, never twice
        ("/caf%C3%A9", "/café"),
        ("/caf%c3%a9", "/café"),
        ("/%F0%9F%98%80", "/😀"),
        ("/%zz", "/%zz"),
        ("/100%", "/100%"),
        ("/%4", "/%4"),
        ("/%%41", "/%A"),
        ("/%E2%82", "/%E2%82"),  # truncated three-byte sequence
        ("/%e2%82x", "/%e2%82x"),  # kept with its original letter case
        ("/caf%C3%A9%E2%82", "/café%E2%82"),  # valid escapes before an invalid one still decode
        ("/%C3%A9%E2%82%AC%E2%82", "/é€%E2%82"),
        ("/%E8%F1%EF", "/%E8%F1%EF"),  # Windows-1251 bytes, not UTF-8
        ("/%ED%A0%80", "/%ED%A0%80"),  # an encoded surrogate is invalid UTF-8
        ("/%C0%AF", "/%C0%AF"),  # an overlong "/" is invalid UTF-8
        ("/a%00b", "/a%00b"),  # control characters stay encoded
        ("/a%09b%0A%7F", "/a%09b%0A%7F"),
        ("/%2F%3F%23", "//?#"),  # reserved characters decode too: the result is for display
    ],
)
def test_decode_path_cases(path: str, expected: str) -> None:
    assert decode_path(path) == expected


def test_decode_path_on_real_log() -> None:
    targets = []
    with ACCESS_LOG.open(encoding="ascii") as log:
        for line in log:
            match = REQUEST_LINE.match(line)
            assert match is not None
            if "%" in match.group(1):
                parts = match.group(1).split(" ")
                targets.append(parts[1] if len(parts) > 1 else parts[0])
    assert len(targets) == 153

    paths = [target.split("?", 1)[0] for target in targets]
    decoded = [decode_path(path) for path in paths]
    assert sum(1 for path, result in zip(paths, decoded) if result != path) == 62
    # Still holding a "%": "%25" decoded to "%", the Windows-1251 escapes and "%09".
    assert sum(1 for result in decoded if "%" in result) == 4
    assert "/blog/geekery…" in decoded
    assert "/misc/wendy/recipes/Caramel Rum Sauce.doc" in decoded
    assert "/files/logstash/logstash-%" in decoded
    assert "/presentations/vim/%094" in decoded


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=100))
def test_decode_path_inverts_quote(text: str) -> None:
    assert decode_path(quote(text, safe="")) == text


@given(st.text(alphabet=st.sampled_from("%aF09zé/ +\x00"), max_size=60))
def test_decode_path_never_raises(path: str) -> None:
    decoded = decode_path(path)
    assert decoded == path or "%" in path
