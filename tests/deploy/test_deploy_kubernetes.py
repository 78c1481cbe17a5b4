"""deploy/kubernetes/: valid manifests whose every reference is real.

No cluster here. Built-in kinds are validated against the Kubernetes OpenAPI schemas that
`kubernetes-validate` ships (strict: unknown fields fail); KEDA's kinds, whose CRD schemas
no package ships, get structural checks. Then every name the manifests use is resolved:
commands and options against the CLI, settings against shared/config.py, queues against the
Celery app, ConfigMap/Secret/PVC/Deployment names and port names against each other.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.deploy.deploy_checks import (
    DEPLOY,
    K8S,
    check_medhash_command,
    check_settings_values,
    load_yaml,
    load_yaml_documents,
    medhash_names,
    queue_names,
    setting_variables,
)

pytestmark = pytest.mark.unit

KUBERNETES_VERSION = "1.30.0"  # the oldest release these manifests promise to work on
KEDA_KINDS = {"ScaledObject", "TriggerAuthentication"}


def kustomization() -> dict[str, Any]:
    return load_yaml(K8S / "kustomization.yaml")


def resources() -> list[dict[str, Any]]:
    docs = []
    for name in kustomization()["resources"]:
        docs += load_yaml_documents(K8S / name)
    return docs


def of_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in resources() if doc["kind"] == kind}


def secret_env_example() -> dict[str, str]:
    values = {}
    for line in (K8S / "secret.env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name] = value
    return values


def containers() -> list[tuple[str, dict[str, Any]]]:
    return [(name, container) for name, deployment in of_kind("Deployment").items()
            for container in deployment["spec"]["template"]["spec"]["containers"]]


def test_kustomization_lists_every_manifest_and_its_files_exist() -> None:
    listed = set(kustomization()["resources"])
    present = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present
    (generator,) = kustomization()["secretGenerator"]
    assert generator["name"] == "medhash-secrets"
    for env_file in generator["envs"]:
        assert (K8S / f"{env_file}.example").is_file(), f"{env_file}.example documents {env_file}"
        assert env_file in (K8S / ".gitignore").read_text().split(), f"{env_file} holds secrets: git-ignore it"


@pytest.mark.parametrize("path", sorted(K8S.glob("*.yaml")), ids=lambda p: p.name)
def test_built_in_kinds_are_valid_against_the_kubernetes_schemas(path: Path) -> None:
    import kubernetes_validate

    if path.name == "kustomization.yaml":
        return
    for doc in load_yaml_documents(path):
        if doc["kind"] in KEDA_KINDS:
            continue
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_keda_objects_are_well_formed_and_scale_real_queues() -> None:
    deployments = of_kind("Deployment")
    configmap = of_kind("ConfigMap")["medhash-config"]["data"]
    auths = of_kind("TriggerAuthentication")
    secrets = secret_env_example()
    scaled = of_kind("ScaledObject")
    for doc in [*scaled.values(), *auths.values()]:
        assert doc["apiVersion"] == "keda.sh/v1alpha1"
        assert set(doc) <= {"apiVersion", "kind", "metadata", "spec"}
    for auth in auths.values():
        for ref in auth["spec"]["secretTargetRef"]:
            assert ref["name"] == "medhash-secrets" and ref["key"] in secrets, ref
    assert set(scaled) == {"preprocess-worker", "encode-worker"}
    for name, obj in scaled.items():
        spec = obj["spec"]
        assert set(spec) <= {"scaleTargetRef", "minReplicaCount", "maxReplicaCount", "pollingInterval",
                             "cooldownPeriod", "triggers", "advanced", "fallback", "idleReplicaCount"}
        target = deployments[spec["scaleTargetRef"]["name"]]
        assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "redis"
        meta = trigger["metadata"]
        assert all(isinstance(value, str) for value in meta.values()), "KEDA metadata values are strings"
        assert set(meta) <= {"address", "addressFromEnv", "host", "port", "listName", "listLength",
                             "activationListLength", "databaseIndex", "enableTLS", "unsafeSsl",
                             "usernameFromEnv", "passwordFromEnv"}
        assert int(meta["listLength"]) > 0 and int(meta["activationListLength"]) >= 0
        assert auths[trigger["authenticationRef"]["name"]]
        # the list KEDA watches is the queue this deployment's workers consume
        (container,) = target["spec"]["template"]["spec"]["containers"]
        _, params = check_medhash_command(container["command"])
        assert meta["listName"] in queue_names()
        assert meta["listName"] == params["queues"], (name, meta["listName"], params["queues"])
        # KEDA reads REDIS_ADDRESS from the container's environment: the broker's host:port
        assert meta["addressFromEnv"] in configmap
        assert {"configMapRef": {"name": "medhash-config"}} in container["envFrom"]
        broker = urlsplit(secrets["MEDHASH_BROKER_URL"])
        assert configmap[meta["addressFromEnv"]] == f"{broker.hostname}:{broker.port}"
        assert meta["databaseIndex"] == (broker.path.strip("/") or "0")


def test_every_command_is_a_real_medhash_sub_command_with_real_options() -> None:
    commands = {}
    for name, container in containers():
        commands[name] = check_medhash_command(container["command"])[0]
    assert commands == {"listener": "listener", "search": "search", "indexer": "indexer",
                        "reconciler": "reconciler", "preprocess-worker": "worker",
                        "encode-worker": "worker"}


def test_settings_are_real_and_valid() -> None:
    configmap = of_kind("ConfigMap")["medhash-config"]["data"]
    secrets = secret_env_example()
    for text in [(K8S / name).read_text() for name in kustomization()["resources"]] + [
            (K8S / "secret.env.example").read_text()]:
        unknown = medhash_names(text) - setting_variables()
        assert not unknown, f"settings that do not exist: {sorted(unknown)}"
    non_settings = {name for name in [*configmap, *secrets] if not name.startswith("MEDHASH_")}
    assert non_settings == {"REDIS_ADDRESS", "REDIS_PASSWORD"}, "only KEDA's variables are not settings"
    for _, container in containers():
        env = {item["name"]: item["value"] for item in container.get("env", [])}
        check_settings_values({**configmap, **secrets, **env})


def test_references_between_objects_resolve() -> None:
    configmaps, claims = set(of_kind("ConfigMap")), set(of_kind("PersistentVolumeClaim"))
    secrets = {generator["name"] for generator in kustomization()["secretGenerator"]}
    deployments = of_kind("Deployment")
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
        volumes = {volume["name"]: volume for volume in pod["spec"].get("volumes", [])}
        for volume in volumes.values():
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims
        for container in pod["spec"]["containers"]:
            for source in container["envFrom"]:
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in configmaps
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in secrets
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, (name, mount)
            ports = {port["name"]: port["containerPort"] for port in container.get("ports", [])}
            for probe in ("readinessProbe", "livenessProbe"):
                handler = container.get(probe, {})
                for kind in ("httpGet", "tcpSocket"):
                    if kind in handler:
                        assert handler[kind]["port"] in ports, (name, probe)
            annotations = pod["metadata"].get("annotations", {})
            assert annotations.get("prometheus.io/scrape") == "true", name
            assert int(annotations["prometheus.io/port"]) in ports.values(), name
    for name, service in of_kind("Service").items():
        selector = service["spec"]["selector"]
        matched = [d for d in deployments.values()
                   if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert matched, f"Service {name} selects no pod"
        for port in service["spec"]["ports"]:
            for deployment in matched:
                (container,) = deployment["spec"]["template"]["spec"]["containers"]
                names = {p["name"] for p in container["ports"]}
                assert port["targetPort"] in names, (name, port, deployment["metadata"]["name"])


def test_images_map_to_the_dockerfiles() -> None:
    images = {entry["name"] for entry in kustomization()["images"]}
    for name, container in containers():
        image = container["image"]
        assert image in images, (name, image)
        dockerfile = DEPLOY / ("Dockerfile.cuda" if image == "medhash-cuda" else "Dockerfile")
        assert dockerfile.is_file()
        assert (image == "medhash-cuda") == (name == "encode-worker"), name


def test_topology_single_indexer_one_gpu_per_encode_pod_model_mounted() -> None:
    deployments = of_kind("Deployment")
    indexer = deployments["indexer"]["spec"]
    assert indexer["replicas"] == 1 and indexer["strategy"]["type"] == "Recreate"
    assert "indexer" not in of_kind("ScaledObject")
    (encode,) = deployments["encode-worker"]["spec"]["template"]["spec"]["containers"]
    assert encode["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"name": "MEDHASH_DEVICE", "value": "cuda"} in encode["env"]
    configmap = of_kind("ConfigMap")["medhash-config"]["data"]
    model_dir = str(Path(configmap["MEDHASH_MODEL"]).parent)
    for name in ("search", "indexer", "encode-worker"):
        (container,) = deployments[name]["spec"]["template"]["spec"]["containers"]
        assert any(m["mountPath"] == model_dir and m.get("readOnly") for m in container["volumeMounts"]), name
    services = of_kind("Service")
    assert services["listener"]["spec"]["ports"][0]["port"] == int(configmap["MEDHASH_DICOM_PORT"])
    assert services["search"]["spec"]["ports"][0]["port"] == int(configmap["MEDHASH_HTTP_PORT"])
    assert services["medhash-metrics"]["spec"]["ports"][0]["port"] == int(configmap["MEDHASH_METRICS_PORT"])


def test_pods_run_unprivileged() -> None:
    for name, deployment in of_kind("Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False and context["readOnlyRootFilesystem"], name
            # a read-only root needs writable /tmp (multiprocess metrics, temp files) and /data
            mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
            assert {"/tmp", "/data"} <= mounts, name


def test_no_secret_value_in_the_configmap() -> None:
    configmap = of_kind("ConfigMap")["medhash-config"]["data"]
    for name in configmap:
        assert not re.search(r"PASSWORD|SECRET|KEY|_URL$", name) or name == "MEDHASH_S3_ENDPOINT", name
