"""Tests of streams.network on the client addresses of a real access log, and on MaxMind DB files built here."""

from __future__ import annotations

import collections
import functools
import ipaddress
import random
from pathlib import Path

import maxminddb
import pytest
from hypothesis import given
from hypothesis import strategies as st
from mmdb_writer import MMDBWriter, MmdbU32
from netaddr import IPSet

from streams.network import (
    BOT,
    BUSINESS,
    EDUCATION,
    GOVERNMENT,
    HOSTING,
    HOSTING_DATACENTER,
    HUMAN_BUSINESS,
    HUMAN_EDUCATION,
    HUMAN_GOVERNMENT,
    HUMAN_RESIDENTIAL,
    HUMAN_UNKNOWN,
    ISP,
    NO_OWNER,
    ORG_TYPES,
    RESPONSE_TIERS,
    UNKNOWN,
    NetworkInfo,
    NetworkLookup,
    NetworkOwner,
    _PlevinNetwork,
    classify_org,
    public_address,
    response_tier,
)

ACCESS_LOG = Path(__file__).resolve().parents[1] / "data" / "access-logs" / "apache_combined.log"

# The counts below hold for this build of plevin-db-network only.
PLEVIN_NETWORK_BUILD = "plevin-db-network built 2026-10-04"


def read_client_addresses() -> list[str]:
    with ACCESS_LOG.open(encoding="ascii") as log:
        return sorted({line.split(" ", 1)[0] for line in log})


@functools.cache
def shared_lookup() -> NetworkLookup:
    return NetworkLookup()


@pytest.fixture(scope="module")
def package_lookup() -> NetworkLookup:
    lookup = shared_lookup()
    assert lookup.description == PLEVIN_NETWORK_BUILD, "another database build: recompute the expected counts"
    return lookup


@pytest.fixture(scope="module")
def log_networks(package_lookup: NetworkLookup) -> list[NetworkInfo]:
    return [package_lookup.lookup(address) for address in read_client_addresses()]


def test_log_has_distinct_public_ipv4(log_networks: list[NetworkInfo]) -> None:
    addresses = read_client_addresses()
    assert len(addresses) == 1_753
    assert all(isinstance(public_address(address), ipaddress.IPv4Address) for address in addresses)


def test_log_owner_counts(log_networks: list[NetworkInfo]) -> None:
    assert sum(1 for info in log_networks if info.asn is not None) == 1_665
    assert sum(1 for info in log_networks if info.org is not None) == 1_719
    assert sum(1 for info in log_networks if info.is_government) == 9


def test_log_org_type_counts(log_networks: list[NetworkInfo]) -> None:
    assert collections.Counter(info.org_type for info in log_networks) == {
        ISP: 991,
        HOSTING: 537,
        UNKNOWN: 120,
        EDUCATION: 67,
        BUSINESS: 29,
        GOVERNMENT: 9,
    }


def test_log_response_tiers_follow_org_type(log_networks: list[NetworkInfo]) -> None:
    for info in log_networks:
        assert info.response_tier == response_tier(False, info.org_type)
        assert info.is_government == (info.org_type == GOVERNMENT)


def test_log_top_networks(log_networks: list[NetworkInfo]) -> None:
    by_asn = collections.Counter(info.asn for info in log_networks if info.asn is not None)
    assert by_asn.most_common(5) == [
        (55967, 88),  # Baidu
        (8075, 58),  # Microsoft
        (7922, 52),  # Comcast
        (15169, 44),  # Google
        (16509, 30),  # Amazon
    ]
    assert len(by_asn) == 646


@pytest.mark.parametrize(
    ("address", "asn", "org"),
    [
        ("8.8.8.8", 15169, "Google LLC"),
        ("2001:4860:4860::8888", 15169, "Google LLC"),
        ("::ffff:8.8.8.8", 15169, "Google LLC"),
        ("1.1.1.1", 13335, "Cloudflare, Inc."),
    ],
)
def test_well_known_addresses(package_lookup: NetworkLookup, address: str, asn: int, org: str) -> None:
    assert package_lookup.lookup(address) == NetworkInfo(asn, org, HOSTING, False, HOSTING_DATACENTER)
    assert package_lookup.lookup(address, is_bot=True) == NetworkInfo(asn, org, HOSTING, False, BOT)


