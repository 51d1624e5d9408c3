"""Every metric that the dashboards, the alert rules and the processor autoscaler read is exported.

The collector, the processor and the API run in this process (the `stack` fixture), and the
realtime service runs beside them. They share one prometheus_client registry, so one scrape of
/metrics lists what all four export. A valid and an invalid event, one API request and one open
live feed come first, so labelled series have samples. Names from redis_exporter and from
Prometheus itself are listed below, because no Weir service exports them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import promql_parser
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from query.live import create_realtime_app
from query.live_settings import RealtimeSettings
from sinks.sites import upsert_site
from streams.sites import Site, SiteDirectory
from tests.conftest import API_KEY, free_port, wait_until_processed
from tests.deploy.deploy_files import (DASHBOARDS, GRAFANA_INTERVALS, K8S, alert_rules, dashboard_expressions,
                                       load_dashboard, load_yaml_documents, metric_names)

# From redis_exporter: its INFO field map (exporter/exporter.go: used_memory -> memory_used_bytes,
# maxmemory -> memory_max_bytes, aof_last_write_status) and its stream metrics
# (exporter/streams.go: stream_length), all under the namespace "redis", plus redis_up.
REDIS_EXPORTER_NAMES = {"redis_up", "redis_memory_used_bytes", "redis_memory_max_bytes", "redis_aof_last_write_status",
                        "redis_stream_length"}
# Added by Prometheus to every scrape target.
PROMETHEUS_NAMES = {"up"}
# Added by Prometheus to every series, or by the scrape configuration's relabelling.
TARGET_LABELS = {"job", "instance", "namespace", "pod"}
SUFFIXES = {"counter": ["_total", "_created"], "histogram": ["_bucket", "_count", "_sum", "_created"],
            "gauge": [""], "summary": ["", "_count", "_sum", "_created"], "info": ["_info"]}


def used_expressions() -> list[tuple[str, str]]:
    """Return (where, PromQL) for every query of the dashboards, the alert rules and the autoscaler."""
    used = [(f"{path.name}: {title}", expr)
            for path in DASHBOARDS for title, expr in dashboard_expressions(load_dashboard(path))]
    used += [(f"alert {rule['alert']}", rule["expr"]) for rule in alert_rules()]
    adapter = load_yaml_documents(K8S / "prometheus-adapter-values.yaml")[0]
    used += [("prometheus-adapter", rule["seriesQuery"]) for rule in adapter["rules"]["external"]]
    return used


def autoscaler_metric_names() -> set[str]:
    return {metric["external"]["metric"]["name"]
            for doc in load_yaml_documents(K8S / "processor.yaml") if doc["kind"] == "HorizontalPodAutoscaler"
            for metric in doc["spec"]["metrics"] if metric["type"] == "External"}


def exported(text: str) -> tuple[set[str], dict[str, set[str]]]:
    """Return the sample names a scrape declares, and the label names seen on each sample name."""
    names: set[str] = set()
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, [""]))
        for sample in family.samples:
            names.add(sample.name)
            labels.setdefault(sample.name, set()).update(sample.labels)
    return names, labels


def grouping_labels(expression: str) -> list[tuple[set[str], set[str]]]:
    """Return (labels of a `by` clause, metric names under it) for each aggregation in `expression`."""
    found = []

    def walk(node) -> None:
        if isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None \
                and node.modifier.type == promql_parser.AggModifierType.By:
            found.append((set(node.modifier.labels), metric_names(node.expr.prettify())))
        for child in _children(node):
            walk(child)

    walk(promql_parser.parse(GRAFANA_INTERVALS.sub("5m", expression)))
    return found


def _children(node) -> list:
    for attribute in ("lhs", "rhs", "expr", "param", "vector_selector"):
        child = getattr(node, attribute, None)
        if child is not None and not isinstance(child, (str, int, float)):
            yield child
    yield from getattr(node, "args", []) or []


@pytest.fixture
async def realtime_url(stack) -> AsyncIterator[str]:
    """The realtime service on a free port, on the stack's Redis."""
    port = free_port()
    settings = RealtimeSettings(NODE_ENV="development", REDIS_URL=stack.redis_url, API_KEYS=API_KEY, PORT=port)
    runner = web.AppRunner(create_realtime_app(settings), shutdown_timeout=2)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.fixture
