"""Kubernetes manifests: valid against the Kubernetes API schemas, and wired to the services as they run.

Schemas come from the PyPI package kubernetes-validate (JSON schemas of Kubernetes 1.25 to 1.37,
strict mode rejects unknown fields). The kustomization is rendered with `kubectl kustomize`
where kubectl is installed, and otherwise assembled from its resource list.
"""

from __future__ import annotations

import subprocess

import kubernetes_validate
import pytest
import yaml

from ingest.settings import CollectorSettings
from query.live_settings import RealtimeSettings
from query.settings import ApiSettings
from sinks.settings import ProcessorSettings
from tests.deploy.deploy_files import K8S, find_tool, load_yaml_documents

# Kubernetes 1.27, an older release that already has autoscaling/v2 and policy/v1, and the newest schema shipped.
KUBERNETES_VERSIONS = ["1.27.0", kubernetes_validate.latest_version()]
SERVICES = {
    "weir-collector": ("collector", 4001, CollectorSettings),
    "weir-processor": ("processor", 4010, ProcessorSettings),
    "weir-api": ("api", 4002, ApiSettings),
    "weir-realtime": ("realtime", 4003, RealtimeSettings),
}
NOT_RESOURCES = {"kustomization.yaml", "secret.example.yaml", "prometheus-adapter-values.yaml"}


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    kubectl = find_tool("kubectl")
    if kubectl is not None:
        result = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    kustomization = load_yaml_documents(K8S / "kustomization.yaml")[0]
    documents = [doc for name in kustomization["resources"] for doc in load_yaml_documents(K8S / name)]
    for doc in documents:
        if doc["kind"] != "Namespace":
            doc["metadata"]["namespace"] = kustomization["namespace"]
    return documents


def by_kind(documents: list[dict], kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in documents if doc["kind"] == kind}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_rendered_manifests_match_api_schema(rendered, version):
    for doc in rendered:
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_secret_template_matches_api_schema(version):
    for doc in load_yaml_documents(K8S / "secret.example.yaml"):
        kubernetes_validate.validate(doc, version, strict=True)


def test_strict_validation_rejects_unknown_field():
    deployment = load_yaml_documents(K8S / "api.yaml")[0]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbes"] = container.pop("readinessProbe")

    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def test_every_manifest_is_in_kustomization():
    listed = set(load_yaml_documents(K8S / "kustomization.yaml")[0]["resources"])
    present = {path.name for path in K8S.glob("*.yaml")} - NOT_RESOURCES

    assert listed == present


def test_every_service_has_deployment_service_and_budget(rendered):
    deployments, services, budgets = by_kind(rendered, "Deployment"), by_kind(rendered, "Service"), by_kind(
        rendered, "PodDisruptionBudget")

    assert set(deployments) == set(SERVICES)
    for name, deployment in deployments.items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert services[name]["spec"]["selector"].items() <= labels.items()
        assert budgets[name]["spec"]["selector"]["matchLabels"].items() <= labels.items()


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_probes_ask_health_on_service_port(rendered, name):
    command, port, _settings = SERVICES[name]
    container = by_kind(rendered, "Deployment")[name]["spec"]["template"]["spec"]["containers"][0]
    ports = {item["name"]: item["containerPort"] for item in container["ports"]}

    assert container["args"] == [command]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/health"
        assert ports[container[probe]["httpGet"]["port"]] == port
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_pods_run_as_image_user(rendered, name):
    security = by_kind(rendered, "Deployment")[name]["spec"]["template"]["spec"]["securityContext"]

    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == 10001


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_environment_matches_settings(rendered, name):
    _command, _port, settings = SERVICES[name]
    config = by_kind(rendered, "ConfigMap")["weir-config"]["data"]
    container = by_kind(rendered, "Deployment")[name]["spec"]["template"]["spec"]["containers"][0]
    variables = {item["name"] for item in container.get("env", [])}
    # Each service reads the shared ConfigMap and ignores the variables that are not its own.
    available = variables | set(config)
    required = {field for field, info in settings.model_fields.items() if info.is_required()}

    assert variables - set(settings.model_fields) == set()
    assert required - available == set()


def test_secret_keys_exist_in_template(rendered):
    template = load_yaml_documents(K8S / "secret.example.yaml")[0]
    referenced = {(item["valueFrom"]["secretKeyRef"]["name"], item["valueFrom"]["secretKeyRef"]["key"])
                  for deployment in by_kind(rendered, "Deployment").values()
                  for container in deployment["spec"]["template"]["spec"]["containers"]
                  for item in container.get("env", []) if "secretKeyRef" in item.get("valueFrom", {})}

    assert {name for name, _key in referenced} == {template["metadata"]["name"]}
    assert {key for _name, key in referenced} <= set(template["stringData"])


def test_collector_autoscales_on_cpu(rendered):
    collector = by_kind(rendered, "HorizontalPodAutoscaler")["weir-collector"]["spec"]

    assert collector["scaleTargetRef"]["name"] == "weir-collector"
    assert collector["metrics"][0]["resource"]["name"] == "cpu"


def test_processor_autoscales_on_stream_lag(rendered):
    processor = by_kind(rendered, "HorizontalPodAutoscaler")["weir-processor"]["spec"]

    assert processor["scaleTargetRef"]["name"] == "weir-processor"
    assert processor["metrics"][0]["type"] == "External"
    assert processor["metrics"][0]["external"]["metric"]["name"] == "weir_stream_lag_entries"


def test_adapter_serves_processor_metric():
    values = load_yaml_documents(K8S / "prometheus-adapter-values.yaml")[0]
    rule = values["rules"]["external"][0]

    assert rule["name"]["as"] == "weir_stream_lag_entries"
    assert rule["seriesQuery"].startswith("weir_stream_lag_entries{")
    assert rule["resources"]["overrides"]["namespace"] == {"resource": "namespace"}
    # Every processor exports the same lag per partition stream: a sum across pods would grow
    # with the replica count, so the query takes their max per stream and sums the streams.
    assert rule["metricsQuery"].startswith("sum by (<<.GroupBy>>) (max by (<<.GroupBy>>, stream) (")


def test_ingress_routes_reach_services(rendered):
    services = by_kind(rendered, "Service")
    routes = {}
    for ingress in by_kind(rendered, "Ingress").values():
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                assert backend["name"] in services
                routes[path["path"]] = backend["name"]

    assert routes["/collect"] == routes["/api/event"] == routes["/v1"] == "weir-collector"
    assert routes["/live"] == routes["/realtime"] == "weir-realtime"
    assert routes["/"] == "weir-api"
    assert routes["/metrics"] == "weir-blocked"
    assert "selector" not in services["weir-blocked"]["spec"]