@pytest.mark.parametrize(
    "address",
    [
        None,
        "",
        "not an address",
        "127.0.0.1",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.1.1",
        "100.64.0.1",  # shared address space (carrier-grade NAT)
        "192.0.2.1",  # documentation
        "224.0.0.1",  # multicast
        "240.0.0.1",  # reserved
        "0.0.0.0",
        "::1",
        "fe80::1",
        "fd00::1",
        "2001:db8::1",
        "::ffff:10.0.0.1",
    ],
)
def test_non_public_addresses_are_empty(package_lookup: NetworkLookup, address: str | None) -> None:
    assert package_lookup.lookup(address) == NetworkInfo(None, None, UNKNOWN, False, HUMAN_UNKNOWN)
    assert package_lookup.lookup(address, is_bot=True) == NetworkInfo(None, None, UNKNOWN, False, BOT)


@given(st.one_of(st.text(max_size=60), st.ip_addresses().map(str)))
def test_lookup_never_raises(address: str) -> None:
    info = shared_lookup().lookup(address)
    assert info.org_type in ORG_TYPES
    assert info.response_tier in RESPONSE_TIERS


def test_lookup_is_cached(package_lookup: NetworkLookup) -> None:
    first = package_lookup.lookup("9.9.9.9")
    assert package_lookup.lookup("9.9.9.9") is first


@pytest.mark.parametrize(
    ("is_bot", "org_type", "tier"),
    [
        (False, ISP, HUMAN_RESIDENTIAL),
        (False, BUSINESS, HUMAN_BUSINESS),
        (False, EDUCATION, HUMAN_EDUCATION),
        (False, GOVERNMENT, HUMAN_GOVERNMENT),
        (False, HOSTING, HOSTING_DATACENTER),
        (False, UNKNOWN, HUMAN_UNKNOWN),
        (False, "something new", HUMAN_UNKNOWN),
        (True, ISP, BOT),
        (True, HOSTING, BOT),
    ],
)
def test_response_tier_table(is_bot: bool, org_type: str, tier: str) -> None:
    assert response_tier(is_bot, org_type) == tier


def test_every_org_type_has_a_tier() -> None:
    tiers = {response_tier(False, org_type) for org_type in ORG_TYPES}
    assert tiers == set(RESPONSE_TIERS) - {BOT}


@pytest.mark.parametrize(
    ("asn", "org", "category", "expected"),
    [
        (16509, "AMAZON-02", None, HOSTING),
        (14618, "AMAZON-AES", "residential", HOSTING),  # a known hosting AS beats the category
        (24940, "Hetzner Online GmbH", None, HOSTING),
        (None, "Some Host", "residential", ISP),  # the category beats keywords
        (None, "Example", "military", GOVERNMENT),
        (None, "Example", "non-profit", BUSINESS),
        (None, "Example", "no such category", UNKNOWN),
        (721, "DoD Network Information Center", None, GOVERNMENT),
        (None, "Ministry of Education", None, GOVERNMENT),
        (None, "Department of Veterans Affairs", None, GOVERNMENT),
        (None, "City of Seattle", None, GOVERNMENT),
        (None, "Stanford University", None, EDUCATION),
        (None, "Universidad de Chile", None, EDUCATION),
        (None, "Technische Universität München", None, EDUCATION),
        (None, "mit.edu", None, EDUCATION),
        (None, "Renater", None, EDUCATION),
        (None, "OVH SAS", None, HOSTING),
        (None, "Example Cloud Services", None, HOSTING),
        (None, "COMCAST-7922", None, ISP),
        (None, "Deutsche Telekom AG", None, ISP),
        (None, "Vodafone Idea Ltd.", None, ISP),
        (None, "Acme Widgets Inc", None, UNKNOWN),
        (None, None, None, UNKNOWN),
    ],
)
def test_classify_org_cases(asn: int | None, org: str | None, category: str | None, expected: str) -> None:
    assert classify_org(asn, org, category) == expected


# MaxMind DB files


def write_asn_mmdb(path: Path) -> Path:
    """Write a GeoLite2-ASN-shaped file. The records are made up for the test."""
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoLite2-ASN", description="test")
    writer.insert_network(
        IPSet(["81.2.69.0/24"]),
        {"autonomous_system_number": MmdbU32(20712), "autonomous_system_organization": "Andrews & Arnold Ltd"},
    )
    writer.insert_network(
        IPSet(["128.101.0.0/16"]),
        {"autonomous_system_number": MmdbU32(217), "autonomous_system_organization": "University of Minnesota"},
    )
    writer.insert_network(
        IPSet(["2a02:ff0::/32"]),
        {"autonomous_system_number": MmdbU32(24940), "autonomous_system_organization": "Hetzner Online GmbH"},
    )
    writer.to_db_file(str(path))
    return path