async def scrape(stack, realtime_url, db, redis) -> tuple[set[str], dict[str, set[str]]]:
    site = Site("metrics.example", "UTC")
    await upsert_site(db, site)
    await SiteDirectory(redis).publish([site])
    async with aiohttp.ClientSession() as http:
        events = [{"site": "metrics.example", "url": "https://metrics.example/"},
                  {"site": "nosuch.example", "url": "https://nosuch.example/"}]
        async with http.post(f"{stack.collector_url}/collect", json={"events": events}) as response:
            assert response.status == 202, await response.text()
        await wait_until_processed(redis)
        async with http.get(f"{stack.api_url}/api/sites", headers={"Authorization": f"Bearer {API_KEY}"}) as response:
            assert response.status == 200
        async with http.get(f"{realtime_url}/live/metrics.example", params={"key": API_KEY}) as feed:
            assert feed.status == 200, await feed.text()
            await asyncio.wait_for(feed.content.readuntil(b"data:"), 5)
            texts = []
            for url in (stack.collector_url, stack.api_url, realtime_url):
                async with http.get(f"{url}/metrics") as response:
                    texts.append(await response.text())
    # One registry serves every port, so the scrapes must agree on what exists.
    names, labels = exported(texts[0])
    assert all(exported(text)[0] == names for text in texts[1:])
    return names, labels


async def test_used_metrics_are_exported(scrape):
    names, _labels = scrape
    used = {(where, name) for where, expr in used_expressions() for name in metric_names(expr)}
    used |= {("processor autoscaler", name) for name in autoscaler_metric_names()}

    missing = sorted((where, name) for where, name in used
                     if name not in names | REDIS_EXPORTER_NAMES | PROMETHEUS_NAMES)

    assert missing == []


def test_external_names_are_used():
    used = {name for _where, expr in used_expressions() for name in metric_names(expr)}

    assert REDIS_EXPORTER_NAMES | PROMETHEUS_NAMES <= used


async def test_design_metric_names_exported(scrape):
    names, _labels = scrape

    for name in ("analytics_events_received_total", "analytics_events_queued_total",
                 "analytics_batch_size_histogram_bucket", "analytics_events_processed_total",
                 "analytics_processing_duration_seconds_bucket", "analytics_queue_depth",
                 "analytics_api_requests_total", "analytics_api_latency_seconds_bucket"):
        assert name in names, name


async def test_grouping_labels_exist_on_metrics(scrape):
    _names, labels = scrape
    problems = []
    for where, expression in used_expressions():
        for grouped, metrics in grouping_labels(expression):
            seen = [labels[name] for name in metrics if name in labels]
            if not seen:
                continue  # no sample yet, so its labels are unknown
            unknown = grouped - TARGET_LABELS - set().union(*seen)
            if unknown:
                problems.append(f"{where}: by {sorted(unknown)} on {sorted(metrics)}")

    assert problems == []


async def test_matcher_labels_exist_on_metrics(scrape):
    _names, labels = scrape
    problems = []
    for where, expression in used_expressions():
        for name, matcher in _matchers(promql_parser.parse(GRAFANA_INTERVALS.sub("5m", expression))):
            if name in labels and matcher not in labels[name] | TARGET_LABELS:
                problems.append(f"{where}: {name}{{{matcher}}}")

    assert problems == []


def _matchers(node):
    if isinstance(node, promql_parser.VectorSelector):
        for matcher in node.matchers.matchers:
            if matcher.name != "__name__":
                yield node.name, matcher.name
        return
    for child in _children(node):
        yield from _matchers(child)
