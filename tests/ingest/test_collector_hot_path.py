"""The collector's fast paths give the same results as the plain code they replace: event ids,
stream entry bytes and the Prometheus exposition of the lock-free metrics."""

from __future__ import annotations

import hashlib
import multiprocessing
import re
import time
import uuid

import orjson
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from ingest.collect import accepted_one_response
from ingest.intake import json_response
from ingest.metrics import LoopCounter, LoopHistogram, LoopMetricsCollector
from ingest.writer import encode_events
from streams.event import Event, encode_entry
from streams.ids import new_event_id, new_event_id_text, stable_event_id, stable_event_id_text
from streams.sites import Site, SiteDirectory
from streams.visitor import visitor_id

WHEN_MS = 1_767_323_045_123


def test_stable_id_text_matches_uuid():
    for site, client_id, unix_ms in [("example.com", "client-message-1", WHEN_MS), ("a.example", "", 0),
                                     ("b.example", "ü\x00x", (1 << 48) - 1), ("c.example", "wraps", (1 << 48) + 7)]:
        assert stable_event_id_text(site, client_id, unix_ms) == str(stable_event_id(site, client_id, unix_ms))


def test_random_id_text_is_uuid7():
    ids = [new_event_id_text(WHEN_MS) for _ in range(5000)]

    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
        assert parsed.int >> 80 == WHEN_MS


def test_random_id_uses_74_random_bits():
    values = [uuid.UUID(new_event_id_text(WHEN_MS)).int for _ in range(5000)]
    always_set = always_clear = (1 << 128) - 1
    for value in values:
        always_set &= value
        always_clear &= ~value
    varying = ((1 << 128) - 1) & ~always_set & ~always_clear

    rand_a = 0xFFF << 64
    rand_b = (1 << 62) - 1
    assert varying == rand_a | rand_b


def test_random_id_time_wraps_like_uuid():
    text = new_event_id_text((1 << 48) + 5)

    assert uuid.UUID(text).int >> 80 == 5
    assert new_event_id(WHEN_MS).int >> 80 == WHEN_MS


def _child_ids(queue) -> None:
    queue.put([new_event_id_text(WHEN_MS) for _ in range(50)])


def test_forked_child_draws_other_ids():
    new_event_id_text(WHEN_MS)  # the parent now holds a block of random digits
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child_ids, args=(queue,))
    child.start()
    child_ids = queue.get(timeout=30)
    child.join(timeout=30)
    parent_ids = [new_event_id_text(WHEN_MS) for _ in range(50)]

    assert not set(child_ids) & set(parent_ids)


def _event(**fields) -> Event:
    base = dict(id=new_event_id_text(WHEN_MS), site="example.com", type="pageview", action="/pricing",
                timestamp_ms=WHEN_MS, received_ms=WHEN_MS + 5, visitor_id="ab" * 16)
    return Event(**{**base, **fields})


def test_encode_events_matches_encode_entry():
    events = [
        _event(),
        _event(url="https://example.com/pricing?x=1", referrer="https://news.example/", user_agent="Mozilla/5.0 ü",
               ip="2001:db8::1", user_id="u-1", props={"plan": "pro", "nested": [1, 2.5, None, {"a": True}]},
               source="segment"),
        _event(type="signup", action="Signup", props={"emoji": "\U0001f600", "quote": '"\\'}),
    ]

    assert encode_events(events) == encode_entry(events)
    assert list(orjson.loads(encode_events(events)[b"events"])[0]) == list(Event.__dataclass_fields__)


def _exposition(registry: CollectorRegistry) -> list[str]:
    text = generate_latest(registry).decode()
    # Creation times differ between the two registries; everything else must not.
    return [re.sub(r"^(\S+_created(\{[^}]*\})?) \S+$", r"\1 TIME", line) for line in text.splitlines()]


def test_loop_metrics_expose_like_prometheus_client():
    reference, loop = CollectorRegistry(), CollectorRegistry()
    counters = [Counter("demo_events", "Events, by type", ["type"], registry=reference),
                LoopCounter("demo_events", "Events, by type", ["type"])]
    plain = [Counter("demo_writes", "Writes", registry=reference), LoopCounter("demo_writes", "Writes")]
    buckets = (0.001, 0.01, 1.0)
    histograms = [Histogram("demo_seconds", "Seconds", buckets=buckets, registry=reference),
                  LoopHistogram("demo_seconds", "Seconds", buckets=buckets)]
    loop.register(LoopMetricsCollector([counters[1], plain[1], histograms[1]]))

    for counter, writes, histogram in zip(counters, plain, histograms):
        counter.labels("pageview").inc()
        counter.labels("signup").inc(3)
        counter.labels(7).inc(0.5)
        writes.inc()
        for value in (0.0005, 0.001, 0.002, 0.5, 1.0, 3.0, float("nan")):
            histogram.observe(value)

    assert _exposition(loop) == _exposition(reference)
    assert loop.get_sample_value("demo_events_total", {"type": "signup"}) == 3
    assert loop.get_sample_value("demo_seconds_bucket", {"le": "0.001"}) == 2


def test_loop_metrics_reject_misuse():
    counter = LoopCounter("demo_misuse", "Misuse", ["route", "status"])

    with pytest.raises(ValueError):
        counter.labels("/collect")
    with pytest.raises(ValueError):
        counter.inc()
    with pytest.raises(ValueError):
        counter.labels("/collect", "202").inc(-1)


def test_visitor_id_matches_keyed_blake2b():
    for salt in (b"s" * 32, bytes(range(32)), b"other salt"):
        for site, ip, user_agent in [("example.com", "203.0.113.7", "Mozilla/5.0 ü"), ("a.example", "", ""),
                                     ("b.example", "2001:db8::1", "curl/8.5.0")]:
            message = f"{site}\x00{ip}\x00{user_agent}".encode()
            expected = hashlib.blake2b(message, key=salt, digest_size=16).hexdigest()

            assert visitor_id(salt, site, ip, user_agent) == expected


def test_accepted_one_response_matches_json_response():
    event_id = new_event_id_text(WHEN_MS)
    fast = accepted_one_response(event_id)
    plain = json_response({"accepted": 1, "ids": [event_id], "rejected": []}, 202)

    assert fast.body == plain.body
    assert fast.status == plain.status == 202
    assert dict(fast.headers) == dict(plain.headers)


async def test_cached_site_lookup_waits_for_a_load(redis_client):
    directory = SiteDirectory(redis_client)

    assert directory.cached_lookup("example.com") is False

    directory._sites = {"example.com": Site("example.com"), "www.example.com": Site("example.com")}
    directory._loaded_at = time.monotonic()

    assert directory.cached_lookup("WWW.Example.com.") == Site("example.com")
    assert directory.cached_lookup("unknown.example") is None