def write_ipinfo_lite_mmdb(path: Path) -> Path:
    """Write an IPinfo-Lite-shaped file: "asn" as text, "as_name", "country_code"."""
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="ipinfo lite.mmdb", description="test")
    writer.insert_network(
        IPSet(["1.1.1.0/24"]),
        {"asn": "AS13335", "as_name": "Cloudflare, Inc.", "country_code": "AU"},
    )
    writer.to_db_file(str(path))
    return path


def test_mmdb_asn_records(tmp_path: Path) -> None:
    lookup = NetworkLookup(write_asn_mmdb(tmp_path / "asn.mmdb"))
    assert lookup.description.startswith("GeoLite2-ASN built ")
    assert lookup.lookup("81.2.69.142") == NetworkInfo(20712, "Andrews & Arnold Ltd", UNKNOWN, False, HUMAN_UNKNOWN)
    assert lookup.lookup("::ffff:81.2.69.142").asn == 20712
    assert lookup.lookup("128.101.1.1") == NetworkInfo(217, "University of Minnesota", EDUCATION, False, HUMAN_EDUCATION)
    assert lookup.lookup("2a02:ff0::1") == NetworkInfo(24940, "Hetzner Online GmbH", HOSTING, False, HOSTING_DATACENTER)
    assert lookup.lookup("8.8.8.8") == NetworkInfo(None, None, UNKNOWN, False, HUMAN_UNKNOWN)
    assert lookup.lookup("10.0.0.1") == NetworkInfo(None, None, UNKNOWN, False, HUMAN_UNKNOWN)


def test_mmdb_ipinfo_lite_records(tmp_path: Path) -> None:
    lookup = NetworkLookup(write_ipinfo_lite_mmdb(tmp_path / "lite.mmdb"))
    assert lookup.lookup("1.1.1.1") == NetworkInfo(13335, "Cloudflare, Inc.", HOSTING, False, HOSTING_DATACENTER)


def test_mmdb_missing_path_raises(tmp_path: Path) -> None:
    missing = tmp_path / "missing.mmdb"
    with pytest.raises(FileNotFoundError, match="missing.mmdb"):
        NetworkLookup(missing)


def test_mmdb_invalid_file_raises(tmp_path: Path) -> None:
    not_mmdb = tmp_path / "not.mmdb"
    not_mmdb.write_bytes(b"not a database" * 100)
    with pytest.raises(maxminddb.InvalidDatabaseError):
        NetworkLookup(not_mmdb)


def _owner_from_rows(rows, network_link: int, abuse_link: int) -> NetworkOwner:
    """Build an owner from plevin's row dictionaries, the reading that _PlevinNetwork._owner shortens."""
    network = rows[("network", network_link - 1)]
    abuse = rows[("abuse", abuse_link - 1)] if abuse_link else {}
    if not network:
        return NO_OWNER
    operator = network.get("operator") or {}
    asn = network.get("asn") or None
    org = operator.get("company") or network.get("handle") or None
    if asn is None and org is None:
        return NO_OWNER
    category = abuse.get("user_type") or operator.get("category") or None
    return NetworkOwner(asn=asn, org=org, category=category)


def test_plevin_network_fields_equal_rows() -> None:
    source = _PlevinNetwork()
    networks = source._file.sections["col.network.asn"].count
    abuse_records = source._file.sections["col.abuse.user_type"].count
    rng = random.Random(7)
    links = sorted({*range(1, networks + 1, 97), *rng.sample(range(1, networks + 1), 3000), 1, networks})
    owners = []
    for network_link in links:
        abuse_link = rng.choice([0, 0, rng.randint(1, abuse_records)])
        expected = _owner_from_rows(source._file.rows, network_link, abuse_link)
        assert source._owner(network_link, abuse_link) == expected, (network_link, abuse_link)
        owners.append(expected)
    # The sample contains owners with and without a category.
    assert any(owner.category for owner in owners)
    assert any(owner is not NO_OWNER and not owner.category for owner in owners)
