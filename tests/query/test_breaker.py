"""The Redis breaker of the query API: closed until a failure, open for its cool-down."""

from __future__ import annotations

import logging
import time

from query.breaker import RedisBreaker

RECOVERED = "redis reachable again after a failure; reading the answer cache and stream backlog again"


def test_success_during_cool_down_keeps_it(caplog):
    breaker = RedisBreaker(cool_down_s=60)
    breaker.record_failure()

    with caplog.at_level(logging.INFO, logger="query.breaker"):
        breaker.record_success()

    assert not breaker.allows()
    assert caplog.messages == []


def test_success_after_cool_down_logs_once(caplog):
    breaker = RedisBreaker(cool_down_s=0.01)
    breaker.record_failure()
    time.sleep(0.02)

    with caplog.at_level(logging.INFO, logger="query.breaker"):
        breaker.record_success()
        breaker.record_success()

    assert breaker.allows()
    assert caplog.messages == [RECOVERED]
