"""Grafana dashboards and provisioning: valid dashboard JSON that reads the provisioned data source.

Dashboard and panel keys are checked against Grafana's dashboard schema as the PyPI package
grafana-foundation-sdk encodes it: a key that the schema's models drop on a round trip is one
Grafana does not know. The schema leaves panel options and query targets open; target keys,
layout, queries and the provisioning paths are checked here.
"""

from __future__ import annotations

import json

import pytest
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import Dashboard

from tests.deploy.deploy_files import (COMPOSE_FILE, DASHBOARDS, GRAFANA, dashboard_expressions, dashboard_panels,
                                       load_dashboard, load_yaml_documents, metric_names)

REQUIRED_FILES = {"collector-metrics.json", "processor-metrics.json", "api-metrics.json", "business-metrics.json"}
PANEL_TYPES = {"row", "timeseries", "stat", "bargauge", "heatmap", "table"}
GRID_COLUMNS = 24
PROMETHEUS_TARGET_KEYS = {"refId", "datasource", "expr", "legendFormat", "range", "instant", "format", "interval",
                          "hide", "editorMode", "exemplar"}


def dropped_keys(original: object, encoded: object, path: str = "") -> list[str]:
    """Return the paths of keys in `original` that are missing from `encoded`."""
    if isinstance(original, dict) and isinstance(encoded, dict):
        missing = [f"{path}/{key}" for key in original if key not in encoded]
        return missing + [item for key in original if key in encoded
                          for item in dropped_keys(original[key], encoded[key], f"{path}/{key}")]
    if isinstance(original, list) and isinstance(encoded, list):
        return [item for index, (a, b) in enumerate(zip(original, encoded))
                for item in dropped_keys(a, b, f"{path}[{index}]")]
    return []


@pytest.fixture(scope="module")
def datasource_uid() -> str:
    provisioning = load_yaml_documents(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")[0]
    (source,) = provisioning["datasources"]
    assert source["type"] == "prometheus"
    return source["uid"]


def test_required_dashboards_exist():
    assert {path.name for path in DASHBOARDS} == REQUIRED_FILES


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda path: path.name)
def test_dashboard_keys_match_schema(path):
    original = load_dashboard(path)
    encoded = json.loads(json.dumps(Dashboard.from_json(original), cls=JSONEncoder))

    assert dropped_keys(original, encoded) == []


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda path: path.name)
def test_dashboard_structure(path, datasource_uid):
    dashboard = load_dashboard(path)
    panels = list(dashboard_panels(dashboard))
    ids = [panel["id"] for panel in panels]

    assert dashboard["uid"] and len(dashboard["uid"]) <= 40
    assert dashboard["title"].startswith("Weir / ")
    assert isinstance(dashboard["schemaVersion"], int)
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["type"] in PANEL_TYPES, panel["title"]
        grid = panel["gridPos"]
        assert all(isinstance(grid[key], int) for key in ("x", "y", "w", "h")), panel["title"]
        assert grid["x"] + grid["w"] <= GRID_COLUMNS, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == datasource_uid, panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert ref_ids and len(ref_ids) == len(set(ref_ids)), panel["title"]
        assert all(target["datasource"]["uid"] == datasource_uid for target in panel["targets"]), panel["title"]
        # The schema leaves query targets open, so their Prometheus keys are checked here.
        assert all(set(target) <= PROMETHEUS_TARGET_KEYS for target in panel["targets"]), panel["title"]
        assert all(target["expr"] for target in panel["targets"]), panel["title"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda path: path.name)
def test_panels_do_not_overlap(path):
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard_panels(load_dashboard(path)):
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda path: path.name)
def test_every_query_parses(path):
    for title, expression in dashboard_expressions(load_dashboard(path)):
        assert metric_names(expression), f"{title}: {expression} reads no metric"


def test_dashboard_uids_unique():
    uids = [load_dashboard(path)["uid"] for path in DASHBOARDS]

    assert len(uids) == len(set(uids))


def test_provisioning_loads_mounted_folder():
    provider = load_yaml_documents(GRAFANA / "provisioning" / "dashboards" / "weir.yml")[0]["providers"][0]
    grafana = load_yaml_documents(COMPOSE_FILE)[0]["services"]["grafana"]
    mounts = dict(volume.split(":")[:2][::-1] for volume in grafana["volumes"])

    assert provider["type"] == "file"
    assert mounts[provider["options"]["path"]] == "./ops/deploy/grafana/dashboards"
    assert mounts["/etc/grafana/provisioning"] == "./ops/deploy/grafana/provisioning"


def test_datasource_points_at_compose_prometheus():
    source = load_yaml_documents(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")[0]["datasources"][0]

    assert source["url"] == "http://prometheus:9090"
    assert "prometheus" in load_yaml_documents(COMPOSE_FILE)[0]["services"]
