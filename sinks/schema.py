"""The one declaration of the schema the code needs; everything else reads it.

Table and column names of `raw_events`, `daily_metrics`, `aggregated_metrics` and
`session_fingerprints` are contracts with the platform Weir replaces: columns are only ever
added. The schema guard (`sinks.guard`) turns this declaration into additive DDL.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: str
    """SQL type as `format_type()` prints it, so the guard can compare it with the catalog."""
    nullable: bool = True
    default: str | None = None

    @property
    def quoted(self) -> str:
        return quote_ident(self.name)

    def definition(self) -> str:
        parts = [self.quoted, self.type]
        if self.default is not None:
            parts.append(f"DEFAULT {self.default}")
        if not self.nullable:
            parts.append("NOT NULL")
        return " ".join(parts)


@dataclass(frozen=True, slots=True)
class Index:
    name: str
    columns: tuple[str, ...]
    """Column names (quoted as needed) or expressions, in key order."""
    unique: bool = False
    method: str = "btree"
    nulls_not_distinct: bool = False
    include: tuple[str, ...] = ()
    """Columns stored in the index without being part of its key, for index-only scans."""
    where: str | None = None
    """The predicate of a partial index, as SQL text."""


@dataclass(frozen=True, slots=True)
class Compression:
    """TimescaleDB compression of a hypertable's chunks once they are `after_days` old."""

    segment_by: tuple[str, ...]
    order_by: tuple[str, ...]
    """Column names (quoted as needed) with an optional DESC, as `timescaledb.compress_orderby` takes them."""
    after_days: int


@dataclass(frozen=True, slots=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...] = ()
    indexes: tuple[Index, ...] = ()
    partition_column: str | None = None
    """Range-partitioned by day on this column (plain PostgreSQL), or a hypertable (TimescaleDB)."""
    retention: bool = False
    """Whether rows older than RETENTION_DAYS are dropped, as whole day partitions or chunks of `partition_column`."""
    compression: Compression | None = None
    """Compression of old chunks on TimescaleDB. Plain PostgreSQL keeps its partitions uncompressed."""
    derived: bool = False
    """Written by the processor from raw events; its freshness is measured and reported."""
    fillfactor: int | None = None
    """Percent of each heap page that inserts fill (PostgreSQL's storage parameter); None keeps 100.

    Room left on a page lets an update that changes no indexed column stay on that page (a HOT
    update), which writes no index entries. Only for tables that are not partitioned.
    """
    retired_indexes: tuple[str, ...] = ()
    """Indexes an earlier version declared and a declared one now replaces.

    Every index costs each insert and each update that is not HOT an index entry, so the guard
    reports a retired index that is still present, with the statement that drops it, once all
    declared indexes are present and valid. It never drops one itself.
    """
    notes: tuple[str, ...] = field(default_factory=tuple)

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)


def quote_ident(name: str) -> str:
    """Quote an identifier when PostgreSQL would otherwise fold or reject it (camelCase, keywords)."""
    if name.islower() and name.replace("_", "").isalnum() and name not in _RESERVED:
        return name
    return '"' + name.replace('"', '""') + '"'


_RESERVED = frozenset({"timestamp", "date", "user", "order", "group", "select", "value", "default", "end"})


SITES = Table(
    name="sites",
    columns=(
        Column("domain", "character varying(253)", nullable=False),
        Column("timezone", "text", nullable=False, default="'UTC'::text"),
        Column("aliases", "text[]", nullable=False, default="'{}'::text[]"),
        Column("created_at", "timestamp with time zone", nullable=False, default="now()"),
    ),
    primary_key=("domain",),
)

RAW_EVENTS = Table(
    name="raw_events",
    columns=(
        Column("id", "uuid", nullable=False),
        Column("session_id", "character varying(64)", nullable=False),
        Column("user_id", "character varying(255)"),
        Column("event_type", "character varying(100)", nullable=False),
        Column("event_action", "character varying(255)", nullable=False),
        Column("metadata", "jsonb", default="'{}'::jsonb"),
        Column("timestamp", "timestamp with time zone", nullable=False),
        Column("created_at", "timestamp with time zone", nullable=False),
        # Added by Weir; defaults let the guard add them to a table that already holds rows.
        Column("site", "character varying(253)", nullable=False, default="''::character varying"),
        Column("visitor_id", "character varying(64)", nullable=False, default="''::character varying"),
        Column("is_bot", "boolean", nullable=False, default="false"),
        Column("url", "text"),
        Column("referrer", "text"),
        Column("user_agent", "text"),
    ),
    primary_key=("id", "timestamp"),
    indexes=(
        Index("idx_raw_events_session_id", ("session_id",)),
        Index("idx_raw_events_user_id", ("user_id",)),
        Index("idx_raw_events_event_type", ("event_type",)),
        Index("idx_raw_events_metadata", ("metadata",), method="gin"),
        Index("idx_raw_events_site_timestamp", ("site", '"timestamp"')),
        # Sessionizing a batch reads each visitor's nearby events through this index.
        Index("idx_raw_events_site_visitor", ("site", "visitor_id", '"timestamp"')),
        # A custom event's property breakdown reads only that event's rows.
        Index("idx_raw_events_custom", ("site", "event_action", '"timestamp"'), where="event_type <> 'pageview'"),
    ),
    partition_column="timestamp",
    retention=True,
    # Older TimescaleDB 2.x releases reject compression when a column of the unique key (id, timestamp)
    # is neither a segmentby nor an orderby column, so id is in orderby.
    compression=Compression(segment_by=("site",), order_by=('"timestamp" DESC', "id"), after_days=7),
)

