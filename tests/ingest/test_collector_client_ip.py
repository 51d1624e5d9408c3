"""The client address: forwarded headers believed only from TRUSTED_PROXIES, IPv6 kept whole."""

from __future__ import annotations

import pytest

from ingest.client_ip import client_ip, forwarded_chain, parse_ip, parse_networks
from tests.ingest.conftest import stream_events

PROXIES = parse_networks("10.0.0.0/8, 2001:db8:ffff::/48, 127.0.0.1")


@pytest.mark.parametrize("text, expected", [
    ("192.0.2.1", "192.0.2.1"),
    ("192.0.2.1:8080", "192.0.2.1"),
    ("2001:db8::1", "2001:db8::1"),
    ("2001:0db8:0000:0000:0000:0000:0000:0001", "2001:db8::1"),
    ("[2001:db8::1]", "2001:db8::1"),
    ("[2001:db8::1]:4711", "2001:db8::1"),
    ('"[2001:db8:cafe::17]:4711"', "2001:db8:cafe::17"),
    ("fe80::1%eth0", "fe80::1"),
    ("[fe80::1%25eth0]:80", "fe80::1"),
    ("::ffff:192.0.2.9", "192.0.2.9"),
    ("[::ffff:c000:209]:1", "192.0.2.9"),
    ("::1", "::1"),
    ("2001:db8:85a3:8d3:1319:8a2e:370:7348", "2001:db8:85a3:8d3:1319:8a2e:370:7348"),
    ("  198.51.100.4  ", "198.51.100.4"),
])
def test_parse_ip_forms(text, expected):
    assert str(parse_ip(text)) == expected


@pytest.mark.parametrize("text", ["", None, "unknown", "_hidden", "example.com", "300.1.1.1", "[::1", "1.2.3"])
def test_parse_ip_rejects_non_addresses(text):
    assert parse_ip(text) is None


def test_forwarded_chain_reads_rfc7239():
    header = 'for=192.0.2.43, for="[2001:db8:cafe::17]:4711";proto=https, For=198.51.100.17;by=203.0.113.60'

    assert forwarded_chain(header, "1.1.1.1") == ["192.0.2.43", '"[2001:db8:cafe::17]:4711"', "198.51.100.17"]


def test_forwarded_wins_over_x_forwarded_for():
    assert client_ip("10.0.0.1", "for=192.0.2.5", "198.51.100.1", PROXIES) == "192.0.2.5"


def test_untrusted_peer_headers_ignored():
    assert client_ip("203.0.113.5", None, "192.0.2.1", PROXIES) == "203.0.113.5"
    assert client_ip("203.0.113.5", "for=192.0.2.1", None, PROXIES) == "203.0.113.5"


def test_no_trusted_proxies_ignores_headers():
    assert client_ip("10.0.0.1", None, "192.0.2.1", ()) == "10.0.0.1"


def test_chain_walked_from_right_past_trusted_hops():
    # client, then a spoofed entry the client wrote itself, then two of our proxies
    header = "6.6.6.6, 192.0.2.77, 10.1.1.1, 10.2.2.2"

    assert client_ip("10.0.0.1", None, header, PROXIES) == "192.0.2.77"


def test_ipv6_client_behind_ipv6_proxy_kept_whole():
    header = "2001:db8:1234:5678:9abc:def0:1234:5678"

    assert client_ip("2001:db8:ffff::2", None, header, PROXIES) == "2001:db8:1234:5678:9abc:def0:1234:5678"


def test_ipv6_client_in_forwarded_kept_whole():
    header = 'for="[2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff]:51000"'

    assert client_ip("[2001:db8:ffff::9]:443", header, None, PROXIES) == "2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff"


def test_ipv4_mapped_peer_is_ipv4():
    assert client_ip("::ffff:10.0.0.1", None, "192.0.2.3", PROXIES) == "192.0.2.3"


def test_unparsable_hop_stops_the_walk():
    assert client_ip("10.0.0.1", None, "192.0.2.3, unknown, 10.9.9.9", PROXIES) == "10.9.9.9"


def test_all_hops_trusted_gives_leftmost():
    assert client_ip("10.0.0.1", None, "10.5.5.5, 10.6.6.6", PROXIES) == "10.5.5.5"


def test_unknown_peer_gives_none():
    assert client_ip(None, None, "192.0.2.3", PROXIES) is None


def test_parse_networks_names_bad_entry():
    with pytest.raises(ValueError, match="'10.0.0.0/33'"):
        parse_networks("10.0.0.0/8, 10.0.0.0/33")


async def test_collector_believes_trusted_proxy(http, make_collector, sites, redis_client):
    collector = await make_collector(TRUSTED_PROXIES="127.0.0.1/32")
    event = {"site": "example.com", "url": "https://example.com/"}

    await http.post(collector.route("/collect"), json=event, headers={"X-Forwarded-For": "2001:db8::dead:beef"})
    await http.post(collector.route("/collect"), json=event,
                    headers={"Forwarded": 'for="[2001:db8:0:0:1::7]:3000";proto=https'})
    # Two header lines are one list, in order (RFC 9110, section 5.3).
    await http.post(collector.route("/collect"), json=event,
                    headers=[("X-Forwarded-For", "192.0.2.1"), ("X-Forwarded-For", "198.51.100.2")])

    events = await stream_events(redis_client)
    assert [e.ip for e in events] == ["2001:db8::dead:beef", "2001:db8::1:0:0:7", "198.51.100.2"]
    assert events[0].visitor_id != events[1].visitor_id


async def test_collector_ignores_headers_by_default(http, collector, redis_client):
    await http.post(collector.route("/collect"), json={"site": "example.com", "url": "https://example.com/"},
                    headers={"X-Forwarded-For": "192.0.2.1"})

    [event] = await stream_events(redis_client)
    assert event.ip == "127.0.0.1"


async def test_bad_trusted_proxies_is_config_error(make_collector):
    from weir.settings import ConfigError

    with pytest.raises(ConfigError, match="TRUSTED_PROXIES"):
        await make_collector(TRUSTED_PROXIES="10.0.0.0/8,not-a-network")
