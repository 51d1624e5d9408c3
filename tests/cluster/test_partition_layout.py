"""Stream names, routing and the agents' share of the partitions, without any server."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from streams.event import Event
from streams.partitions import StreamPartitions, assign_streams, partition_of


def event(visitor_id: str, number: int) -> Event:
    return Event(id=f"id-{number}", site="example.com", type="pageview", action="/", timestamp_ms=number,
                 received_ms=number, visitor_id=visitor_id)


@pytest.mark.parametrize(("partitions", "streams", "dead_letter_streams"), [
    (StreamPartitions(1), ["weir:events"], ["weir:events:dead"]),
    (StreamPartitions(1, cluster=True), ["weir:events:{0}"], ["weir:events:dead:{0}"]),
    (StreamPartitions(3), ["weir:events:{0}", "weir:events:{1}", "weir:events:{2}"],
     ["weir:events:dead:{0}", "weir:events:dead:{1}", "weir:events:dead:{2}"]),
])
def test_layout_names_streams(partitions, streams, dead_letter_streams):
    assert partitions.streams() == streams
    assert partitions.dead_letter_streams() == dead_letter_streams
    assert [partitions.dead_letter_stream(s) for s in streams] == dead_letter_streams


def test_dead_letter_stream_shares_slot():
    partitions = StreamPartitions(16, cluster=True)

    for stream in partitions.streams():
        assert key_slot(stream.encode()) == key_slot(partitions.dead_letter_stream(stream).encode())


def test_unknown_stream_dead_letters_to_default():
    assert StreamPartitions(4).dead_letter_stream("test:stream") == "weir:events:dead"


def test_partition_of_is_stable():
    # Collectors and importers of different versions may write at once, so this mapping must not change.
    assert partition_of("example.com", "a" * 32, 16) == 1
    assert partition_of("example.com", "b" * 32, 16) == 2
    assert partition_of("example.com", "0123456789abcdef0123456789abcdef", 16) == 8


def test_route_keeps_visitor_order():
    partitions = StreamPartitions(4)
    events = [event(f"{n % 5:032d}", n) for n in range(40)]

    routed = partitions.route(events)

    assert sum(len(stream_events) for stream_events in routed.values()) == 40
    for stream, stream_events in routed.items():
        assert all(partitions.stream_of(e) == stream for e in stream_events)
        assert [e.timestamp_ms for e in stream_events] == sorted(e.timestamp_ms for e in stream_events)
    assert len({partitions.stream_of(e) for e in events if e.visitor_id == f"{0:032d}"}) == 1


def test_one_partition_routes_to_legacy_stream():
    assert StreamPartitions(1).route([event("v" * 32, 1)]) == {"weir:events": [event("v" * 32, 1)]}


@pytest.mark.parametrize(("streams", "agents", "expected"), [
    (["s0"], 3, [["s0"], ["s0"], ["s0"]]),
    (["s0", "s1", "s2", "s3"], 4, [["s0"], ["s1"], ["s2"], ["s3"]]),
    (["s0", "s1"], 5, [["s0"], ["s1"], ["s0"], ["s1"], ["s0"]]),
    (["s0", "s1", "s2", "s3"], 3, [["s0", "s3"], ["s1"], ["s2"]]),
    ([f"s{n}" for n in range(16)], 5, [["s0", "s5", "s10", "s15"], ["s1", "s6", "s11"], ["s2", "s7", "s12"],
                                       ["s3", "s8", "s13"], ["s4", "s9", "s14"]]),
])
def test_assign_streams_covers_every_stream(streams, agents, expected):
    assignment = assign_streams(streams, agents)

    assert assignment == expected
    assert {s for agent_streams in assignment for s in agent_streams} == set(streams)


def test_invalid_partition_count_raises():
    with pytest.raises(ValueError, match="invalid partition count 0"):
        StreamPartitions(0)
