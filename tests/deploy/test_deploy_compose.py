"""docker-compose.yml and .env.example: valid Compose, and every reference in them is real.

Docker cannot run here, so this is what stands in for `docker compose config`: the file is
validated against the Compose Specification's JSON schema (vendored by check-jsonschema, no
network), interpolated with .env.example's variables the way Compose does, and every
command, setting, image, Dockerfile and mounted file it names is checked against the tree.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from typing import Any

import jsonschema
import pytest

from tests.deploy.deploy_checks import (
    COMPOSE_FILE,
    ROOT,
    check_medhash_command,
    check_settings_values,
    env_references,
    load_yaml,
    medhash_names,
    setting_variables,
)

pytestmark = pytest.mark.unit

ENV_EXAMPLE = ROOT / ".env.example"


def compose_schema() -> dict[str, Any]:
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads((vendor / "compose-spec.json").read_text())


def env_example() -> tuple[dict[str, str], set[str]]:
    """(variables assigned in .env.example, variables only documented in comments)."""
    assigned: dict[str, str] = {}
    documented: set[str] = set()
    for line in ENV_EXAMPLE.read_text().splitlines():
        if match := re.fullmatch(r"([A-Z][A-Z0-9_]*)=(.*)", line.strip()):
            assigned[match.group(1)] = match.group(2)
        elif match := re.fullmatch(r"#\s*([A-Z][A-Z0-9_]*)=.*", line.strip()):
            documented.add(match.group(1))
    return assigned, documented


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's interpolation of ``${NAME}``, ``${NAME:-default}``, ``${NAME:?error}``."""
    def substitute(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        value = env.get(name)
        if op == ":?" and not value:
            raise AssertionError(f"${{{name}}} is required: {arg}")
        if op == ":-" and not value:
            return arg
        return value or ""
    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:[-?])([^}]*))?\}", substitute, text)


def rendered_compose() -> dict[str, Any]:
    """The compose file as Compose sees it with .env.example's values and secrets filled in."""
    assigned, _ = env_example()
    env = {name: value or f"test-{name.lower()}" for name, value in assigned.items()}
    env["FLOWER_BASIC_AUTH"] = "admin:test"
    import yaml

    return yaml.safe_load(interpolate(COMPOSE_FILE.read_text(), env))


