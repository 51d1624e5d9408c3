"""Prometheus scrape configurations and alert rules: checked by promtool, unit-tested, and consistent.

promtool comes from Debian's `prometheus` package. Without it, the promtool tests are skipped and
the structural checks still run.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.deploy.deploy_files import ALERT_RULES, PROMETHEUS, alert_rules, find_tool, load_yaml_documents, metric_names

OPERATIONS_GUIDE = REPO / "docs" / "operations.md"
RULE_TESTS = Path(__file__).parent / "alert_rules_test.yml"
WEIR_JOBS = {"weir-collector": 4001, "weir-processor": 4010, "weir-api": 4002, "weir-realtime": 4003}

needs_promtool = pytest.mark.skipif(find_tool("promtool") is None,
                                    reason="promtool is not installed (apt-get install -y prometheus)")


def run_promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([find_tool("promtool"), *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def config_beside_rules(tmp_path: Path, name: str) -> Path:
    """Copy a scrape configuration and the rules into tmp_path, with the rule path made local."""
    text = (PROMETHEUS / name).read_text().replace("/etc/prometheus/alerts.yml", "alerts.yml")
    shutil.copy(ALERT_RULES, tmp_path / "alerts.yml")
    (tmp_path / name).write_text(text)
    return tmp_path / name


@needs_promtool
def test_promtool_checks_rules():
    result = run_promtool("check", "rules", str(ALERT_RULES))

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


@needs_promtool
def test_promtool_checks_compose_config(tmp_path):
    result = run_promtool("check", "config", str(config_beside_rules(tmp_path, "prometheus.yml")))

    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_checks_kubernetes_config(tmp_path):
    config = config_beside_rules(tmp_path, "prometheus-kubernetes.yml")
    data = yaml.safe_load(config.read_text())
    # Debian's promtool is built without Kubernetes discovery, so a static target stands in for
    # the discovery block. The relabelling rules, which carry the logic, are still checked.
    for job in data["scrape_configs"]:
        if job.pop("kubernetes_sd_configs", None) is not None:
            job["static_configs"] = [{"targets": ["pod.example:4001"]}]
    config.write_text(yaml.safe_dump(data))

    result = run_promtool("check", "config", str(config))

    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_alert_rules_unit_tests_pass():
    result = run_promtool("test", "rules", str(RULE_TESTS))

    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_well_formed():
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]

    assert len(names) == len(set(names))
    for rule in rules:
        metric_names(rule["expr"])
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["annotations"]["description"], rule["alert"]


def test_alerts_cover_required_conditions():
    used = {name for rule in alert_rules() for name in metric_names(rule["expr"])}

    for name in ("weir_stream_lag_entries", "weir_stream_pending_entries", "weir_entries_dead_lettered_total",
                 "weir_table_last_write_timestamp_seconds", "weir_table_lag_seconds", "weir_collect_requests_total",
                 "analytics_api_requests_total", "analytics_api_latency_seconds_bucket", "redis_memory_used_bytes"):
        assert name in used, name


def test_operations_guide_covers_every_alert():
    guide = OPERATIONS_GUIDE.read_text()

    missing = [rule["alert"] for rule in alert_rules() if f"`{rule['alert']}`" not in guide]

    assert missing == []


def test_alert_rules_unit_tests_use_shipped_rules():
    tests = load_yaml_documents(RULE_TESTS)[0]

    assert [(RULE_TESTS.parent / path).resolve() for path in tests["rule_files"]] == [ALERT_RULES.resolve()]


def test_compose_scrape_jobs_reach_every_service():
    config = load_yaml_documents(PROMETHEUS / "prometheus.yml")[0]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}

    for job_name, port in WEIR_JOBS.items():
        discovery = jobs[job_name]["dns_sd_configs"][0]
        assert discovery["port"] == port
        assert discovery["type"] == "A"
    assert jobs["redis"]["static_configs"][0]["targets"] == ["redis-exporter:9121"]
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]


def test_kubernetes_scrape_uses_same_job_names():
    config = load_yaml_documents(PROMETHEUS / "prometheus-kubernetes.yml")[0]
    relabels = config["scrape_configs"][0]["relabel_configs"]
    targets = {rule.get("target_label"): rule["source_labels"] for rule in relabels if "target_label" in rule}

    assert targets["job"] == ["__meta_kubernetes_pod_label_app_kubernetes_io_name"]
    assert targets["namespace"] == ["__meta_kubernetes_namespace"]
