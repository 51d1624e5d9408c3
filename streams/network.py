"""The network that owns a client address: its AS number, organisation and kind, and a traffic tier.

The data comes from one of two offline databases:

- a MaxMind DB (.mmdb) file at a configured path, read with the maxminddb
  package: GeoLite2-ASN or GeoIP2-ISP (autonomous_system_number,
  autonomous_system_organization), DB-IP's ASN Lite (same fields), or IPinfo
  Lite ("asn" as "AS15169", "as_name");
- otherwise the network database of the plevin-db-network package, read with
  the plevin package. Besides the AS number and the operator's company it
  carries the operator's category (hosting, residential, education, ...).
  New builds reach PyPI every few days or weeks, so pin an exact version. The
  data then changes only on purpose, and the tests' counts belong to one build.

`org_type` is one of ORG_TYPES. It is decided in this order: a known hosting
AS number (HOSTING_ASNS), the database's category of the address or its
operator (CATEGORY_ORG_TYPES, plevin only), keywords of the organisation name
(ORG_KEYWORDS), else "unknown". `response_tier` then ranks the traffic by how
likely a person is behind it (RESPONSE_TIERS).

Private, loopback, link-local, reserved, multicast and shared (CGNAT)
addresses, and strings that are not addresses, give an empty result.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol

import maxminddb

logger = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Distinct client addresses kept in the lookup cache. An entry costs about 300
# bytes plus the address string (measured with tracemalloc on CPython 3.11 over
# the 1,753 addresses of the test access log), so a full cache takes an
# estimated 35 MB.
CACHE_SIZE = 100_000
# Networks (with the address range's own abuse record) whose NetworkOwner the
# plevin source keeps, and distinct owners whose NetworkInfo is kept. Reading
# a network's fields decodes blocks of the file, and many addresses share a
# network.
NETWORK_CACHE_SIZE = 50_000
OWNER_CACHE_SIZE = 20_000

ISP = "isp"
HOSTING = "hosting"
EDUCATION = "education"
GOVERNMENT = "government"
BUSINESS = "business"
UNKNOWN = "unknown"
ORG_TYPES: tuple[str, ...] = (ISP, HOSTING, EDUCATION, GOVERNMENT, BUSINESS, UNKNOWN)

# Traffic tiers, most likely human first. "bot" is decided by the user agent
# (streams.bots), every other tier by the network owner.
HUMAN_RESIDENTIAL = "human-residential"  # an ISP's access network: homes and phones
HUMAN_BUSINESS = "human-business"  # a company's own network
HUMAN_EDUCATION = "human-education"  # a university or school network
HUMAN_GOVERNMENT = "human-government"  # a government or military network
HUMAN_UNKNOWN = "human-unknown"  # a browser user agent from a network of unknown kind
HOSTING_DATACENTER = "hosting-datacenter"  # a browser user agent from a data centre: proxies, VPNs, headless scrapers
BOT = "bot"  # the user agent is a known bot or automation tool
RESPONSE_TIERS: tuple[str, ...] = (
    HUMAN_RESIDENTIAL,
    HUMAN_BUSINESS,
    HUMAN_EDUCATION,
    HUMAN_GOVERNMENT,
    HUMAN_UNKNOWN,
    HOSTING_DATACENTER,
    BOT,
)

_TIER_BY_ORG_TYPE = {
    ISP: HUMAN_RESIDENTIAL,
    BUSINESS: HUMAN_BUSINESS,
    EDUCATION: HUMAN_EDUCATION,
    GOVERNMENT: HUMAN_GOVERNMENT,
    HOSTING: HOSTING_DATACENTER,
    UNKNOWN: HUMAN_UNKNOWN,
}

# Cloud, hosting and CDN networks whose names do not always say so.
HOSTING_ASNS: frozenset[int] = frozenset(
    {
        16509,  # Amazon Web Services
        14618,  # Amazon Web Services
        15169,  # Google, including Google Cloud and Google's crawlers
        396982,  # Google Cloud
        8075,  # Microsoft, including Azure
        14061,  # DigitalOcean
        24940,  # Hetzner Online
        213230,  # Hetzner Cloud
        16276,  # OVH
        63949,  # Linode (Akamai Connected Cloud)
        20940,  # Akamai
        31898,  # Oracle Cloud
        45102,  # Alibaba Cloud
        37963,  # Alibaba (China)
        132203,  # Tencent Cloud
        45090,  # Tencent
        13335,  # Cloudflare
        54113,  # Fastly
        20473,  # Vultr (Choopa)
        51167,  # Contabo
        12876,  # Scaleway
        60781,  # Leaseweb Netherlands
        16265,  # Leaseweb
        28753,  # Leaseweb Deutschland
        36351,  # IBM Cloud (SoftLayer)
        19994,  # Rackspace
        9009,  # M247
        8560,  # IONOS
        26496,  # GoDaddy
        46606,  # Unified Layer (Bluehost)
        36352,  # ColoCrossing, now HostPapa
        53667,  # FranTech (BuyVM)
        40676,  # Psychz Networks
    }
)

# Categories of the plevin database (network.operator.category, or the
# address's own user_type) and the org_type each one stands for.
CATEGORY_ORG_TYPES: dict[str, str] = {
    "residential": ISP,
    "cellular": ISP,
    "transit": ISP,  # backbone carriers, which also sell access
    "traveler": ISP,  # in-flight and hotel networks
    "hosting": HOSTING,
    "cdn": HOSTING,
    "content": HOSTING,  # content networks such as Google's and Meta's
    "search_engine_spider": HOSTING,
    "education": EDUCATION,
    "government": GOVERNMENT,
    "military": GOVERNMENT,
    "business": BUSINESS,
    "non-profit": BUSINESS,
    "infrastructure": BUSINESS,  # DNS, registries and route servers
    "exchange": BUSINESS,  # internet exchange points
}

# Keywords of organisation names, tried in this order and matched case-insensitively.
ORG_KEYWORDS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        GOVERNMENT,
        re.compile(
            r"\.gov\b|\bgov(ernment|t)?\b|\bministry\b|\bministerio\b|\bminist[eè]re\b|\bministerium\b"
            r"|\bdepartment of\b|\bdod\b|\bdefen[cs]e\b|\bmilitary\b|\barmy\b|\bnavy\b|\bair force\b"
            r"|\bstate of\b|\bcity of\b|\bcounty of\b|\bmunicipal|\bgobierno\b|\bgoverno\b|\bregierung\b"
            r"|\bbundes(amt|anstalt|ministerium)|\bparliament\b|\bpolice\b",
            re.IGNORECASE,
        ),
    ),
    (
        EDUCATION,
        re.compile(
            r"\.edu\b|\buniversit|\buniversidad|\bhochschule\b|\bcollege\b|\bschool\b|\bacademy\b"
            r"|\binstitute of technology\b|\bpolytechnic\b|\bresearch and education\b"
            r"|\beducation(al)? network\b|\bjanet\b|\bgeant\b|\binternet2\b|\brenater\b|\bsurfnet\b"
            r"|\bcernet\b",
            re.IGNORECASE,
        ),
    ),
    (
        HOSTING,
        re.compile(
            r"\bhosting\b|\bhost\b|\bcloud\b|\bdata ?cent(er|re)\b|\bservers?\b|\bvps\b|\bcolo(cation)?\b"
            r"|\bdedicated\b|\bamazon\b|\baws\b|\bdigitalocean\b|\bhetzner\b|\bovh\b|\blinode\b|\bvultr\b"
            r"|\bchoopa\b|\bleaseweb\b|\bcontabo\b|\bscaleway\b|\bakamai\b|\bfastly\b|\bcdn\b",
            re.IGNORECASE,
        ),
    ),
    (
        ISP,
        re.compile(
            r"\btele(com|coms|kom|communications?|fonica|net)\b|\bbroadband\b|\bcable\b|\bmobile\b"
            r"|\bwireless\b|\bcellular\b|\bisp\b|\binternet service|\bcommunications?\b|\bdsl\b|\bfib(er|re)\b"
            r"|\bcomcast\b|\bverizon\b|\bcharter\b|\bvodafone\b|\borange\b|\bmegafon\b|\brostelecom\b",
            re.IGNORECASE,
        ),
    ),
)


@dataclass(frozen=True, slots=True)
class NetworkInfo:
    """The owner of a client's network and the traffic tier it puts the client in."""

    asn: int | None
    org: str | None
    org_type: str
    is_government: bool
    response_tier: str


