"""The Kubernetes manifests (deploy/k8s): valid against the Kubernetes API schemas, and consistent with the image.

Validation is by `kubernetes-validate`, which ships the API's JSON schemas for each Kubernetes release (no cluster);
strict, so a misspelt field fails. The base's files are whole objects and validate on their own; the base and the
GPU overlay are also rendered by kustomize (`kubectl kustomize`, kustomize built into kubectl) where kubectl is
installed, and the rendered objects are validated and checked against the Dockerfile and the service's settings.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from service.api.app import create_app
from service.api.settings import Settings
from tests.deploy_files import REPO_ROOT, read_dockerfile

K8S = REPO_ROOT / "deploy" / "k8s"
BASE = K8S / "base"
GPU_OVERLAY = K8S / "overlays" / "gpu"
#: The oldest release whose schemas have the preStop `sleep` action (beta, on by default, in 1.30), and the newest.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
#: A worker's memory budget at the worst case it admits (docs/deploy.md; tests/test_service_hostile.py asserts it
#: under every attack), which the memory limit must clear.
MEASURED_PEAK_RSS_BYTES = 1.40e9
#: Resident memory of a warmed-up idle worker (docs/deploy.md), which the memory request must clear.
MEASURED_IDLE_RSS_BYTES = 0.18e9
QUANTITY_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9}


def _documents(text: str) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(text) if document]


def _kustomize(directory: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with its built-in kustomize) is not installed")
    rendered = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    assert rendered.returncode == 0, rendered.stderr
    return _documents(rendered.stdout)


def _by_kind(documents: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    kinds = [document["kind"] for document in documents]
    assert len(kinds) == len(set(kinds)), kinds
    return {document["kind"]: document for document in documents}


def _bytes(quantity: str) -> float:
    for unit, factor in QUANTITY_UNITS.items():
        if quantity.endswith(unit):
            return float(quantity[: -len(unit)]) * factor
    return float(quantity)


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container.get("env", [])}


@pytest.fixture(scope="module")
def base() -> dict[str, dict[str, Any]]:
    return _by_kind(_kustomize(BASE))


@pytest.fixture(scope="module")
def gpu() -> dict[str, dict[str, Any]]:
    return _by_kind(_kustomize(GPU_OVERLAY))


# ---- schemas ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_base_files_validate_on_their_own(version: str) -> None:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    for name in kustomization["resources"]:
        for document in _documents((BASE / name).read_text()):
            kubernetes_validate.validate(document, version, strict=True)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", [BASE, GPU_OVERLAY], ids=["base", "gpu"])
def test_rendered_manifests_validate(overlay: Path, version: str) -> None:
    documents = _kustomize(overlay)
    assert {document["kind"] for document in documents} == {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    }
    for document in documents:
        kubernetes_validate.validate(document, version, strict=True)


def test_validator_rejects_a_misspelt_field_and_a_wrong_type(base: dict[str, dict[str, Any]]) -> None:
    """The check above could not pass a broken manifest: the same validator refuses two small mistakes."""
    misspelt = copy.deepcopy(base["Deployment"])
    _container(misspelt)["readinesProbe"] = _container(misspelt).pop("readinessProbe")
    wrong_type = copy.deepcopy(base["Deployment"])
    wrong_type["spec"]["replicas"] = "two"
    for broken in (misspelt, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


# ---- consistent with the image and the service ----------------------------------------------------------------------


def test_probes_and_port_are_the_services_own(base: dict[str, dict[str, Any]]) -> None:
    container = _container(base["Deployment"])
    image_env = read_dockerfile().stage("cpu").env()
    (port,) = container["ports"]
    assert port["containerPort"] == int(image_env["FACEVAE_PORT"])
    paths = set(create_app(Settings(model=REPO_ROOT)).openapi()["paths"])
    probes = {kind: container[kind]["httpGet"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert probes["readinessProbe"]["path"] == "/health/ready"  # 503 until the model is loaded and warmed up
    assert probes["livenessProbe"]["path"] == "/health/live"  # outside the admission limit: busy is not dead
    for probe in probes.values():
        assert probe["path"] in paths and probe["port"] == port["name"]
    service = base["Service"]
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]


def test_selectors_pick_the_deployments_pods(base: dict[str, dict[str, Any]]) -> None:
    pod_labels = base["Deployment"]["spec"]["template"]["metadata"]["labels"]
    selectors = [
        base["Deployment"]["spec"]["selector"]["matchLabels"],
        base["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
        base["Service"]["spec"]["selector"],
    ]
    for selector in selectors:
        assert selector and selector.items() <= pod_labels.items()
    target = base["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", base["Deployment"]["metadata"]["name"])
    assert base["PodDisruptionBudget"]["spec"]["minAvailable"] < base["HorizontalPodAutoscaler"]["spec"]["minReplicas"]


def test_shutdown_period_covers_the_services_graceful_timeout(base: dict[str, dict[str, Any]]) -> None:
    pod = base["Deployment"]["spec"]["template"]["spec"]
    container = _container(base["Deployment"])
    graceful = float(_env(container).get("FACEVAE_GRACEFUL_TIMEOUT", Settings.model_fields["graceful_timeout"].default))
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > pre_stop + graceful  # SIGKILL only after uvicorn had its time
    assert graceful < Settings.model_fields["request_timeout"].default  # requests past their deadline are 504s


def test_resources_match_the_measured_memory(base: dict[str, dict[str, Any]]) -> None:
    resources = _container(base["Deployment"])["resources"]
    assert _bytes(resources["limits"]["memory"]) > MEASURED_PEAK_RSS_BYTES
    assert MEASURED_IDLE_RSS_BYTES < _bytes(resources["requests"]["memory"]) <= _bytes(resources["limits"]["memory"])
    threads = int(_env(_container(base["Deployment"]))["FACEVAE_INTRA_OP_THREADS"])
    assert 1 <= threads <= float(resources["limits"]["cpu"])  # the service cannot see a CPU quota itself


def test_runs_as_the_images_non_root_user_read_only(base: dict[str, dict[str, Any]]) -> None:
    pod = base["Deployment"]["spec"]["template"]["spec"]
    container = _container(base["Deployment"])
    user = read_dockerfile().stage("cpu").last("USER")
    assert user is not None
    assert f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}" == user.args.strip()
    assert pod["securityContext"]["runAsNonRoot"] is True
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert "/tmp" in {mount["mountPath"] for mount in container["volumeMounts"]}  # uploads spool there
    assert "FACEVAE_MODEL" not in _env(container)  # the image's baked bundle (its ENV) is served


def test_gpu_overlay_asks_for_a_gpu_and_refuses_to_serve_on_cpu(
    base: dict[str, dict[str, Any]], gpu: dict[str, dict[str, Any]]
) -> None:
    container = _container(gpu["Deployment"])
    assert container["image"].endswith(":gpu") and _container(base["Deployment"])["image"].endswith(":cpu")
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    env = _env(container)
    assert env["FACEVAE_REQUIRE_GPU"] == "true"
    assert env["FACEVAE_PROVIDERS"].split(",")[0] == "CUDAExecutionProvider"
    assert env.items() >= _env(_container(base["Deployment"])).items()  # the base's settings are kept
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe] == _container(base["Deployment"])[probe]
