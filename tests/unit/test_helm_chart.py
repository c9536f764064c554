"""The Helm chart (helm/imaging-cds): it renders, passes Helm's strict lint, validates against the Kubernetes
schemas, and every pod in it meets the security and operations policy a hospital's review asks for.

Rendering uses Helm v4's own engine (helm-python-sdk binds its Go SDK), so templates, values.schema.json and lint
behave as ``helm install`` / ``helm lint --strict`` do. kubernetes-validate carries the Kubernetes JSON schemas in
its wheel: nothing here needs a cluster or the network.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from imaging_cds.config import Settings
from imaging_cds.gateway.http_app import create_app
from imaging_cds.jobs.queue import queue_from_settings

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "imaging-cds"
PRODUCTION_VALUES = REPO / "helm" / "examples" / "values-production.yaml"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion; native gRPC probes) and a current one.
KUBERNETES_VERSIONS = ("1.27.0", "1.35.0")
RELEASE, NAMESPACE = "imaging-cds", "imaging-cds"
# Kinds from operators the chart can use; kubernetes-validate has no schema for them (checked field by field below).
CUSTOM_API_GROUPS = ("keda.sh/", "monitoring.coreos.com/")
WORKLOAD_KINDS = ("Deployment", "StatefulSet")
# The volume types the restricted Pod Security Standard allows.
RESTRICTED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim"}
RESTRICTED_VOLUME_TYPES |= {"projected", "secret"}

Manifest = dict[str, Any]
GRPC_TLS_SECRET = "imaging-cds-gateway-grpc-tls"

SCENARIOS: dict[str, dict[str, Any] | None] = {
    "default": None,
    "production": yaml.safe_load(PRODUCTION_VALUES.read_text()),
    # The other branches: external Redis and Triton, models on a shared claim, KEDA against the in-chart Redis.
    "external-services": {
        "redis": {"enabled": False, "external": {"existingSecret": "redis-url"}},
        "triton": {"enabled": False, "external": {"grpcUrl": "triton.ml.svc:8001"}},
        "worker": {
            "autoscaling": {
                "keda": {
                    "enabled": True,
                    "redisAddress": "redis.db.svc:6379",
                    "passwordSecret": {"name": "redis-auth", "key": "password"},
                }
            }
        },
        "networkPolicy": {"egress": {"redis": [{"ipBlock": {"cidr": "10.1.2.3/32"}}]}},
    },
    "shared-model-claim": {
        "triton": {
            "gpu": {"count": 0},
            "modelRepository": {"source": "pvc", "pvc": {"claimName": "models", "sharedWithServices": True}},
        },
        "redis": {"auth": {"enabled": False}},
        "worker": {"autoscaling": {"keda": {"enabled": True, "minReplicas": 0}}},
    },
    # The gateway serves gRPC with TLS from an existing Secret; one log level for all, overridden for the gateway.
    "grpc-tls": {
        "app": {"logLevel": "WARNING"},
        "gateway": {"logLevel": "DEBUG", "grpcTls": {"enabled": True, "secretName": GRPC_TLS_SECRET}},
    },
    # The EHR wants SMART Backend Services: the client id, and the private key from an existing Secret.
    "smart-auth": {
        "fhir": {
            "url": "https://ehr.hospital.example/fhir/R4",
            "auth": "smart",
            "smart": {"clientId": "imaging-cds", "existingSecret": "imaging-cds-smart", "keyId": "k1"},
        }
    },
    # Triton as a sidecar in each worker pod, sharing its /dev/shm (tensors through POSIX shared memory), on CPU.
    "triton-sidecar": {"triton": {"placement": "sidecar", "gpu": {"count": 0}}},
}


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render(chart: helm.Chart, values: dict[str, Any] | None) -> dict[str, str]:
    return chart.render(values, name=RELEASE, namespace=NAMESPACE)


def manifests_of(rendered: dict[str, str]) -> list[Manifest]:
    docs = []
    for path, text in rendered.items():
        if path.endswith(".txt"):
            continue
        docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return docs


@pytest.fixture(scope="module")
def rendered(chart: helm.Chart) -> dict[str, list[Manifest]]:
    return {name: manifests_of(render(chart, values)) for name, values in SCENARIOS.items()}


def find(docs: list[Manifest], kind: str, name_suffix: str = "") -> list[Manifest]:
    return [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(name_suffix)]


def one(docs: list[Manifest], kind: str, name_suffix: str) -> Manifest:
    found = find(docs, kind, name_suffix)
    assert len(found) == 1, f"expected one {kind} *{name_suffix}, found {[d['metadata']['name'] for d in found]}"
    return found[0]


def workloads(rendered: dict[str, list[Manifest]]) -> Iterator[tuple[str, Manifest]]:
    for scenario, docs in rendered.items():
        for doc in docs:
            if doc["kind"] in WORKLOAD_KINDS:
                yield f"{scenario}:{doc['kind']}/{doc['metadata']['name']}", doc


def containers(pod: Manifest) -> list[Manifest]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def env_of(container: Manifest) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


# -- renders, lints, validates ----------------------------------------------------------------------------------


def test_default_values_deploy_every_component(rendered: dict[str, list[Manifest]]) -> None:
    docs = rendered["default"]
    for suffix in ("-gateway", "-worker", "-triton"):
        one(docs, "Deployment", suffix)
    one(docs, "StatefulSet", "-redis")
    for suffix in ("-gateway", "-triton", "-redis"):
        one(docs, "Service", suffix)
    assert one(docs, "HorizontalPodAutoscaler", "-worker")["spec"]["scaleTargetRef"]["name"].endswith("-worker")
    assert not find(docs, "ScaledObject") and not find(docs, "ServiceMonitor") and not find(docs, "Ingress")
    assert len(find(docs, "PodDisruptionBudget")) == 4
    assert len(find(docs, "NetworkPolicy")) == 4


def test_production_values_use_keda_ingress_tls_and_a_service_monitor(rendered: dict[str, list[Manifest]]) -> None:
    docs = rendered["production"]
    assert not find(docs, "HorizontalPodAutoscaler"), "KEDA makes its own HPA; two would fight"
    one(docs, "ScaledObject", "-worker")
    one(docs, "ServiceMonitor", "-triton")
    ingresses = find(docs, "Ingress")
    assert {i["metadata"]["name"].rsplit("-", 1)[1] for i in ingresses} == {"http", "grpc"}
    assert all(i["spec"]["tls"][0]["secretName"] for i in ingresses)
    triton = one(docs, "Deployment", "-triton")["spec"]["template"]["spec"]
    assert "--model-repository=s3://" in " ".join(triton["containers"][0]["args"])
    assert triton["tolerations"] and triton["nodeSelector"]
    assert "@sha256:" in one(docs, "Deployment", "-gateway")["spec"]["template"]["spec"]["containers"][0]["image"]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_helm_lint_strict_passes(scenario: str) -> None:
    report = helm.lint(
        CHART, SCENARIOS[scenario], strict=True, namespace=NAMESPACE, kube_version=KUBERNETES_VERSIONS[0]
    )
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # 2 warning, 3 error; 1 is info ("icon")
    assert not problems and not report["errors"], problems or report["errors"]


def test_helm_lint_strict_reports_values_the_schema_refuses() -> None:
    report = helm.lint(CHART, {"reports": {"status": "draft"}}, strict=True)
    assert any("/reports/status" in e for e in report["errors"])


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_validates_against_the_kubernetes_schemas(
    rendered: dict[str, list[Manifest]], version: str
) -> None:
    checked = 0
    for scenario, docs in rendered.items():
        for doc in docs:
            if doc["apiVersion"].startswith(CUSTOM_API_GROUPS):
                continue
            try:
                assert kubernetes_validate.validate(doc, version, strict=True) == version.rsplit(".", 1)[0]
            except kubernetes_validate.ValidationError as err:
                pytest.fail(f"{scenario}: {doc['kind']}/{doc['metadata']['name']}: {err.message} at {list(err.path)}")
            checked += 1
    assert checked > 60


def test_the_schema_validator_rejects_a_wrong_manifest(rendered: dict[str, list[Manifest]]) -> None:
    """The check above is not vacuous: an unknown field and a wrong type are caught offline."""
    gateway = one(rendered["default"], "Deployment", "-gateway")
    misspelt = yaml.safe_load(yaml.safe_dump(gateway))
    misspelt["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"grpc": {"port": 50051}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(misspelt, KUBERNETES_VERSIONS[0], strict=True)
    wrong_type = yaml.safe_load(yaml.safe_dump(gateway))
    wrong_type["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong_type, KUBERNETES_VERSIONS[0], strict=True)


# -- values.schema.json refuses wrong values at install time ----------------------------------------------------

BAD_VALUES = {
    "report status": ({"reports": {"status": "draft"}}, "/reports/status"),
    "misspelt key": ({"gatway": {"replicas": 3}}, "gatway"),
    "latest tag": ({"triton": {"image": {"tag": "latest"}}}, "/triton/image/tag"),
    "digest": ({"image": {"digest": "sha256:abc"}}, "/image/digest"),
    "no limits": ({"worker": {"resources": {"limits": None}}}, "/worker/resources"),
    "no memory limit": ({"gateway": {"resources": {"limits": {"memory": None}}}}, "/gateway/resources/limits"),
    "FHIR URL": ({"fhir": {"url": "fhir-server:8080"}}, "/fhir/url"),
    "port": ({"gateway": {"grpcPort": 70000}}, "/gateway/grpcPort"),
    "claim": ({"triton": {"modelRepository": {"source": "pvc"}}}, "/triton/modelRepository/pvc/claimName"),
    "bucket": ({"triton": {"modelRepository": {"source": "objectStorage"}}}, "objectStorage/url"),
    "backport topic": ({"intake": {"subscriptionMode": "backport"}}, "/intake/subscriptionTopic"),
    "external Redis": ({"redis": {"enabled": False}}, "/redis/external"),
    "external Triton": ({"triton": {"enabled": False}}, "/triton/external/grpcUrl"),
    "peer": ({"networkPolicy": {"gateway": {"httpFrom": ["10.0.0.0/8"]}}}, "/networkPolicy/gateway/httpFrom/0"),
    "log level": ({"app": {"logLevel": "TRACE"}}, "/app/logLevel"),
    "component log level": ({"worker": {"logLevel": "verbose"}}, "/worker/logLevel"),
    "gRPC TLS without a Secret": ({"gateway": {"grpcTls": {"enabled": True}}}, "/gateway/grpcTls/secretName"),
    "SMART without a key": ({"fhir": {"auth": "smart", "smart": {"clientId": "x"}}}, "/fhir/smart"),
    "SMART without a client": (
        {"fhir": {"auth": "smart", "smart": {"clientId": "", "existingSecret": "k"}}},
        "/fhir/smart/clientId",
    ),
    "FHIR auth": ({"fhir": {"auth": "basic"}}, "/fhir/auth"),
    "gRPC TLS empty Secret": (
        {"gateway": {"grpcTls": {"enabled": True, "secretName": ""}}},
        "/gateway/grpcTls/secretName",
    ),
}


@pytest.mark.parametrize("values,where", BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_values_schema_refuses_wrong_values(chart: helm.Chart, values: dict[str, Any], where: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=re.escape(where)):
        render(chart, values)


def test_templates_refuse_an_image_without_a_pinned_tag(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmRenderError, match="pinned tag or a digest"):
        render(chart, {"redis": {"image": {"tag": ""}}})


# -- security policy: every container of every workload, in every scenario ---------------------------------------


def test_every_container_runs_as_non_root_on_a_read_only_root_with_no_capabilities(
    rendered: dict[str, list[Manifest]],
) -> None:
    for where, workload in workloads(rendered):
        pod = workload["spec"]["template"]["spec"]
        pod_sc = pod.get("securityContext", {})
        for c in containers(pod):
            sc = {**pod_sc, **c.get("securityContext", {})}
            name = f"{where} container {c['name']}"
            assert sc.get("runAsNonRoot") is True, name
            assert sc.get("runAsUser", 0) > 0, name
            assert sc.get("readOnlyRootFilesystem") is True, name
            assert sc.get("allowPrivilegeEscalation") is False, name
            assert sc.get("privileged", False) is False, name
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], name
            assert not sc.get("capabilities", {}).get("add"), name
            assert sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", name


def test_every_pod_meets_the_restricted_pod_security_standard(rendered: dict[str, list[Manifest]]) -> None:
    for where, workload in workloads(rendered):
        pod = workload["spec"]["template"]["spec"]
        for host in ("hostNetwork", "hostPID", "hostIPC"):
            assert not pod.get(host), f"{where}: {host}"
        for volume in pod.get("volumes", []):
            kinds = set(volume) - {"name"}
            assert kinds <= RESTRICTED_VOLUME_TYPES, f"{where}: volume {volume['name']} is {kinds}"
        for c in containers(pod):
            assert not any("hostPort" in p for p in c.get("ports", [])), f"{where}: {c['name']} uses a hostPort"
        assert pod.get("automountServiceAccountToken") is False, f"{where}: mounts a service-account token"


def test_every_container_has_cpu_and_memory_requests_and_limits(rendered: dict[str, list[Manifest]]) -> None:
    for where, workload in workloads(rendered):
        for c in containers(workload["spec"]["template"]["spec"]):
            resources = c.get("resources", {})
            for kind in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    assert resources.get(kind, {}).get(resource), f"{where} {c['name']}: no {resource} {kind}"


def test_every_image_is_pinned_by_tag_or_digest_and_never_latest(rendered: dict[str, list[Manifest]]) -> None:
    pinned = re.compile(r"^[^\s@]+(@sha256:[0-9a-f]{64}|:(?!latest$)[\w][\w.-]{0,127})$")
    for where, workload in workloads(rendered):
        for c in containers(workload["spec"]["template"]["spec"]):
            image = c["image"]
            last = image.rsplit("/", 1)[-1]
            assert ":" in last or "@" in last, f"{where} {c['name']}: {image} has no tag"
            assert pinned.match(image), f"{where} {c['name']}: {image} is not pinned"


def test_every_container_with_a_port_has_liveness_and_readiness_probes(rendered: dict[str, list[Manifest]]) -> None:
    unprobed = set()
    for where, workload in workloads(rendered):
        for c in workload["spec"]["template"]["spec"]["containers"]:
            if c.get("ports"):
                assert c.get("livenessProbe") and c.get("readinessProbe"), f"{where} {c['name']}: probes missing"
                named = {p["name"]: p["containerPort"] for p in c["ports"]}
                for probe in (c["livenessProbe"], c["readinessProbe"], c.get("startupProbe", {})):
                    action = probe.get("httpGet") or probe.get("tcpSocket") or probe.get("grpc") or {}
                    port = action.get("port")
                    assert port is None or port in named or port in named.values(), f"{where}: probe port {port}"
            else:
                unprobed.add(c["name"])
    # With its metrics port the worker is probed there (the process answers); nothing else goes unprobed.
    assert unprobed == set()


def test_workers_serve_metrics_that_prometheus_may_scrape(chart: helm.Chart) -> None:
    values = yaml.safe_load(yaml.safe_dump(SCENARIOS["production"]))
    docs = manifests_of(render(chart, values))
    pod = one(docs, "Deployment", "-worker")["spec"]["template"]["spec"]
    (worker,) = pod["containers"]
    settings = _settings_from(worker)
    assert (settings.metrics_host, settings.metrics_port) == ("0.0.0.0", 9464)
    assert worker["ports"] == [{"name": "metrics", "containerPort": 9464, "protocol": "TCP"}]
    assert worker["livenessProbe"]["httpGet"] == {"path": "/metrics", "port": "metrics"}
    (monitor,) = find(docs, "PodMonitor")
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    gateway_monitor = one(docs, "ServiceMonitor", "-gateway")
    assert gateway_monitor["spec"]["endpoints"][0] == {"port": "http", "path": "/metrics", "interval": "30s"}
    policy = one(docs, "NetworkPolicy", "-worker")["spec"]
    assert [p["port"] for rule in policy["ingress"] for p in rule["ports"]] == [9464]
    # Off: no port, no probe, no PodMonitor, and the worker still accepts no connection at all.
    values["metrics"]["workerPort"] = 0
    docs = manifests_of(render(chart, values))
    (worker,) = one(docs, "Deployment", "-worker")["spec"]["template"]["spec"]["containers"]
    assert "ports" not in worker and "livenessProbe" not in worker
    assert _settings_from(worker).metrics_port == 0 and not find(docs, "PodMonitor")
    assert "ingress" not in one(docs, "NetworkPolicy", "-worker")["spec"]


def test_gateway_probes_are_http_liveness_and_grpc_health_readiness(rendered: dict[str, list[Manifest]]) -> None:
    gateway = one(rendered["default"], "Deployment", "-gateway")["spec"]["template"]["spec"]["containers"][0]
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert gateway["startupProbe"]["httpGet"]["path"] == "/healthz"
    grpc_port = next(p["containerPort"] for p in gateway["ports"] if p["name"] == "grpc")
    assert gateway["readinessProbe"]["grpc"]["port"] == grpc_port
    triton = one(rendered["default"], "Deployment", "-triton")["spec"]["template"]["spec"]["containers"][0]
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert triton["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"


def _http_routes() -> set[str]:
    """The gateway's HTTP paths (building the app touches neither Redis nor the queue)."""
    app = create_app(queue=None, submitter=None)  # type: ignore[arg-type]
    return {getattr(route, "path", "") for route in app.routes}