_DIMENSION_COLUMNS = (
    Column("metric_name", "character varying(100)", nullable=False),
    Column("dimension_key", "character varying(100)"),
    Column("dimension_value", "character varying(1024)"),
    Column("value", "bigint", nullable=False, default="0"),
)

AGGREGATED_METRICS = Table(
    name="aggregated_metrics",
    columns=(
        Column("site", "character varying(253)", nullable=False, default="''::character varying"),
        Column("bucket", "timestamp with time zone", nullable=False),
        Column("granularity", "character varying(10)", nullable=False),
        *_DIMENSION_COLUMNS,
        Column("updated_at", "timestamp with time zone", nullable=False, default="now()"),
    ),
    indexes=(
        # NULLS NOT DISTINCT: the total (dimension NULL) of a bucket is one row, not one per write.
        Index(
            "uq_aggregated_metrics_key",
            ("site", "bucket", "granularity", "metric_name", "dimension_key", "dimension_value"),
            unique=True,
            nulls_not_distinct=True,
        ),
    ),
    derived=True,
    # Every batch adds to the same few rows (the totals of the current hour), and none of the
    # columns it updates is indexed: room for new versions keeps those updates HOT.
    fillfactor=50,
)

DAILY_METRICS = Table(
    name="daily_metrics",
    columns=(
        Column("site", "character varying(253)", nullable=False, default="''::character varying"),
        Column("date", "date", nullable=False),
        *_DIMENSION_COLUMNS,
        Column("updated_at", "timestamp with time zone", nullable=False, default="now()"),
    ),
    indexes=(
        # One index serves both the upsert's key and the reports, which read one dimension (or the
        # totals, dimension_key IS NULL) over a range of dates from the index alone. Every batch
        # updates `value` in thousands of rows, and each such update adds an entry to every index
        # of the table, so a second index for reads would cost each update another entry.
        Index(
            "uq_daily_metrics_dimension",
            ("site", "dimension_key", "metric_name", '"date"', "dimension_value"),
            unique=True,
            nulls_not_distinct=True,
            include=("value",),
        ),
    ),
    derived=True,
    retired_indexes=("uq_daily_metrics_key", "idx_daily_metrics_dimension"),
)

MONTHLY_METRICS = Table(
    name="monthly_metrics",
    columns=(
        Column("site", "character varying(253)", nullable=False),
        Column("month", "date", nullable=False),
        *_DIMENSION_COLUMNS,
        Column("updated_at", "timestamp with time zone", nullable=False, default="now()"),
    ),
    indexes=(
        Index(
            "uq_monthly_metrics_key",
            ("site", "dimension_key", "metric_name", "month", "dimension_value"),
            unique=True,
            nulls_not_distinct=True,
        ),
        # A breakdown over closed months reads each month's values with the highest count of its
        # ranking metric (query.rollup_reports._bounded_leaders) instead of grouping every value.
        Index("idx_monthly_metrics_value", ("site", "dimension_key", "metric_name", "month", "value"),
              include=("dimension_value",)),
    ),
    derived=True,
    notes=("daily_metrics summed per site-local month (`month` is its first date), so long ranges read a row per",
           "month. `visitors` is the month's unique visitors; `visitors_overlap` those also seen the day before it.",
           "Only months listed in closed_months have rows here."),
)

CLOSED_MONTHS = Table(
    name="closed_months",
    columns=(
        Column("site", "character varying(253)", nullable=False),
        Column("month", "date", nullable=False),
        Column("closed_at", "timestamp with time zone", nullable=False, default="now()"),
    ),
    primary_key=("site", "month"),
    notes=("Months whose monthly_metrics rows are complete; batches keep them up to date from then on.",),
)

