"""Sessions depend only on the set of events: any order, split or duplication gives the same ids."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.sessionize import SESSION_GAP_MS, SessionSpan, plan_sessions, session_id_for

MINUTE = 60_000


def canonical_sessions(times: list[int]) -> dict[int, str]:
    """Sessions computed directly: sort, split where the gap exceeds 30 minutes."""
    result, start, previous = {}, None, None
    for ts in sorted(set(times)):
        if previous is None or ts - previous > SESSION_GAP_MS:
            start = ts
        result[ts] = session_id_for("s", "v", start)
        previous = ts
    return result


class SessionStore:
    """An in-memory stand-in for raw_events of one visitor, applying plans as the sink does."""

    def __init__(self) -> None:
        self.rows: dict[int, str] = {}

    def spans_near(self, times: list[int]) -> list[SessionSpan]:
        low, high = min(times) - SESSION_GAP_MS, max(times) + SESSION_GAP_MS
        near = {sid for ts, sid in self.rows.items() if low <= ts <= high}
        spans = []
        for sid in near:
            members = [ts for ts, s in self.rows.items() if s == sid]
            spans.append(SessionSpan(sid, min(members), max(members)))
        return spans

    def insert(self, times: list[int]) -> None:
        plan = plan_sessions("s", "v", self.spans_near(times), times)
        for old, new in plan.renames.items():
            for ts, sid in list(self.rows.items()):
                if sid == old:
                    self.rows[ts] = new
        for ts, sid in zip(times, plan.event_sessions):
            self.rows.setdefault(ts, sid)


def test_single_event_starts_session():
    plan = plan_sessions("s", "v", [], [1000])
    assert plan.event_sessions == [session_id_for("s", "v", 1000)]
    assert plan.renames == {}


def test_gap_of_exactly_thirty_minutes_joins():
    plan = plan_sessions("s", "v", [], [0, SESSION_GAP_MS])
    assert plan.event_sessions[0] == plan.event_sessions[1]


def test_gap_over_thirty_minutes_splits():
    plan = plan_sessions("s", "v", [], [0, SESSION_GAP_MS + 1])
    assert plan.event_sessions[0] != plan.event_sessions[1]


def test_late_event_moves_session_start():
    stored = [SessionSpan(session_id_for("s", "v", 20 * MINUTE), 20 * MINUTE, 25 * MINUTE)]
    plan = plan_sessions("s", "v", stored, [5 * MINUTE])
    new_id = session_id_for("s", "v", 5 * MINUTE)
    assert plan.event_sessions == [new_id]
    assert plan.renames == {stored[0].session_id: new_id}


def test_bridging_event_merges_two_sessions():
    first = SessionSpan(session_id_for("s", "v", 0), 0, 10 * MINUTE)
    second = SessionSpan(session_id_for("s", "v", 60 * MINUTE), 60 * MINUTE, 70 * MINUTE)
    plan = plan_sessions("s", "v", [first, second], [35 * MINUTE])
    assert plan.event_sessions == [first.session_id]
    assert plan.renames == {second.session_id: first.session_id}
    assert plan.touched == {first.session_id}


def test_untouched_stored_session_keeps_id():
    far = SessionSpan(session_id_for("s", "v", 0), 0, MINUTE)
    plan = plan_sessions("s", "v", [far], [5 * 60 * MINUTE])
    assert plan.renames == {}
    assert plan.touched == {session_id_for("s", "v", 5 * 60 * MINUTE)}


@settings(max_examples=300, deadline=None)
@given(
    times=st.lists(st.integers(min_value=0, max_value=6 * 60 * MINUTE), min_size=1, max_size=40),
    data=st.data(),
)
def test_any_order_split_or_duplication_gives_same_sessions(times, data):
    order = data.draw(st.permutations(times))
    duplicates = data.draw(st.lists(st.sampled_from(times), max_size=10))
    stream = list(order) + duplicates
    cuts = sorted(data.draw(st.lists(st.integers(min_value=1, max_value=len(stream)), max_size=6)))

    store = SessionStore()
    start = 0
    for cut in [*cuts, len(stream)]:
        if cut > start:
            store.insert(stream[start:cut])
            start = cut

    assert store.rows == canonical_sessions(times)