def test_gateway_probes_with_grpc_tls_use_readyz_on_the_http_port(rendered: dict[str, list[Manifest]]) -> None:
    """The kubelet's gRPC probe cannot speak TLS: with TLS on, readiness is /readyz (Redis, as grpc.health.v1)."""
    docs = rendered["grpc-tls"]
    gateway = one(docs, "Deployment", "-gateway")["spec"]["template"]["spec"]["containers"][0]
    probes = {kind: gateway[kind] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert not any("grpc" in probe for probe in probes.values()), "a plaintext gRPC probe against a TLS port"
    assert {kind: p["httpGet"]["path"] for kind, p in probes.items()} == {
        "startupProbe": "/healthz",
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
    }
    assert all(p["httpGet"]["port"] == "http" for p in probes.values())
    assert {"/healthz", "/readyz"} <= _http_routes()  # real routes of the gateway's HTTP app
    # A mesh or Service-aware proxy must not take the TLS port for cleartext HTTP/2.
    service = one(docs, "Service", "-gateway")
    grpc_port = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert grpc_port["appProtocol"] == "https"
    default = one(rendered["default"], "Service", "-gateway")
    assert next(p for p in default["spec"]["ports"] if p["name"] == "grpc")["appProtocol"] == "kubernetes.io/h2c"


def test_grpc_tls_mounts_the_secret_read_only_and_points_the_settings_at_it(
    rendered: dict[str, list[Manifest]],
) -> None:
    docs = rendered["grpc-tls"]
    pod = one(docs, "Deployment", "-gateway")["spec"]["template"]["spec"]
    gateway = pod["containers"][0]
    (volume,) = [v for v in pod["volumes"] if v.get("secret", {}).get("secretName") == GRPC_TLS_SECRET]
    assert {i["key"]: i["path"] for i in volume["secret"]["items"]} == {"tls.crt": "tls.crt", "tls.key": "tls.key"}
    assert volume["secret"]["defaultMode"] & 0o007 == 0, "the private key is readable by other users"
    assert pod["securityContext"]["fsGroup"] == gateway["securityContext"]["runAsGroup"], "the group can read it"
    (mount,) = [m for m in gateway["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["readOnly"] is True and "subPath" not in mount
    settings = _settings_from(gateway)
    assert settings.grpc_tls_cert_file == f"{mount['mountPath']}/tls.crt"
    assert settings.grpc_tls_key_file == f"{mount['mountPath']}/tls.key"
    # Only the gateway serves gRPC: the workers get neither the Secret nor the variables.
    worker = one(docs, "Deployment", "-worker")["spec"]["template"]["spec"]
    assert not any("secret" in v for v in worker["volumes"])
    assert not {"IMAGING_CDS_GRPC_TLS_CERT_FILE", "IMAGING_CDS_GRPC_TLS_KEY_FILE"} & set(
        env_of(worker["containers"][0])
    )
    # Off (every other scenario): no Secret mounted, no variables, plaintext settings.
    for scenario in set(SCENARIOS) - {"grpc-tls"}:
        pod = one(rendered[scenario], "Deployment", "-gateway")["spec"]["template"]["spec"]
        assert not any(v.get("secret", {}).get("secretName") == GRPC_TLS_SECRET for v in pod["volumes"])
        plain = _settings_from(pod["containers"][0])
        assert (plain.grpc_tls_cert_file, plain.grpc_tls_key_file) == ("", ""), scenario


def test_smart_backend_auth_mounts_the_private_key_read_only_in_gateway_and_workers(
    rendered: dict[str, list[Manifest]],
) -> None:
    for suffix in ("-gateway", "-worker"):
        pod = one(rendered["smart-auth"], "Deployment", suffix)["spec"]["template"]["spec"]
        container = pod["containers"][0]
        (volume,) = [v for v in pod["volumes"] if v.get("secret", {}).get("secretName") == "imaging-cds-smart"]
        assert volume["secret"]["items"] == [{"key": "private-key.pem", "path": "private-key.pem"}]
        assert volume["secret"]["defaultMode"] & 0o007 == 0, "the private key is readable by other users"
        assert pod["securityContext"]["fsGroup"] == container["securityContext"]["runAsGroup"]
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
        assert mount["readOnly"] is True
        settings = _settings_from(container)
        assert (settings.fhir_auth, settings.fhir_smart_client_id, settings.fhir_smart_key_id) == (
            "smart",
            "imaging-cds",
            "k1",
        )
        assert settings.fhir_smart_private_key_file == f"{mount['mountPath']}/private-key.pem"
    for scenario in set(SCENARIOS) - {"smart-auth"}:  # off: no key, no variables
        for suffix in ("-gateway", "-worker"):
            container = one(rendered[scenario], "Deployment", suffix)["spec"]["template"]["spec"]["containers"][0]
            assert _settings_from(container).fhir_auth == "none", scenario


def test_log_level_is_global_with_a_per_component_override(rendered: dict[str, list[Manifest]]) -> None:
    def levels(scenario: str) -> tuple[str, str]:
        docs = rendered[scenario]
        gateway, worker = (
            _settings_from(one(docs, "Deployment", suffix)["spec"]["template"]["spec"]["containers"][0])
            for suffix in ("-gateway", "-worker")
        )
        return gateway.log_level, worker.log_level

    assert levels("default") == ("INFO", "INFO")
    assert levels("grpc-tls") == ("DEBUG", "WARNING")  # the gateway's own level; the workers take app.logLevel


def test_every_workload_has_a_pod_disruption_budget(rendered: dict[str, list[Manifest]]) -> None:
    for scenario, docs in rendered.items():
        budgets = find(docs, "PodDisruptionBudget")
        for doc in docs:
            if doc["kind"] not in WORKLOAD_KINDS:
                continue
            labels = doc["spec"]["template"]["metadata"]["labels"]
            matching = [b for b in budgets if selects(b["spec"]["selector"]["matchLabels"], labels)]
            assert len(matching) == 1, f"{scenario}: {doc['metadata']['name']} has {len(matching)} budgets"


def test_every_pod_has_a_network_policy_for_both_directions(rendered: dict[str, list[Manifest]]) -> None:
    for scenario, docs in rendered.items():
        policies = find(docs, "NetworkPolicy")
        for doc in docs:
            if doc["kind"] not in WORKLOAD_KINDS:
                continue
            labels = doc["spec"]["template"]["metadata"]["labels"]
            matching = [p for p in policies if selects(p["spec"]["podSelector"]["matchLabels"], labels)]
            assert len(matching) == 1, f"{scenario}: {doc['metadata']['name']}"
            assert set(matching[0]["spec"]["policyTypes"]) == {"Ingress", "Egress"}


def _peer_components(rule: Manifest, direction: str) -> set[str]:
    return {p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in rule.get(direction, [])}


def _ports(rule: Manifest) -> set[int]:
    return {p["port"] for p in rule["ports"]}


def test_network_policies_allow_only_the_designed_traffic(rendered: dict[str, list[Manifest]]) -> None:
    docs = rendered["default"]
    policy = {c: one(docs, "NetworkPolicy", f"-{c}")["spec"] for c in ("gateway", "worker", "triton", "redis")}
    assert "ingress" not in policy["worker"], "nothing calls a worker"
    assert "egress" not in policy["redis"] and "egress" not in policy["triton"], "Redis and Triton call no one"
    (redis_in,) = policy["redis"]["ingress"]
    assert _ports(redis_in) == {6379} and _peer_components(redis_in, "from") == {"gateway", "worker"}
    (triton_in,) = policy["triton"]["ingress"]
    assert _ports(triton_in) == {8001} and _peer_components(triton_in, "from") == {"worker"}
    assert {p for rule in policy["gateway"]["ingress"] for p in _ports(rule)} == {8090, 50051}
    worker_out = {p for rule in policy["worker"]["egress"] for p in _ports(rule)}
    assert worker_out == {53, 6379, 8001, 8080, 8042}  # DNS, Redis, Triton, and the FHIR and PACS URLs' ports
    gateway_out = {p for rule in policy["gateway"]["egress"] for p in _ports(rule)}
    assert gateway_out == {53, 6379, 8080}
    # Production names every outside peer, so no egress rule there is open to any address.
    production = find(rendered["production"], "NetworkPolicy")
    for p in production:
        for rule in p["spec"].get("egress", []):
            assert rule.get("to"), f"{p['metadata']['name']}: egress to any address on {_ports(rule)}"


# -- Triton as a sidecar in the worker's pod (triton.placement=sidecar) ------------------------------------------


def _volume_at(pod: Manifest, container: Manifest, path: str) -> Manifest:
    (name,) = [m["name"] for m in container["volumeMounts"] if m["mountPath"] == path]
    (volume,) = [v for v in pod["volumes"] if v["name"] == name]
    return volume


def test_triton_sidecar_shares_the_workers_dev_shm_and_uid(rendered: dict[str, list[Manifest]]) -> None:
    docs = rendered["triton-sidecar"]
    for kind in ("Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy", "ServiceMonitor"):
        assert not find(docs, kind, "-triton"), f"a {kind} for Triton beside its sidecar"
    pod = one(docs, "Deployment", "-worker")["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["worker", "triton"]
    worker, triton = pod["containers"]
    # One in-memory emptyDir at /dev/shm in both, and one uid: the worker's regions are files of mode 0600.
    shm = _volume_at(pod, worker, "/dev/shm")
    assert shm == _volume_at(pod, triton, "/dev/shm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "1Gi"}
    ids = {(c["securityContext"]["runAsUser"], c["securityContext"]["runAsGroup"]) for c in containers(pod)}
    assert ids == {(10001, 10001)} and pod["securityContext"]["runAsUser"] == 10001
    assert _volume_at(pod, worker, "/tmp") != _volume_at(pod, triton, "/tmp"), "each its own /tmp"
    # The worker calls the Triton beside it on loopback, tensors through shared memory.
    env = env_of(worker)
    assert env["IMAGING_CDS_TRITON_SHARED_MEMORY"] == "system"
    assert env["IMAGING_CDS_TRITON_GRPC_URL"] == "127.0.0.1:8001"
    settings = _settings_from(worker)
    assert (settings.triton_grpc_url, settings.triton_shared_memory) == ("127.0.0.1:8001", "system")
    assert {"--grpc-port=8001", "--grpc-address=127.0.0.1"} <= set(triton["args"])
    # Triton is probed as in its own Deployment, on its own (named) port; the models come from the init container.
    named = {p["name"]: p["containerPort"] for p in triton["ports"]}
    for kind, path in (("startupProbe", "ready"), ("readinessProbe", "ready"), ("livenessProbe", "live")):
        assert triton[kind]["httpGet"]["path"] == f"/v2/health/{path}"
        assert named[triton[kind]["httpGet"]["port"]] == 8000
    assert not set(named) & {p["name"] for p in worker["ports"]}, "port names are unique in the pod"
    (init,) = pod["initContainers"]
    assert init["name"] == "copy-model-repository"
    assert _volume_at(pod, init, "/models") == _volume_at(pod, triton, "/models")
    # No network rule to Triton pods: there are none, the worker reaches its own on 127.0.0.1.
    policy = one(docs, "NetworkPolicy", "-worker")["spec"]
    peers = [p.get("podSelector", {}).get("matchLabels", {}) for rule in policy["egress"] for p in rule.get("to", [])]
    assert not any(labels.get("app.kubernetes.io/component") == "triton" for labels in peers)
    assert {p for rule in policy["egress"] for p in _ports(rule)} == {53, 6379, 8080, 8042}
    # Placement deployment (the default): Triton's own Deployment, and the worker as it was.
    default = rendered["default"]
    one(default, "Deployment", "-triton")
    (default_worker,) = one(default, "Deployment", "-worker")["spec"]["template"]["spec"]["containers"]
    assert "IMAGING_CDS_TRITON_SHARED_MEMORY" not in env_of(default_worker)
    assert "/dev/shm" not in {m["mountPath"] for m in default_worker["volumeMounts"]}


def test_triton_sidecar_is_the_triton_container_of_the_deployment(rendered: dict[str, list[Manifest]]) -> None:
    """Both placements render one template: the sidecar differs only where the worker's pod needs it to."""
    own = one(rendered["default"], "Deployment", "-triton")["spec"]["template"]["spec"]
    pod = one(rendered["triton-sidecar"], "Deployment", "-worker")["spec"]["template"]["spec"]
    deployed, sidecar = own["containers"][0], pod["containers"][1]
    assert [a for a in sidecar["args"] if a != "--grpc-address=127.0.0.1"] == deployed["args"]
    for key in ("image", "command", "env", "resources"):
        if key == "resources":  # the scenario runs on CPU: the same, less the GPU
            assert sidecar[key] == {
                kind: {r: q for r, q in v.items() if r != "nvidia.com/gpu"} for kind, v in deployed[key].items()
            }
        else:
            assert sidecar[key] == deployed[key], key
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        expected = yaml.safe_load(yaml.safe_dump(deployed[probe]))
        expected["httpGet"]["port"] = "triton-http"
        assert sidecar[probe] == expected, probe
    assert {p["containerPort"] for p in sidecar["ports"]} == {8000, 8002}, "gRPC on loopback only"
    assert "preStop" in sidecar["lifecycle"], "Triton outlives the worker's job in hand"
    assert pod["terminationGracePeriodSeconds"] >= own["terminationGracePeriodSeconds"]
    init_deployed, init_sidecar = own["initContainers"][0], pod["initContainers"][0]
    assert {k: v for k, v in init_sidecar.items() if k != "securityContext"} == {
        k: v for k, v in init_deployed.items() if k != "securityContext"
    }


def test_triton_sidecar_in_production_reads_the_bucket_and_is_scraped_on_gpu_nodes(chart: helm.Chart) -> None:
    values = yaml.safe_load(yaml.safe_dump(SCENARIOS["production"]))
    values["triton"]["placement"] = "sidecar"
    docs = manifests_of(render(chart, values))
    for doc in docs:
        if not doc["apiVersion"].startswith(CUSTOM_API_GROUPS):
            kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[0], strict=True)
    assert not find(docs, "ServiceMonitor", "-triton") and not find(docs, "NetworkPolicy", "-triton")
    pod = one(docs, "Deployment", "-worker")["spec"]["template"]["spec"]
    triton = pod["containers"][1]
    assert "--model-repository=s3://" in " ".join(triton["args"]) and "initContainers" not in pod
    assert triton["envFrom"] == [{"secretRef": {"name": "imaging-cds-models"}}]
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == 1
    # The pod goes where Triton may run: its GPU nodes.
    assert (
        pod["nodeSelector"] == values["triton"]["nodeSelector"]
        and pod["tolerations"] == values["triton"]["tolerations"]
    )
    # The worker's policy takes Triton's: the bucket out, Prometheus in on Triton's metrics port.
    policy = one(docs, "NetworkPolicy", "-worker")["spec"]
    bucket = values["networkPolicy"]["egress"]["objectStorage"]
    assert [_ports(rule) for rule in policy["egress"] if rule.get("to") == bucket] == [{443}]
    (scrape,) = policy["ingress"]
    assert _ports(scrape) == {9464, 8002} and scrape["from"] == values["networkPolicy"]["metricsFrom"]
    (monitor,) = find(docs, "PodMonitor")
    assert [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]] == ["metrics", "triton-metrics"]
    notes = next(text for path, text in render(chart, values).items() if path.endswith("NOTES.txt"))
    assert "deployment/imaging-cds-triton" not in notes and "service/imaging-cds-triton" not in notes
    assert "rollout status deployment/imaging-cds-worker" in notes and "/v2/repository/index" in notes
    assert "Triton runs in each worker pod" in notes


# -- the chart configures the services the way their code reads it ----------------------------------------------


SECRET_STAND_INS = {"IMAGING_CDS_REDIS_URL": "redis://from-a-secret:6379/0"}


def _settings_from(container: Manifest) -> Settings:
    """The Settings a container would build: secrets stand in as placeholders, $(VAR) references expanded."""
    env: dict[str, str] = {}
    for name, value in env_of(container).items():
        text = value if isinstance(value, str) else SECRET_STAND_INS.get(name, "from-a-secret")
        env[name] = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], text)
    unknown = {n for n in env if n.startswith("IMAGING_CDS_")} - {
        f"IMAGING_CDS_{f.upper()}" for f in Settings.__dataclass_fields__
    }
    assert not unknown, f"{container['name']}: variables no setting reads: {unknown}"
    return Settings.from_env(env)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_gateway_and_worker_settings_point_at_the_chart_services(
    rendered: dict[str, list[Manifest]], scenario: str
) -> None:
    docs = rendered[scenario]
    gateway = one(docs, "Deployment", "-gateway")["spec"]["template"]["spec"]["containers"][0]
    worker = one(docs, "Deployment", "-worker")["spec"]["template"]["spec"]["containers"][0]
    assert gateway["args"] == ["gateway"] and worker["args"][0] == "worker"
    g, w = _settings_from(gateway), _settings_from(worker)
    ports = {p["name"]: p["containerPort"] for p in gateway["ports"]}
    assert (g.http_host, g.grpc_host) == ("0.0.0.0", "0.0.0.0")
    assert (g.http_port, g.grpc_port) == (ports["http"], ports["grpc"])
    assert g.redis_url == w.redis_url and g.queue_prefix == w.queue_prefix
    redis = find(docs, "Service", "-redis")
    if redis:
        assert re.fullmatch(rf"redis://(:[^@]+@)?{redis[0]['metadata']['name']}:6379/0", w.redis_url), w.redis_url
    triton = find(docs, "Service", "-triton")
    if triton:
        grpc = next(p["port"] for p in triton[0]["spec"]["ports"] if p["name"] == "grpc")
        assert w.triton_grpc_url == f"{triton[0]['metadata']['name']}:{grpc}"
    assert str(w.model_repository) in {"/app/triton_repo", "/models"}
    mounted = {m["mountPath"] for m in worker["volumeMounts"]}
    assert str(w.model_repository) == "/app/triton_repo" or "/models" in mounted


def test_webhook_secret_and_pacs_credentials_come_from_secrets(rendered: dict[str, list[Manifest]]) -> None:
    docs = rendered["production"]
    gateway = env_of(one(docs, "Deployment", "-gateway")["spec"]["template"]["spec"]["containers"][0])
    worker = env_of(one(docs, "Deployment", "-worker")["spec"]["template"]["spec"]["containers"][0])
    assert gateway["IMAGING_CDS_WEBHOOK_SECRET"]["secretKeyRef"]["name"] == "imaging-cds-webhook"
    assert worker["IMAGING_CDS_DICOMWEB_PASSWORD"]["secretKeyRef"]["name"] == "imaging-cds-pacs"
    assert "IMAGING_CDS_WEBHOOK_SECRET" not in worker and "IMAGING_CDS_DICOMWEB_PASSWORD" not in gateway
    assert not find(docs, "Secret"), "production names existing Secrets; the chart makes none"
    generated = {s["metadata"]["name"] for s in find(rendered["default"], "Secret")}
    assert generated == {f"{RELEASE}-webhook", f"{RELEASE}-redis-auth"}


@pytest.mark.parametrize("scenario", ["production", "external-services", "shared-model-claim"])
def test_keda_scales_workers_on_every_stream_they_read(rendered: dict[str, list[Manifest]], scenario: str) -> None:
    docs = rendered[scenario]
    scaled = one(docs, "ScaledObject", "-worker")
    worker = one(docs, "Deployment", "-worker")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] == worker["metadata"]["name"]
    settings = _settings_from(worker["spec"]["template"]["spec"]["containers"][0])
    queue = queue_from_settings(settings)  # builds names only; connects to nothing
    triggers = scaled["spec"]["triggers"]
    assert {t["metadata"]["stream"] for t in triggers} == set(queue.streams.values())
    for trigger in triggers:
        assert trigger["type"] == "redis-streams"
        meta = trigger["metadata"]
        assert all(isinstance(v, str) for v in meta.values()), "KEDA trigger metadata is a map of strings"
        assert meta["consumerGroup"] == settings.consumer_group
        assert int(meta["lagCount"]) >= 1 and re.fullmatch(r"[^\s:/]+:\d+", meta["address"])
        if "passwordFromEnv" in meta:
            assert meta["passwordFromEnv"] in env_of(worker["spec"]["template"]["spec"]["containers"][0])
        if "authenticationRef" in trigger:
            one(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])