@dataclass(frozen=True, slots=True)
class NetworkOwner:
    """One database record: the AS number, the organisation and the database's own category, if any."""

    asn: int | None
    org: str | None
    category: str | None = None


NO_OWNER = NetworkOwner(asn=None, org=None)


class NetworkSource(Protocol):
    """A database that maps a public address to its network owner."""

    description: str

    def find(self, address: IPAddress) -> NetworkOwner: ...


def response_tier(is_bot: bool, org_type: str) -> str:
    """Return the traffic tier of a client: "bot" for a bot user agent, else the tier of its network's org_type."""
    if is_bot:
        return BOT
    return _TIER_BY_ORG_TYPE.get(org_type, HUMAN_UNKNOWN)


def classify_org(asn: int | None, org: str | None, category: str | None = None) -> str:
    """Return the org_type of a network owner from its AS number, name and database category."""
    if asn in HOSTING_ASNS:
        return HOSTING
    if category:
        by_category = CATEGORY_ORG_TYPES.get(category)
        if by_category is not None:
            return by_category
    if org:
        for org_type, keywords in ORG_KEYWORDS:
            if keywords.search(org):
                return org_type
    return UNKNOWN


def public_address(ip: str | None) -> IPAddress | None:
    """Parse an address and return it when it is globally routable, else None.

    An IPv4-mapped IPv6 address ("::ffff:8.8.8.8") becomes IPv4. Never raises.
    """
    if not ip:
        return None
    try:
        address = ipaddress.ip_address(ip.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    # is_global is False for private, loopback, link-local, reserved and shared
    # (100.64.0.0/10) space, but True for multicast.
    if not address.is_global or address.is_multicast:
        return None
    return address


class NetworkLookup:
    """Maps client addresses to NetworkInfo, with a per-instance LRU cache of CACHE_SIZE addresses.

    One instance per process: the plevin reader keeps decoded blocks of its
    file in memory, and the MaxMind reader maps its file.
    """

    def __init__(self, mmdb_path: str | os.PathLike[str] | None = None, cache_size: int = CACHE_SIZE) -> None:
        """Open the MaxMind DB at mmdb_path, or the plevin-db-network package's database when it is None.

        Raises FileNotFoundError when mmdb_path does not exist,
        maxminddb.InvalidDatabaseError when it is not a MaxMind DB, and
        ModuleNotFoundError when no path is given and plevin-db-network is not
        installed.
        """
        self._source: NetworkSource = _MmdbNetwork(mmdb_path) if mmdb_path is not None else _PlevinNetwork()
        self._lookup_cached = functools.lru_cache(maxsize=cache_size)(self._lookup)
        self._describe_cached = functools.lru_cache(maxsize=OWNER_CACHE_SIZE)(_describe_owner)
        logger.info("network database opened source=%s", self._source.description, extra={"source": self._source.description})

    @property
    def description(self) -> str:
        """The database in use and its build date."""
        return self._source.description

    def lookup(self, ip: str | None, is_bot: bool = False) -> NetworkInfo:
        """Return the network owner of `ip` and the response tier of a client there.

        `is_bot` is the user agent's verdict from streams.bots. Never raises:
        an address that is not public or not an address gives an empty
        NetworkInfo (no AS number, org_type "unknown").
        """
        if not ip:
            return _EMPTY_BOT if is_bot else _EMPTY_HUMAN
        human, bot = self._lookup_cached(ip)
        return bot if is_bot else human

    def lookup_address(self, address: IPAddress | None) -> tuple[NetworkInfo, NetworkInfo]:
        """Return the NetworkInfo of a human and of a bot client at an address parsed by public_address.

        None gives the empty pair. Bypasses the address cache, so a caller that parses each
        address once and caches the result itself does not fill that cache too.
        """
        owner = NO_OWNER if address is None else self._source.find(address)
        if owner is NO_OWNER:
            return _EMPTY_HUMAN, _EMPTY_BOT
        return self._describe_cached(owner)

    def _lookup(self, ip: str) -> tuple[NetworkInfo, NetworkInfo]:
        return self.lookup_address(public_address(ip))


def _describe_owner(owner: NetworkOwner) -> tuple[NetworkInfo, NetworkInfo]:
    """Return the NetworkInfo of a human and of a bot client on `owner`'s network."""
    org_type = classify_org(owner.asn, owner.org, owner.category)
    is_government = org_type == GOVERNMENT
    human = NetworkInfo(owner.asn, owner.org, org_type, is_government, response_tier(False, org_type))
    return human, NetworkInfo(owner.asn, owner.org, org_type, is_government, BOT)


_EMPTY_HUMAN = NetworkInfo(asn=None, org=None, org_type=UNKNOWN, is_government=False, response_tier=HUMAN_UNKNOWN)
_EMPTY_BOT = NetworkInfo(asn=None, org=None, org_type=UNKNOWN, is_government=False, response_tier=BOT)


class _MmdbNetwork:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._reader = open_mmdb(path)
        self.description = describe_mmdb(self._reader, path)

    def find(self, address: IPAddress) -> NetworkOwner:
        record = self._reader.get(address)
        if not isinstance(record, dict):
            return NO_OWNER
        asn = _as_number(record.get("autonomous_system_number", record.get("asn")))
        org = record.get("autonomous_system_organization") or record.get("as_name") or None
        if asn is None and org is None:
            return NO_OWNER
        return NetworkOwner(asn=asn, org=org)


class _PlevinNetwork:
    def __init__(self) -> None:
        import plevin_db_network
        from plevin.reader import File

        self._file = File(plevin_db_network.PATH)
        self.description = f"plevin-db-network built {self._file.built}"
        self._links = {version: (plevin_spine_column(self._file, version, "network"),
                                 plevin_spine_column(self._file, version, "abuse")) for version in (4, 6)}
        self._fields = PlevinFields(self._file)
        self._owner_cached = functools.lru_cache(maxsize=NETWORK_CACHE_SIZE)(self._owner)

    def find(self, address: IPAddress) -> NetworkOwner:
        # File.row(address) would build the address's row with its network and
        # abuse record, as plain dictionaries. Here only the address's links to
        # them are read, and the owner is built once per pair of links (see
        # plevin_spine_column).
        found = self._file.locate(int(address), address.version == 6)
        if found is None:
            return NO_OWNER
        _version, row, abuse_override = found
        network_links, abuse_links = self._links[address.version]
        network_link = network_links[row] if network_links is not None else 0
        # As in File.row: an abuse record of the exact address replaces its range's.
        abuse_link = abuse_override or (abuse_links[row] if abuse_links is not None else 0)
        return self._owner_cached(network_link, abuse_link) if network_link else NO_OWNER

    def _owner(self, network_link: int, abuse_link: int) -> NetworkOwner:
        # Reads only the fields used here. The row dictionaries (file.rows) would give the same
        # values, and tests/streams/test_network.py compares the two.
        fields = self._fields
        if "network" not in fields.tables:
            return NO_OWNER
        network = network_link - 1
        operator_link = fields.link("network", "operator", network)
        company = fields.value("operator", "company", operator_link - 1) if operator_link else None
        asn = fields.value("network", "asn", network) or None
        org = company or fields.value("network", "handle", network) or None
        if asn is None and org is None:
            return NO_OWNER
        # The address's own type, from feeds that name the range, beats its operator's category.
        user_type = fields.value("abuse", "user_type", abuse_link - 1) if abuse_link else None
        category = user_type or (fields.value("operator", "category", operator_link - 1) if operator_link else None) or None
        return NetworkOwner(asn=asn, org=org, category=category)


class PlevinFields:
    """Reads single fields of the linked rows of a plevin file, as `file.rows` builds them.

    `file.rows[(table, row)]` of plevin 0.2.3 (pinned in pyproject.toml) decodes every column of
    the row and of each row it links to, as dictionaries: about 30 fields for a place, of which
    the geo source reads four. Each field here is read the way that row building reads it
    (File._linked), from the plans in `file.tables`.
    """

    def __init__(self, file: Any) -> None:
        from plevin.reader import DEGREES

        self._readers: dict[tuple[str, str], Callable[[int], Any]] = {}
        self._links: dict[tuple[str, str], Callable[[int], int]] = {}
        for table, (plain, text, degrees, coded, links) in file.tables.items():
            for field, section in plain:
                self._readers[(table, field)] = section.__getitem__
            for field, section, pool in text:
                self._readers[(table, field)] = functools.partial(_read_text, section, pool)
            for field, section in degrees:
                self._readers[(table, field)] = functools.partial(_read_degrees, section, DEGREES)
            for field, section, read in coded:
                self._readers[(table, field)] = functools.partial(_read_coded, section, read)
            for field, section in links:
                self._links[(table, field)] = section.__getitem__
        self.tables = frozenset(file.tables)

    def value(self, table: str, field: str, row: int) -> Any:
        """Return a field of row `row` (counted from 0) of `table`, or None when the file has no such field."""
        reader = self._readers.get((table, field))
        return None if reader is None else reader(row)

    def link(self, table: str, field: str, row: int) -> int:
        """Return the row that a link field points to plus one, or 0 for none or when the file has no such link."""
        reader = self._links.get((table, field))
        return 0 if reader is None else reader(row)


def _read_text(section: Any, pool: Any, row: int) -> str:
    return pool[section[row]]


def _read_degrees(section: Any, degrees: int, row: int) -> float:
    return section[row] / degrees


def _read_coded(section: Any, read: Callable[[int], Any], row: int) -> Any:
    return read(section[row])


def plevin_spine_column(file: Any, version: int, table: str) -> Any:
    """Return the column of a plevin file that links each address range to a row of `table`, or None.

    A link is the row number plus one, 0 for none, and `file.rows[(table, link - 1)]` is that
    row as dictionaries. This is how `File.row` of plevin 0.2.3 (pinned in pyproject.toml)
    builds its result: reading the links alone lets callers build what they need once per
    linked row instead of once per address.
    """
    for name, column, _read in file.families[version][1]:
        if name == table:
            return column
    return None


def open_mmdb(path: str | os.PathLike[str]) -> maxminddb.Reader:
    """Open a MaxMind DB file with the fastest reader available (the C extension, memory-mapped).

    Raises FileNotFoundError naming the path when it does not exist.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"MaxMind DB file {os.fspath(path)!r} not found. Fix the configured path or unset it.")
    return maxminddb.open_database(path, maxminddb.MODE_AUTO)


def describe_mmdb(reader: maxminddb.Reader, path: str | os.PathLike[str]) -> str:
    """Return the database type, build date and path of an open MaxMind DB, for logs and /health."""
    metadata = reader.metadata()
    return f"{metadata.database_type} built {_epoch_date(metadata.build_epoch)} from {os.fspath(path)}"


def _as_number(value: Any) -> int | None:
    if isinstance(value, int):
        return value or None
    if isinstance(value, str):
        digits = value.strip().upper().removeprefix("AS")
        return int(digits) if digits.isdigit() else None
    return None


def _epoch_date(epoch_s: int) -> str:
    return datetime.fromtimestamp(epoch_s, tz=timezone.utc).date().isoformat()
