"""Collector metrics; the `analytics_*` names are read by existing Grafana dashboards.

The counters and histograms updated on every request are plain Python numbers, exported through
custom collectors in the default registry. prometheus_client 0.26's own classes take a lock for
every update (two per histogram observation). By an estimate from py-spy profiles, the five
updates of a single-event request cost about 2 µs of its roughly 75 µs of CPU, and the locks
protect nothing, because only the event loop's thread updates these metrics. The exposition
is the same as prometheus_client's: names, help, labels, `_total`, `_bucket`, `_count`, `_sum`
and `_created` samples (a test compares them).

NOTE: an update from another thread could be lost, because `+=` on a Python number is not
atomic across threads. Every update happens in the event loop's thread today.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Iterable, Iterator, Sequence

import prometheus_client.metrics
from prometheus_client import REGISTRY, Gauge
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString


def _use_created() -> bool:
    # prometheus_client keeps PROMETHEUS_DISABLE_CREATED_SERIES and disable_created_metrics()
    # in this module attribute; its own metrics read it the same way at every scrape.
    return getattr(prometheus_client.metrics, "_use_created", True)


class CounterChild:
    """One series of a LoopCounter."""

    __slots__ = ("value", "created")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        self.value += amount


class HistogramChild:
    """One series of a LoopHistogram: a count per bucket and the sum of the observed values."""

    __slots__ = ("upper_bounds", "counts", "sum", "created", "_one_bucket")

    def __init__(self, upper_bounds: list[float]) -> None:
        self.upper_bounds = upper_bounds
        self.counts = [0] * len(upper_bounds)
        self.sum = 0.0
        self.created = time.time()
        self._one_bucket = bisect.bisect_left(upper_bounds, 1)

    def observe_one(self) -> None:
        """observe(1), without the search for its bucket: most requests carry one event."""
        self.sum += 1
        self.counts[self._one_bucket] += 1

    def observe(self, amount: float) -> None:
        self.sum += amount
        # The first bucket whose upper bound is >= amount, as prometheus_client counts it. A NaN
        # fits no bucket there; bisect would put it in the first, so it is skipped here too.
        if amount == amount:
            self.counts[bisect.bisect_left(self.upper_bounds, amount)] += 1


class _LoopMetric:
    """A metric family and its series. `labels()` returns one series, as prometheus_client's does."""

    kind = ""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], CounterChild | HistogramChild] = {}
        if not self.labelnames:
            child = self._children[()] = self._new_child()
            # Updates then call the series itself: one call instead of three on every request.
            self._bind(child)

    def _new_child(self) -> CounterChild | HistogramChild:
        raise NotImplementedError

    def _bind(self, child) -> None:
        raise NotImplementedError

    def labels(self, *labelvalues: object) -> CounterChild | HistogramChild:
        if len(labelvalues) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {labelvalues!r}")
        key = tuple(str(value) for value in labelvalues)
        child = self._children.get(key)
        if child is None:
            child = self._children.setdefault(key, self._new_child())
        return child

    def _unlabelled(self) -> CounterChild | HistogramChild:
        if self.labelnames:
            raise ValueError(f"{self.name} has labels {self.labelnames}; call labels() first")
        return self._children[()]

    def collect(self) -> Metric:
        metric = Metric(self.name, self.documentation, self.kind)
        for labelvalues, child in list(self._children.items()):
            self._add_samples(metric, dict(zip(self.labelnames, labelvalues)), child)
        return metric

    def _add_samples(self, metric: Metric, labels: dict[str, str], child) -> None:
        raise NotImplementedError


class LoopCounter(_LoopMetric):
    """A counter whose series are updated without a lock."""

    kind = "counter"

    def _new_child(self) -> CounterChild:
        return CounterChild()

    def _bind(self, child: CounterChild) -> None:
        self.inc = child.inc

    def inc(self, amount: float = 1) -> None:
        self._unlabelled().inc(amount)

    def _add_samples(self, metric: Metric, labels: dict[str, str], child: CounterChild) -> None:
        metric.add_sample(self.name + "_total", labels, child.value)
        if _use_created():
            metric.add_sample(self.name + "_created", labels, child.created)