def test_service_monitor_scrapes_tritons_metrics_port(rendered: dict[str, list[Manifest]]) -> None:
    docs = rendered["production"]
    monitor = one(docs, "ServiceMonitor", "-triton")
    service = one(docs, "Service", "-triton")
    assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    port_names = {p["name"] for p in service["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= port_names == {"http", "grpc", "metrics"}


def test_services_select_their_pods_and_named_ports(rendered: dict[str, list[Manifest]]) -> None:
    for scenario, docs in rendered.items():
        pods = [d["spec"]["template"] for d in docs if d["kind"] in WORKLOAD_KINDS]
        for service in find(docs, "Service"):
            targets = [p for p in pods if selects(service["spec"]["selector"], p["metadata"]["labels"])]
            assert targets, f"{scenario}: Service {service['metadata']['name']} selects no pod"
            names = {p["name"] for t in targets for c in t["spec"]["containers"] for p in c.get("ports", [])}
            for port in service["spec"]["ports"]:
                assert port["targetPort"] in names, f"{scenario}: {service['metadata']['name']} {port['targetPort']}"


def test_notes_tell_the_operator_what_to_check_next(chart: helm.Chart) -> None:
    notes = next(text for path, text in render(chart, None).items() if path.endswith("NOTES.txt"))
    for check in ("rollout status", "/readyz", "grpc.health.v1.Health/Check", "/v2/repository/index"):
        assert check in notes
    # Workers pinned to named models: their args name each, and the notes check each one on Triton.
    values = yaml.safe_load(yaml.safe_dump(SCENARIOS["production"]))
    values["worker"]["models"] = ["lung-density", "lung-nodule-cad"]
    pinned = render(chart, values)
    pinned_notes = next(text for path, text in pinned.items() if path.endswith("NOTES.txt"))
    assert "/v2/models/lung-density/ready" in pinned_notes and "/v2/models/lung-nodule-cad/ready" in pinned_notes
    worker = next(text for path, text in pinned.items() if path.endswith("worker-deployment.yaml"))
    (container,) = yaml.safe_load(worker)["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["worker", "--model", "lung-density", "--model", "lung-nodule-cad"]
    assert "still name the chart's in-namespace stand-ins" in notes
    production = next(
        text for path, text in render(chart, SCENARIOS["production"]).items() if path.endswith("NOTES.txt")
    )
    assert "Check:" not in production, production
    assert "grpcurl -plaintext" in notes and "Log level: gateway INFO, workers INFO" in notes


def test_notes_with_grpc_tls_check_over_tls_and_flag_a_cleartext_ingress_backend(chart: helm.Chart) -> None:
    values = yaml.safe_load(yaml.safe_dump(SCENARIOS["production"]))
    values["gateway"]["grpcTls"] = {"enabled": True, "secretName": GRPC_TLS_SECRET}
    notes = next(text for path, text in render(chart, values).items() if path.endswith("NOTES.txt"))
    assert "-plaintext" not in notes and "grpc.health.v1.Health/Check" in notes
    assert "backend-protocol to GRPCS" in notes, "the Ingress would speak cleartext gRPC to a TLS port"
    values["gateway"]["ingress"]["grpc"]["annotations"]["nginx.ingress.kubernetes.io/backend-protocol"] = "GRPCS"
    notes = next(text for path, text in render(chart, values).items() if path.endswith("NOTES.txt"))
    assert "Check:" not in notes, notes


# -- the image the chart runs -----------------------------------------------------------------------------------


def test_dockerfile_builds_a_pinned_non_root_image_the_chart_matches(rendered: dict[str, list[Manifest]]) -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", dockerfile, re.M)
    assert base and re.fullmatch(r"python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}", base.group(1))
    assert len(re.findall(r"^FROM \$\{PYTHON_IMAGE\} AS \w+$", dockerfile, re.M)) == 2, "multi-stage"
    uid = re.search(r"^ARG UID=(\d+)$", dockerfile, re.M)
    assert uid and int(uid.group(1)) >= 10000
    assert re.search(r"^USER \$\{UID\}:\$\{UID\}$", dockerfile, re.M)
    assert "IMAGING_CDS_MODEL_REPOSITORY=/app/triton_repo" in dockerfile
    gateway = one(rendered["default"], "Deployment", "-gateway")["spec"]["template"]["spec"]
    assert gateway["securityContext"]["runAsUser"] == int(uid.group(1))
    allowed = (REPO / ".dockerignore").read_text().split()
    assert {"!services/", "!triton_repo/", "!pyproject.toml", "!README.md"} <= set(allowed)
