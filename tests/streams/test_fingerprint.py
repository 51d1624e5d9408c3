"""Fingerprints: folding a session's events at once equals merging them one at a time."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streams.fingerprint import VisitorNetwork, fingerprint_of_event, merge, merge_events

NETWORKS = (None, VisitorNetwork(), VisitorNetwork(country="DE", asn=3320, org="Telekom", org_type="isp"),
            VisitorNetwork(country="US", is_government=True))

# Few distinct values, so that equal entry and exit keys with different pages, referrers and
# URLs (the ties) come up often.
event_facts = st.tuples(
    st.sampled_from(["pageview", "signup"]),
    st.sampled_from(["/", "/a", "signup"]),
    st.integers(0, 3).map(lambda minute: 1_772_000_000_000 + minute * 60_000),
    st.sampled_from([None, "https://s.example/", "https://s.example/?utm_source=x"]),
    st.sampled_from([None, "", "https://www.google.com/"]),
    st.sampled_from([None, "", "Mozilla/5.0 Firefox/120.0", "curl/8.4.0"]),
    st.booleans(),
    st.sampled_from(NETWORKS),
    st.sampled_from([None, "", "1920x1080"]),
)


def merge_one_by_one(start, session_id: str, events: list[tuple]):
    fingerprints = [fingerprint_of_event(session_id, "s.example", "v", *facts) for facts in events]
    merged = start if start is not None else fingerprints.pop(0)
    for part in fingerprints:
        merged = merge(merged, part, session_id)
    return merged


@given(events=st.lists(event_facts, min_size=1, max_size=8))
def test_merge_events_equals_merge_per_event(events):
    assert merge_events(None, "s1", "s.example", "v", events) == merge_one_by_one(None, "s1", events)


@given(stored=st.lists(event_facts, min_size=1, max_size=4), events=st.lists(event_facts, max_size=6))
def test_merge_events_onto_stored_session(stored, events):
    start = merge_one_by_one(None, "old", stored)

    assert merge_events(start, "s1", "s.example", "v", events) == merge_one_by_one(start, "s1", events)


@given(events=st.lists(event_facts, min_size=1, max_size=8), order=st.randoms(use_true_random=False))
def test_agent_network_and_screen_ignore_order(events, order):
    shuffled = list(events)
    order.shuffle(shuffled)

    ordered, reordered = merge_events(None, "s1", "s.example", "v", events), merge_events(None, "s1", "s.example",
                                                                                          "v", shuffled)

    assert ordered.user_agent == reordered.user_agent
    assert ordered.network == reordered.network
    assert ordered.screen_size == reordered.screen_size