class LoopHistogram(_LoopMetric):
    """A histogram whose series are updated without a lock."""

    kind = "histogram"

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (), *,
                 buckets: Iterable[float]) -> None:
        bounds = [float(bound) for bound in buckets]
        if bounds != sorted(bounds):
            raise ValueError(f"buckets of {name} are not in ascending order")
        if bounds[-1] != math.inf:
            bounds.append(math.inf)
        self.upper_bounds = bounds
        super().__init__(name, documentation, labelnames)

    def _new_child(self) -> HistogramChild:
        return HistogramChild(self.upper_bounds)

    def _bind(self, child: HistogramChild) -> None:
        self.observe = child.observe
        self.observe_one = child.observe_one

    def observe(self, amount: float) -> None:
        self._unlabelled().observe(amount)

    def observe_one(self) -> None:
        self._unlabelled().observe_one()

    def _add_samples(self, metric: Metric, labels: dict[str, str], child: HistogramChild) -> None:
        cumulative = 0.0
        for bound, count in zip(self.upper_bounds, list(child.counts)):
            cumulative += count
            metric.add_sample(self.name + "_bucket", {**labels, "le": floatToGoString(bound)}, cumulative)
        metric.add_sample(self.name + "_count", labels, cumulative)
        if self.upper_bounds[0] >= 0:
            metric.add_sample(self.name + "_sum", labels, child.sum)
        if _use_created():
            metric.add_sample(self.name + "_created", labels, child.created)


class HistogramSumCounter(_LoopMetric):
    """A counter that reads the sum of an unlabelled LoopHistogram, for a count that the histogram
    already adds up: the request path then updates one series instead of two."""

    kind = "counter"

    def __init__(self, name: str, documentation: str, histogram: LoopHistogram) -> None:
        self._histogram = histogram
        super().__init__(name, documentation)

    def _new_child(self) -> HistogramChild:
        return self._histogram._unlabelled()

    def _bind(self, child: HistogramChild) -> None:
        pass

    def _add_samples(self, metric: Metric, labels: dict[str, str], child: HistogramChild) -> None:
        metric.add_sample(self.name + "_total", labels, child.sum)
        if _use_created():
            metric.add_sample(self.name + "_created", labels, child.created)


class LoopMetricsCollector(Collector):
    """Exports LoopCounter and LoopHistogram families from a prometheus_client registry."""

    def __init__(self, metrics: Sequence[_LoopMetric]) -> None:
        self._metrics = list(metrics)

    def collect(self) -> Iterator[Metric]:
        for metric in self._metrics:
            yield metric.collect()


EVENTS_RECEIVED = LoopCounter("analytics_events_received", "Events accepted by the collector, by event type",
                              ["type"])
BATCH_SIZE = LoopHistogram(
    "analytics_batch_size_histogram",
    "Events per accepted request",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
)
EVENTS_QUEUED = HistogramSumCounter("analytics_events_queued", "Events written to the Redis stream", BATCH_SIZE)
"""Every accepted request's events are written to the stream, so this is BATCH_SIZE's sum."""
EVENTS_REJECTED = LoopCounter(
    "weir_collect_rejected_events",
    "Events rejected by the collector, by reason; a request rejected before its events were read counts once",
    ["reason"],
)
REQUEST_SECONDS = LoopHistogram(
    "weir_collect_request_seconds",
    "Time to answer a request on an event route, seconds",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
REQUESTS = LoopCounter("weir_collect_requests", "Requests on event routes, by route and HTTP status",
                       ["route", "status"])
# Registered in two parts around the gauge, so /metrics lists the families in the same order as before.
REGISTRY.register(LoopMetricsCollector([EVENTS_RECEIVED, EVENTS_QUEUED, BATCH_SIZE, EVENTS_REJECTED, REQUEST_SECONDS,
                                        REQUESTS]))
STREAM_BACKLOG = Gauge(
    "weir_collect_stream_backlog_entries",
    "Stream entries not yet processed (group lag plus pending), as the collector last read it",
)
STREAM_WRITE_SECONDS = LoopHistogram(
    "weir_collect_stream_write_seconds",
    "Time of one stream write (XADD), seconds",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
REQUESTS_PER_WRITE = LoopHistogram(
    "weir_collect_requests_per_write",
    "Requests whose events one stream write carried",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200),
)
STREAM_WRITE_FAILURES = LoopCounter("weir_collect_stream_write_failures", "Stream writes that failed")
REGISTRY.register(LoopMetricsCollector([STREAM_WRITE_SECONDS, REQUESTS_PER_WRITE, STREAM_WRITE_FAILURES]))
