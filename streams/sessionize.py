"""Sessions: a visitor's events with gaps of at most SESSION_GAP_MS between them.

A session is a connected run of one visitor's events, and its id is a hash of the site, the
visitor and the time of its first event. Both depend only on the set of events, never on the
order they arrived in: when a late event extends a session backwards or bridges two
sessions, the merged session takes the id of its new first event and the older ids are
renamed. So any order, duplication or redelivery of the same events gives the same sessions.

`plan_sessions` is the pure step; the sink supplies the visitor's stored sessions near the new
events and applies the plan in the transaction that inserts them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

SESSION_GAP_MS = 30 * 60 * 1000


@dataclass(frozen=True, slots=True)
class SessionSpan:
    """A stored session of one visitor: its id and its first and last event times."""

    session_id: str
    first_ms: int
    last_ms: int


@dataclass(slots=True)
class SessionPlan:
    event_sessions: list[str]
    """The session id of each new event, in input order."""
    renames: dict[str, str] = field(default_factory=dict)
    """Stored session id to the id of the session it merged into."""
    touched: set[str] = field(default_factory=set)
    """Ids of the sessions that gained events or absorbed others."""


def session_id_for(site: str, visitor_id: str, first_ms: int) -> str:
    """Return the id (32 hex characters) of the session of `visitor_id` that starts at `first_ms`."""
    return hashlib.blake2b(f"{site}\x00{visitor_id}\x00{first_ms}".encode(), digest_size=16).hexdigest()


def plan_sessions(site: str, visitor_id: str, stored: list[SessionSpan], new_times_ms: list[int],
                  gap_ms: int = SESSION_GAP_MS) -> SessionPlan:
    """Assign sessions to one visitor's new events, given its stored sessions near them.

    `stored` must hold every stored session with an event within `gap_ms` of a new event; each
    is already a connected run, so it joins a group as a whole interval.
    """
    # Each item: (start, end, stored span or None, index of the new event or -1).
    items = [(span.first_ms, span.last_ms, span, -1) for span in stored]
    items += [(ts, ts, None, index) for index, ts in enumerate(new_times_ms)]
    items.sort(key=lambda item: (item[0], item[1]))

    plan = SessionPlan(event_sessions=[""] * len(new_times_ms))
    group: list[tuple] = []
    group_end = 0
    for item in items:
        if group and item[0] - group_end > gap_ms:
            _close_group(site, visitor_id, group, plan)
            group = []
        group_end = item[1] if not group else max(group_end, item[1])
        group.append(item)
    if group:
        _close_group(site, visitor_id, group, plan)
    return plan


def _close_group(site: str, visitor_id: str, group: list[tuple], plan: SessionPlan) -> None:
    canonical = session_id_for(site, visitor_id, group[0][0])
    changed = False
    for _start, _end, span, index in group:
        if span is None:
            plan.event_sessions[index] = canonical
            changed = True
        elif span.session_id != canonical:
            plan.renames[span.session_id] = canonical
            changed = True
    if changed:
        plan.touched.add(canonical)