def medhash_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Services that run the medhash image (built from deploy/Dockerfile*)."""
    return {name: service for name, service in compose["services"].items() if "build" in service}


def test_compose_file_is_valid_against_the_compose_specification() -> None:
    raw = load_yaml(COMPOSE_FILE)
    jsonschema.validate(raw, compose_schema())
    jsonschema.validate(rendered_compose(), compose_schema())


def test_every_required_variable_is_in_env_example_and_every_variable_documented() -> None:
    assigned, documented = env_example()
    text = COMPOSE_FILE.read_text()
    for name, op, _ in env_references(text):
        if op == ":?":
            assert name in assigned, f"{name} is required by docker-compose.yml but not in .env.example"
        else:
            assert name in assigned or name in documented, f"{name} is not documented in .env.example"
    # A variable that is only passed through (MEDHASH_X: with no value) is documented in the
    # README's settings table; .env.example need not list all of them.
    rendered_compose()  # raises if a required variable has no value


def test_env_example_names_only_real_settings_with_valid_values() -> None:
    assigned, _ = env_example()
    text = ENV_EXAMPLE.read_text()
    unknown = medhash_names(text) - setting_variables()
    assert not unknown, f".env.example names settings that do not exist: {sorted(unknown)}"
    # the commented examples must be values the settings accept
    examples = {}
    for line in text.splitlines():
        if match := re.fullmatch(r"#?\s*(MEDHASH_[A-Z0-9_]+)=(.+)", line.strip()):
            examples[match.group(1)] = match.group(2)
    check_settings_values(examples)
    assert assigned.get("COMPOSE_PROFILES") in {"gpu", "cpu"}


def test_medhash_variables_are_settings_and_every_setting_reaches_the_containers() -> None:
    text = COMPOSE_FILE.read_text()
    unknown = medhash_names(text) - setting_variables()
    assert not unknown, f"docker-compose.yml names settings that do not exist: {sorted(unknown)}"
    raw = load_yaml(COMPOSE_FILE)
    environment = raw["x-medhash-env"]
    missing = setting_variables() - set(environment)
    assert not missing, f"settings not passed to the medhash containers: {sorted(missing)}"
    compose = rendered_compose()
    for name, service in medhash_services(compose).items():
        values = {key: str(value) for key, value in service["environment"].items() if value is not None}
        check_settings_values(values)  # every wired value is one the settings accept
        assert values["MEDHASH_MODEL"] == "/models/model.pt", name


def test_every_medhash_command_is_a_real_sub_command_with_real_options() -> None:
    compose = rendered_compose()
    seen = {}
    for name, service in medhash_services(compose).items():
        command, params = check_medhash_command(service["command"])
        seen[name] = (command, params)
    commands = {command for command, _ in seen.values()}
    assert {"listener", "search", "indexer", "reconciler", "worker"} <= commands
    queues = {params["queues"] for command, params in seen.values() if command == "worker"}
    assert {"preprocess", "encode"} <= queues


def test_images_are_built_from_dockerfiles_that_exist() -> None:
    compose = rendered_compose()
    for name, service in medhash_services(compose).items():
        build = service["build"]
        assert build["context"] == "."
        dockerfile = ROOT / build["dockerfile"]
        assert dockerfile.is_file() and dockerfile.parent.name == "deploy", (name, dockerfile)
        assert dockerfile.name.startswith("Dockerfile")
        cuda = dockerfile.name == "Dockerfile.cuda"
        assert service["image"].endswith("-cuda") == cuda, (name, service["image"])
    # every image that is pulled is pinned to a version, never `latest`
    for name, service in compose["services"].items():
        if "build" not in service:
            image = service["image"]
            assert ":" in image and not image.endswith(":latest"), (name, image)


def test_mounted_files_exist_and_dependencies_are_services() -> None:
    compose = rendered_compose()
    services = compose["services"]
    for name, service in services.items():
        for volume in service.get("volumes", []):
            if isinstance(volume, dict) and volume["type"] == "bind" and volume["source"].startswith("./deploy"):
                assert (ROOT / volume["source"]).exists(), (name, volume["source"])
            elif isinstance(volume, str):
                assert volume.split(":")[0] in compose["volumes"], (name, volume)
        depends = service.get("depends_on", {})
        for other in depends:
            assert other in services, (name, other)
        if isinstance(depends, dict):
            for other, condition in depends.items():
                if condition["condition"] == "service_healthy":
                    assert "healthcheck" in services[other], f"{name} waits for {other}'s health check"


def test_long_running_services_have_health_checks_and_restart() -> None:
    compose = rendered_compose()
    for name, service in compose["services"].items():
        if name == "minio-init":
            assert service["restart"] == "no"
            continue
        assert service.get("restart") == "unless-stopped", name
        if name in medhash_services(compose) or name in {"minio", "postgres", "redis", "prometheus"}:
            assert "healthcheck" in service, name


def test_topology_single_indexer_gpu_reservation_and_cpu_profile() -> None:
    compose = rendered_compose()
    services = compose["services"]
    assert "replicas" not in services["indexer"].get("deploy", {}), "the indexer is the single writer"
    gpu = services["encode-worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert gpu["environment"]["MEDHASH_DEVICE"] == "cuda"
    cpu = services["encode-worker-cpu"]
    assert cpu["profiles"] == ["cpu"] and cpu["environment"]["MEDHASH_DEVICE"] == "cpu"
    for name in ("search", "indexer", "encode-worker-gpu", "encode-worker-cpu"):
        mounts = [v for v in services[name]["volumes"] if isinstance(v, dict)]
        assert any(v["target"] == "/models" and v["read_only"] for v in mounts), name
    # the bucket exists before any medhash process starts
    assert services["listener"]["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    init = (ROOT / "deploy" / "minio" / "init.sh").read_text()
    assert "mc mb --ignore-existing" in init
    policy = json.loads((ROOT / "deploy" / "minio" / "medhash-policy.json").read_text())
    assert all("@BUCKET@" in resource for statement in policy["Statement"] for resource in statement["Resource"])


def test_ports_and_health_checks_match_the_settings_inside_the_containers() -> None:
    compose = rendered_compose()
    services = compose["services"]
    env = services["listener"]["environment"]
    dicom, http, metrics = env["MEDHASH_DICOM_PORT"], env["MEDHASH_HTTP_PORT"], env["MEDHASH_METRICS_PORT"]
    assert services["listener"]["ports"] == [f"11112:{dicom}"]
    assert services["search"]["ports"] == [f"8080:{http}"]
    assert dicom in " ".join(services["listener"]["healthcheck"]["test"])
    assert f":{http}/metrics" in " ".join(services["search"]["healthcheck"]["test"])
    for name, service in medhash_services(compose).items():
        if name not in {"listener", "search"}:
            assert f":{metrics}/metrics" in " ".join(service["healthcheck"]["test"]), name


def test_no_secret_has_a_default() -> None:
    text = COMPOSE_FILE.read_text()
    for name, op, _ in env_references(text):
        if re.search(r"PASSWORD|SECRET|AUTH", name):
            assert op == ":?", f"{name} must be required (${{{name}:?...}}), never defaulted"


def test_compose_mentions_no_missing_repository_file() -> None:
    text = COMPOSE_FILE.read_text()
    for path in set(re.findall(r"(?<![\w/])(deploy/[\w./-]+)", text)):
        assert (ROOT / path.rstrip(".")).exists(), path