SESSION_FINGERPRINTS = Table(
    name="session_fingerprints",
    columns=(
        Column("session_id", "character varying(64)", nullable=False),
        Column("site", "character varying(253)", nullable=False, default="''::character varying"),
        Column("visitor_id", "character varying(64)", nullable=False, default="''::character varying"),
        Column("started_at", "timestamp with time zone", nullable=False),
        Column("ended_at", "timestamp with time zone", nullable=False),
        Column("entry_page", "character varying(255)"),
        Column("exit_page", "character varying(255)"),
        Column("entry_at", "timestamp with time zone"),
        Column("exit_at", "timestamp with time zone"),
        Column("entry_action", "character varying(255)"),
        Column("entry_url", "text"),
        Column("user_agent", "text"),
        Column("pageviews", "integer", nullable=False, default="0"),
        Column("events", "integer", nullable=False, default="0"),
        Column("duration_s", "integer", nullable=False, default="0"),
        Column("is_bounce", "boolean", nullable=False, default="true"),
        Column("is_bot", "boolean", nullable=False, default="false"),
        Column("referrer", "text"),
        Column("referrer_host", "character varying(253)"),
        Column("source", "character varying(255)"),
        Column("medium", "character varying(255)"),
        Column("utm_source", "character varying(255)"),
        Column("utm_medium", "character varying(255)"),
        Column("utm_campaign", "character varying(255)"),
        Column("utm_term", "character varying(255)"),
        Column("utm_content", "character varying(255)"),
        Column("browser", "character varying(100)"),
        Column("browser_version", "character varying(50)"),
        Column("os", "character varying(100)"),
        Column("os_version", "character varying(50)"),
        Column("device_type", "character varying(20)"),
        Column("screen_size", "character varying(20)"),
        Column("country", "character varying(2)"),
        Column("region", "character varying(100)"),
        Column("city", "character varying(100)"),
        Column("asn", "integer"),
        Column("org", "character varying(255)"),
        Column("orgType", "character varying(20)"),
        Column("isGovernment", "boolean", nullable=False, default="false"),
        Column("responseTier", "character varying(40)"),
        Column("updated_at", "timestamp with time zone", nullable=False, default="now()"),
    ),
    primary_key=("site", "session_id"),
    indexes=(
        Index("idx_session_fingerprints_site_started", ("site", "started_at")),
        Index("idx_session_fingerprints_visitor", ("visitor_id",)),
    ),
    derived=True,
    # Every batch with events of a session updates its row. Only started_at among the updated
    # columns is indexed, and it rarely changes, so room for a few new versions keeps updates HOT.
    fillfactor=70,
)

DAILY_VISITORS = Table(
    name="daily_visitors",
    columns=(
        Column("site", "character varying(253)", nullable=False),
        Column("date", "date", nullable=False),
        Column("visitor_id", "character varying(64)", nullable=False),
    ),
    primary_key=("site", "date", "visitor_id"),
    derived=True,
    notes=("One row per human visitor and site-local day. Reports count visitors from the rollups' visitors and",
           "visitors_overlap rows; this table answers which visitors a day had."),
)

VISITOR_NETWORKS = Table(
    name="visitor_networks",
    columns=(
        Column("site", "character varying(253)", nullable=False),
        Column("visitor_id", "character varying(64)", nullable=False),
        Column("country", "character varying(2)"),
        Column("region", "character varying(100)"),
        Column("city", "character varying(100)"),
        Column("asn", "integer"),
        Column("org", "character varying(255)"),
        Column("orgType", "character varying(20)"),
        Column("isGovernment", "boolean", nullable=False, default="false"),
        Column("responseTier", "character varying(40)"),
        Column("created_at", "timestamp with time zone", nullable=False, default="now()"),
    ),
    primary_key=("site", "visitor_id"),
    notes=("What the client address told about a visitor, written with its first events. The address itself is",
           "never stored, so rebuilding sessions later takes location and network owner from here."),
)

ROLLUP_COVERAGE = Table(
    name="rollup_coverage",
    columns=(
        Column("site", "character varying(253)", nullable=False),
        Column("first_date", "date", nullable=False),
        Column("recorded_at", "timestamp with time zone", nullable=False, default="now()"),
    ),
    primary_key=("site",),
    notes=("The first local date from which a site's rollups hold every row this version writes; older dates",
           "were written by an earlier version (sinks.coverage)."),
)

TABLE_FRESHNESS = Table(
    name="table_freshness",
    columns=(
        Column("table_name", "character varying(63)", nullable=False),
        Column("last_write_at", "timestamp with time zone", nullable=False),
        Column("last_event_at", "timestamp with time zone"),
        Column("rows_written", "bigint", nullable=False, default="0"),
    ),
    primary_key=("table_name",),
    notes=("Each sink updates its row in the transaction that writes its table.",),
)

TABLES: tuple[Table, ...] = (
    SITES, RAW_EVENTS, AGGREGATED_METRICS, DAILY_METRICS, MONTHLY_METRICS, CLOSED_MONTHS, SESSION_FINGERPRINTS,
    DAILY_VISITORS, VISITOR_NETWORKS, ROLLUP_COVERAGE, TABLE_FRESHNESS,
)
DERIVED_TABLES: tuple[str, ...] = tuple(t.name for t in TABLES if t.derived)
TABLES_BY_NAME = {t.name: t for t in TABLES}
