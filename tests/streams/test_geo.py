"""Tests of streams.geo on the client addresses of a real access log, and on MaxMind DB files built here."""

from __future__ import annotations

import collections
import functools
import random
from pathlib import Path

import maxminddb
import pytest
from hypothesis import given
from hypothesis import strategies as st
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from streams.geo import NO_GEO, GeoInfo, GeoLookup, _PlevinGeo

ACCESS_LOG = Path(__file__).resolve().parents[1] / "data" / "access-logs" / "apache_combined.log"

# The counts below hold for this build of plevin-db-place only.
PLEVIN_PLACE_BUILD = "plevin-db-place built 2026-10-04"


def read_client_addresses() -> list[str]:
    with ACCESS_LOG.open(encoding="ascii") as log:
        return sorted({line.split(" ", 1)[0] for line in log})


@functools.cache
def shared_lookup() -> GeoLookup:
    return GeoLookup()


@pytest.fixture(scope="module")
def package_lookup() -> GeoLookup:
    lookup = shared_lookup()
    assert lookup.description == PLEVIN_PLACE_BUILD, "another database build: recompute the expected counts"
    return lookup


@pytest.fixture(scope="module")
def log_places(package_lookup: GeoLookup) -> list[GeoInfo]:
    return [package_lookup.lookup(address) for address in read_client_addresses()]


def test_log_location_counts(log_places: list[GeoInfo]) -> None:
    assert len(log_places) == 1_753
    assert sum(1 for place in log_places if place.country is not None) == 1_751
    assert sum(1 for place in log_places if place.region is not None) == 1_735
    assert sum(1 for place in log_places if place.city is not None) == 1_698


def test_log_city_implies_region_and_country(log_places: list[GeoInfo]) -> None:
    for place in log_places:
        if place.city is not None:
            assert place.country is not None
        if place.region is not None:
            assert place.country is not None


def test_log_top_countries(log_places: list[GeoInfo]) -> None:
    countries = collections.Counter(place.country for place in log_places if place.country is not None)
    assert countries.most_common(5) == [("US", 577), ("CN", 165), ("DE", 105), ("FR", 82), ("GB", 82)]
    assert len(countries) == 94


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("8.8.8.8", GeoInfo("US", "California", "Mountain View")),
        ("::ffff:8.8.8.8", GeoInfo("US", "California", "Mountain View")),
        ("2001:4860:4860::8888", GeoInfo("US", "California", "Mountain View")),
        ("1.1.1.1", GeoInfo("AU", "Queensland", "Brisbane")),
    ],
)
def test_well_known_addresses(package_lookup: GeoLookup, address: str, expected: GeoInfo) -> None:
    assert package_lookup.lookup(address) == expected


@pytest.mark.parametrize(
    "address",
    [None, "", "bogus", "127.0.0.1", "10.0.0.1", "192.168.0.1", "100.64.0.1", "::1", "fd00::1", "224.0.0.1"],
)
def test_non_public_addresses_are_empty(package_lookup: GeoLookup, address: str | None) -> None:
    assert package_lookup.lookup(address) is NO_GEO


@given(st.one_of(st.text(max_size=60), st.ip_addresses().map(str)))
def test_lookup_never_raises(address: str) -> None:
    assert isinstance(shared_lookup().lookup(address), GeoInfo)


def test_lookup_is_cached(package_lookup: GeoLookup) -> None:
    first = package_lookup.lookup("9.9.9.9")
    assert package_lookup.lookup("9.9.9.9") is first


# MaxMind DB files


