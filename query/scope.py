"""The scope of a report: one site, one period, any filters, turned into SQL FROM/WHERE text.

Parameters $1, $2 and $3 are always the site and the period's start and end; filter values
follow. Bots are always left out here; the overview counts bot pageviews on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from query.filters import Filter, condition
from query.period import Period

@dataclass(frozen=True, slots=True)
class Scope:
    site: str
    period: Period
    filters: tuple[Filter, ...] = field(default_factory=tuple)
    site_timezone: str | None = None
    """The zone of the site's rollup dates; None means the period's own zone. A period in
    another zone (the `tz` parameter) cannot be read from the rollups."""
    rollups: bool = True
    """Whether reports may read the rollup tables. False makes every report read raw_events and
    session_fingerprints, so the dashboard benchmark can time both paths on the same data."""

    @property
    def event_filters(self) -> list[Filter]:
        return [f for f in self.filters if f.dimension.level == "event"]

    @property
    def session_filters(self) -> list[Filter]:
        return [f for f in self.filters if f.dimension.level == "session"]

    def params(self) -> list:
        return [self.site, self.period.start, self.period.end]

    def events_from(self, params: list, bots: bool = False) -> str:
        """FROM and WHERE of the events in scope (alias `e`, joined to their session `s` when filtered by one)."""
        join = ""
        if self.session_filters:
            join = " JOIN session_fingerprints s ON s.site = e.site AND s.session_id = e.session_id"
        conditions = ["e.site = $1", 'e."timestamp" >= $2', 'e."timestamp" < $3', "e.is_bot" if bots else "NOT e.is_bot"]
        conditions += [condition(f, params) for f in self.filters]
        return f"FROM raw_events e{join} WHERE " + " AND ".join(conditions)

    def sessions_from(self, params: list) -> str:
        """FROM and WHERE of the human sessions that started in the period and match every filter."""
        conditions = ["s.site = $1", "s.started_at >= $2", "s.started_at < $3", "NOT s.is_bot"]
        conditions += [condition(f, params) for f in self.session_filters]
        if self.event_filters:
            # A session matches an event filter when one of its events does; its events lie within a
            # day of its start, because visitor ids change at 00:00 UTC.
            event_conditions = " AND ".join(condition(f, params) for f in self.event_filters)
            conditions.append(
                "EXISTS (SELECT 1 FROM raw_events e WHERE e.site = s.site AND e.session_id = s.session_id "
                "AND e.\"timestamp\" >= $2 - interval '1 day' AND e.\"timestamp\" < $3 + interval '1 day' "
                f"AND NOT e.is_bot AND {event_conditions})")
        return "FROM session_fingerprints s WHERE " + " AND ".join(conditions)

    @property
    def uses_rollups(self) -> bool:
        """True when the rollup tables can be read: whole days in the site's zone, no filters, not switched off."""
        same_zone = self.site_timezone is None or self.site_timezone == self.period.timezone
        return self.rollups and same_zone and self.period.whole_days and not self.filters
