"""Country, region and city of a client address.

The data comes from one of two offline databases:

- a MaxMind DB (.mmdb) file at a configured path, read with the maxminddb
  package: GeoLite2-City or GeoIP2-City, DB-IP's City Lite (same fields), a
  Country database (then region and city stay empty), or IPinfo Lite
  ("country_code");
- otherwise the place database of the plevin-db-place package, read with the
  plevin package. New builds reach PyPI every few days or weeks, so pin an
  exact version.

`country` is the ISO 3166-1 alpha-2 code, `region` the English name of the
first-level subdivision ("California"), `city` the English city name.
Addresses that are not public (see streams.network.public_address) give an
empty result.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from typing import Any, Protocol

from streams.network import IPAddress, PlevinFields, describe_mmdb, open_mmdb, plevin_spine_column, public_address

logger = logging.getLogger(__name__)

# Distinct client addresses kept in the lookup cache. An entry costs about 160
# bytes plus the address string (measured with tracemalloc on CPython 3.11 over
# the 1,753 addresses of the test access log), so a full cache takes an
# estimated 25 MB.
CACHE_SIZE = 100_000
# Places (rows of the plevin place table) whose GeoInfo is kept. Reading a
# place's fields decodes blocks of the file, and every address of a city
# shares its place.
PLACE_CACHE_SIZE = 50_000


@dataclass(frozen=True, slots=True)
class GeoInfo:
    """The location of a client address: a country code, a region name and a city name, each None when unknown."""

    country: str | None
    region: str | None
    city: str | None


NO_GEO = GeoInfo(country=None, region=None, city=None)


class GeoSource(Protocol):
    """A database that maps a public address to its location."""

    description: str

    def find(self, address: IPAddress) -> GeoInfo: ...


class GeoLookup:
    """Maps client addresses to GeoInfo, with a per-instance LRU cache of CACHE_SIZE addresses.

    One instance per process: the plevin reader keeps decoded blocks of its
    file in memory, and the MaxMind reader maps its file.
    """

    def __init__(self, mmdb_path: str | os.PathLike[str] | None = None, cache_size: int = CACHE_SIZE) -> None:
        """Open the MaxMind DB at mmdb_path, or the plevin-db-place package's database when it is None.

        Raises FileNotFoundError when mmdb_path does not exist,
        maxminddb.InvalidDatabaseError when it is not a MaxMind DB, and
        ModuleNotFoundError when no path is given and plevin-db-place is not
        installed.
        """
        self._source: GeoSource = _MmdbGeo(mmdb_path) if mmdb_path is not None else _PlevinGeo()
        self._lookup_cached = functools.lru_cache(maxsize=cache_size)(self._lookup)
        logger.info("geo database opened source=%s", self._source.description, extra={"source": self._source.description})

    @property
    def description(self) -> str:
        """The database in use and its build date."""
        return self._source.description

    def lookup(self, ip: str | None) -> GeoInfo:
        """Return the location of `ip`, or NO_GEO for a missing, non-public or invalid address. Never raises."""
        if not ip:
            return NO_GEO
        return self._lookup_cached(ip)

    def lookup_address(self, address: IPAddress | None) -> GeoInfo:
        """Return the location of an address parsed by public_address (None gives NO_GEO), bypassing the address cache."""
        if address is None:
            return NO_GEO
        return self._source.find(address)

    def _lookup(self, ip: str) -> GeoInfo:
        return self.lookup_address(public_address(ip))


class _MmdbGeo:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._reader = open_mmdb(path)
        self.description = describe_mmdb(self._reader, path)

    def find(self, address: IPAddress) -> GeoInfo:
        record = self._reader.get(address)
        if not isinstance(record, dict):
            return NO_GEO
        country = _iso_code(record.get("country")) or _iso_code(record.get("registered_country"))
        if country is None and isinstance(record.get("country_code"), str):
            country = record["country_code"] or None
        subdivisions = record.get("subdivisions")
        region = _english_name(subdivisions[0]) if isinstance(subdivisions, list) and subdivisions else None
        city = _english_name(record.get("city"))
        if country is None and region is None and city is None:
            return NO_GEO
        return GeoInfo(country=country, region=region, city=city)


class _PlevinGeo:
    def __init__(self) -> None:
        import plevin_db_place
        from plevin.reader import File

        self._file = File(plevin_db_place.PATH)
        self.description = f"plevin-db-place built {self._file.built}"
        self._place_links = {version: plevin_spine_column(self._file, version, "place") for version in (4, 6)}
        self._fields = PlevinFields(self._file)
        self._describe_cached = functools.lru_cache(maxsize=PLACE_CACHE_SIZE)(self._describe)

    def find(self, address: IPAddress) -> GeoInfo:
        # File.row(address) would build the address's row with its place, as
        # plain dictionaries. Here only the address's link to its place is
        # read, and the GeoInfo is built once per place (see plevin_spine_column).
        found = self._file.locate(int(address), address.version == 6)
        links = self._place_links[address.version]
        if found is None or links is None:
            return NO_GEO
        link = links[found[1]]
        return self._describe_cached(link) if link else NO_GEO

    def _describe(self, link: int) -> GeoInfo:
        # Reads only the fields used here. The row dictionaries (file.rows) would give the same
        # values, and tests/streams/test_geo.py compares the two.
        fields = self._fields
        if "place" not in fields.tables:
            return NO_GEO
        place = link - 1
        town = fields.link("place", "city", place) - 1
        granularity = fields.value("place", "granularity", place) or "city"
        # A "region" or "country" granularity row carries a city record only
        # for its region and country, so that city's name is not the address's.
        region = None
        if town >= 0 and granularity in ("city", "region"):
            region_link = fields.link("city", "region", town)
            region = fields.value("region", "name", region_link - 1) if region_link else None
        city = fields.value("city", "name", town) if town >= 0 and granularity == "city" else None
        country = (fields.value("city", "country", town) if town >= 0 else None) or None
        if country is None and region is None and city is None:
            return NO_GEO
        return GeoInfo(country=country, region=region or None, city=city or None)


def _iso_code(record: Any) -> str | None:
    if isinstance(record, dict):
        code = record.get("iso_code")
        if isinstance(code, str) and code:
            return code
    return None


def _english_name(record: Any) -> str | None:
    if not isinstance(record, dict):
        return None
    names = record.get("names")
    if isinstance(names, dict):
        name = names.get("en")
        if isinstance(name, str) and name:
            return name
    return None