def write_city_mmdb(path: Path) -> Path:
    """Write a GeoLite2-City-shaped file. The records are made up for the test."""
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoLite2-City", description="test")
    writer.insert_network(
        IPSet(["81.2.69.0/24"]),
        {
            "country": {"iso_code": "GB", "names": {"en": "United Kingdom"}},
            "subdivisions": [{"iso_code": "ENG", "names": {"en": "England"}}],
            "city": {"names": {"en": "London", "de": "London"}},
        },
    )
    # A record with a country only, as a Country database or a coarse City row has.
    writer.insert_network(IPSet(["89.160.20.0/24"]), {"country": {"iso_code": "SE", "names": {"en": "Sweden"}}})
    # A record with only the registered country, which the lookup falls back to.
    writer.insert_network(IPSet(["1.0.0.0/24"]), {"registered_country": {"iso_code": "AU"}})
    writer.insert_network(
        IPSet(["2a02:ff0::/32"]),
        {
            "country": {"iso_code": "DE"},
            "subdivisions": [{"names": {"en": "Bavaria"}}],
            "city": {"names": {"en": "Nuremberg"}},
        },
    )
    writer.insert_network(IPSet(["5.5.5.0/24"]), {"location": {"latitude": 1.0}})
    writer.to_db_file(str(path))
    return path


def test_mmdb_city_records(tmp_path: Path) -> None:
    lookup = GeoLookup(write_city_mmdb(tmp_path / "city.mmdb"))
    assert lookup.description.startswith("GeoLite2-City built ")
    assert lookup.description.endswith("city.mmdb")
    assert lookup.lookup("81.2.69.142") == GeoInfo("GB", "England", "London")
    assert lookup.lookup("::ffff:81.2.69.142") == GeoInfo("GB", "England", "London")
    assert lookup.lookup("89.160.20.112") == GeoInfo("SE", None, None)
    assert lookup.lookup("1.0.0.1") == GeoInfo("AU", None, None)
    assert lookup.lookup("2a02:ff0::1") == GeoInfo("DE", "Bavaria", "Nuremberg")
    assert lookup.lookup("5.5.5.5") is NO_GEO  # a record without country, region or city
    assert lookup.lookup("8.8.8.8") is NO_GEO  # no record
    assert lookup.lookup("10.0.0.1") is NO_GEO


def test_mmdb_ipinfo_lite_country(tmp_path: Path) -> None:
    path = tmp_path / "lite.mmdb"
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="ipinfo lite.mmdb", description="test")
    writer.insert_network(IPSet(["1.1.1.0/24"]), {"country_code": "AU", "asn": "AS13335"})
    writer.to_db_file(str(path))
    assert GeoLookup(path).lookup("1.1.1.1") == GeoInfo("AU", None, None)


def test_mmdb_missing_path_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="GeoLite2-City.mmdb"):
        GeoLookup(tmp_path / "GeoLite2-City.mmdb")


def test_mmdb_invalid_file_raises(tmp_path: Path) -> None:
    not_mmdb = tmp_path / "not.mmdb"
    not_mmdb.write_bytes(b"\x00" * 4096)
    with pytest.raises(maxminddb.InvalidDatabaseError):
        GeoLookup(not_mmdb)


def _describe_from_rows(rows, link: int) -> GeoInfo:
    """Build a place's GeoInfo from plevin's row dictionaries, the reading that _PlevinGeo._describe shortens."""
    place = rows[("place", link - 1)]
    if not place:
        return NO_GEO
    town = place.get("city") or {}
    granularity = place.get("granularity") or "city"
    region = (town.get("region") or {}).get("name") if granularity in ("city", "region") else None
    city = town.get("name") if granularity == "city" else None
    country = town.get("country") or None
    if country is None and region is None and city is None:
        return NO_GEO
    return GeoInfo(country=country, region=region or None, city=city or None)


def test_plevin_place_fields_equal_rows() -> None:
    source = _PlevinGeo()
    places = source._file.sections["col.place.granularity"].count
    rng = random.Random(7)
    links = sorted({*range(1, places + 1, 97), *rng.sample(range(1, places + 1), 3000), 1, places})
    granularities = collections.Counter()
    for link in links:
        expected = _describe_from_rows(source._file.rows, link)
        assert source._describe(link) == expected, link
        granularities[source._file.rows[("place", link - 1)].get("granularity")] += 1
    # The sample contains each kind of place, so every branch of _describe ran.
    assert {"city", "region", "country"} <= set(granularities)
