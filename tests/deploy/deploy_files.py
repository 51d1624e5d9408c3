"""Paths of the deployment files and helpers the deploy tests share: YAML loading, tool lookup and
the metric names a PromQL expression reads."""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import promql_parser
import yaml

from tests.conftest import REPO

DEPLOY = REPO / "ops" / "deploy"
COMPOSE_FILE = REPO / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
K8S = DEPLOY / "k8s"
NGINX_CONF = DEPLOY / "nginx" / "nginx.conf"
PROMETHEUS = DEPLOY / "prometheus"
ALERT_RULES = PROMETHEUS / "alerts.yml"
GRAFANA = DEPLOY / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
ENV_TEMPLATES = sorted((DEPLOY / "env").glob("*.env.example"))

# Grafana replaces these before a query reaches Prometheus; any duration parses the same.
GRAFANA_INTERVALS = re.compile(r"\$__(rate_interval|interval|range)\b")


def find_tool(name: str) -> str | None:
    """Return the path of a command in the virtual environment or on PATH, or None."""
    beside_python = Path(sys.executable).parent / name
    if beside_python.exists():
        return str(beside_python)
    return shutil.which(name)


def load_yaml_documents(path: Path) -> list[dict]:
    with path.open() as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


def load_dashboard(path: Path) -> dict:
    return json.loads(path.read_text())


def dashboard_panels(dashboard: dict) -> Iterator[dict]:
    """Yield every panel, including those folded inside collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def dashboard_expressions(dashboard: dict) -> Iterator[tuple[str, str]]:
    """Yield (panel title, PromQL) for every query target, with Grafana's interval macros filled in."""
    for panel in dashboard_panels(dashboard):
        for target in panel.get("targets", []):
            if "expr" in target:
                yield panel.get("title", "?"), GRAFANA_INTERVALS.sub("5m", target["expr"])


def alert_rules() -> list[dict]:
    return [rule for group in load_yaml_documents(ALERT_RULES)[0]["groups"] for rule in group["rules"]]


def metric_names(expression: str) -> set[str]:
    """Return the metric names an expression selects; raise ValueError when it does not parse."""
    return set(_selected_names(promql_parser.parse(expression)))


def _selected_names(node) -> Iterator[str]:
    if isinstance(node, promql_parser.VectorSelector):
        if node.name:
            yield node.name
        for matcher in node.matchers.matchers:
            if matcher.name == "__name__":
                yield matcher.value
        return
    if isinstance(node, promql_parser.MatrixSelector):
        yield from _selected_names(node.vector_selector)
        return
    for child in _children(node):
        yield from _selected_names(child)


def _children(node) -> list:
    if isinstance(node, promql_parser.BinaryExpr):
        return [node.lhs, node.rhs]
    if isinstance(node, promql_parser.Call):
        return list(node.args)
    if isinstance(node, promql_parser.AggregateExpr):
        return [node.expr] + ([node.param] if node.param is not None else [])
    if isinstance(node, (promql_parser.ParenExpr, promql_parser.UnaryExpr, promql_parser.SubqueryExpr)):
        return [node.expr]
    return []
