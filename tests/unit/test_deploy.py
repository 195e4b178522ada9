"""deploy/k8s and docker-compose.yml: valid against the Kubernetes schemas, and consistent.

The manifests are checked by `kubernetes-validate`, which ships the Kubernetes OpenAPI schemas
of every release it supports (1.25 onwards) and so needs no network, in strict mode (unknown
fields are errors: a misspelt `livenessProbe` would otherwise be dropped silently by the API
server). Pure file reads.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from pipeline.ops.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = sorted((ROOT / "deploy" / "k8s").glob("*.yaml"))
# The oldest Kubernetes release still commonly run, and the newest the validator knows.
VERSIONS = ("1.27.0", kubernetes_validate.latest_version())
# SPEC §4 names that the worker reads (besides those of `Settings` already in this tree).
SPEC_NAMES = {"IDP_HTTP_PORT", "IDP_HTTP_HOST", "IDP_CREATE_TOPICS", "IDP_API_TOKEN"}


def _documents() -> list[dict[str, Any]]:
    docs = []
    for path in MANIFESTS:
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    return docs


def _one(kind: str) -> dict[str, Any]:
    (found,) = [d for d in _documents() if d["kind"] == kind]
    return found


def _worker() -> dict[str, Any]:
    (container,) = _one("Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def test_there_are_manifests() -> None:
    assert {d["kind"] for d in _documents()} >= {
        "ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "Secret"}  # fmt: skip


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    "document", _documents(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}"
)
def test_every_manifest_is_valid(document: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(document, version, strict=True)


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (lambda c: c.__setitem__("livenesProbe", c.pop("livenessProbe")), "livenesProbe"),
        (lambda c: c["resources"]["requests"].__setitem__("cpu", ["500m"]), "cpu"),
        (lambda c: c["readinessProbe"]["httpGet"].__setitem__("port", 1.5), "port"),
    ],
    ids=["misspelt field", "wrong type", "wrong port"],
)
def test_the_validator_refuses_a_broken_manifest(change, where: str) -> None:
    deployment = copy.deepcopy(_one("Deployment"))
    change(deployment["spec"]["template"]["spec"]["containers"][0])
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[-1], strict=True)


def test_the_worker_serves_its_probes_on_the_configured_port() -> None:
    config = _one("ConfigMap")["data"]
    port = int(config["IDP_HTTP_PORT"])
    assert config["IDP_HTTP_HOST"] == "0.0.0.0"  # the kubelet probes the pod's address
    worker = _worker()
    (declared,) = worker["ports"]
    assert declared["containerPort"] == port and declared["name"] == "http"
    assert worker["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert worker["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert worker["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert worker[probe]["httpGet"]["port"] in ("http", port)
    service = _one("Service")
    assert service["spec"]["ports"][0]["targetPort"] in ("http", port)


def test_topics_are_created_by_the_worker_not_by_a_job() -> None:
    assert "Job" not in {d["kind"] for d in _documents()}
    assert _one("ConfigMap")["data"].get("IDP_CREATE_TOPICS", "true") != "false"


def test_the_configmap_names_only_variables_the_worker_reads() -> None:
    known = {f.validation_alias for f in Settings.model_fields.values()} | SPEC_NAMES
    assert sorted(set(_one("ConfigMap")["data"]) - known) == []
    env = {e["name"] for e in _worker().get("env", [])}
    assert env <= known


def test_selectors_match_the_workers_labels() -> None:
    deployment = _one("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selectors = [deployment["spec"]["selector"]["matchLabels"],
                 _one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
                 _one("Service")["spec"]["selector"]]  # fmt: skip
    for selector in selectors:
        assert selector.items() <= labels.items()
    # Drains take one worker at a time, whatever the number of replicas.
    assert _one("PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


def test_secrets_come_from_a_secret_volume_at_the_secrets_file() -> None:
    pod = _one("Deployment")["spec"]["template"]["spec"]
    secrets_file = Path(_one("ConfigMap")["data"]["IDP_SECRETS_FILE"])
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in _worker()["volumeMounts"]}
    mount = mounts[str(secrets_file.parent)]
    assert mount["readOnly"] is True
    volume = volumes[mount["name"]]["secret"]
    assert volume["secretName"] == "identity-pipeline-secrets"
    assert [i["path"] for i in volume["items"]] == [secrets_file.name]
    # The worker runs as nobody: the files must be readable by its group.
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]
    assert secrets_file.name in _one("Secret")["stringData"]  # the example's keys
    assert "IDP_API_TOKEN" not in _one("ConfigMap")["data"]  # a secret, never in a ConfigMap


def _quantity(value: str) -> float:
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    number, unit = re.fullmatch(r"([\d.]+)(m|Ki|Mi|Gi)?", value).groups()  # type: ignore[union-attr]
    return float(number) * units.get(unit or "", 1)


def test_resources_follow_the_benchmark() -> None:
    # docs/performance.md: ~half a core busy at 8,000-9,000 events/s (half the peak), about one
    # core at the peak, ~145 MB resident.
    resources = _worker()["resources"]
    requests, limits = resources["requests"], resources["limits"]
    assert _quantity(requests["cpu"]) == pytest.approx(0.5)
    assert _quantity(limits["cpu"]) > 1.0  # never throttled below the peak's one core
    rss = 145 * 10**6
    assert 1.5 * rss <= _quantity(requests["memory"]) < _quantity(limits["memory"])
    assert _quantity(limits["memory"]) <= 8 * rss


def test_compose_services_are_healthchecked_and_the_worker_waits_for_them() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert "topics" not in services  # the worker creates its topics
    for name in ("kafka", "redis", "worker"):
        assert services[name]["healthcheck"]["test"], name
    assert services["worker"]["depends_on"] == {
        "kafka": {"condition": "service_healthy"}, "redis": {"condition": "service_healthy"}}  # fmt: skip
    env = services["worker"]["environment"]
    check = " ".join(services["worker"]["healthcheck"]["test"])
    assert f"127.0.0.1:{env['IDP_HTTP_PORT']}/readyz" in check
    assert env["IDP_HTTP_HOST"] == "0.0.0.0"


def test_the_image_runs_as_a_numeric_non_root_user() -> None:
    text = (ROOT / "Dockerfile").read_text()
    (user,) = re.findall(r"^USER (\S+)$", text, flags=re.MULTILINE)
    assert user.split(":")[0].isdigit() and user.split(":")[0] != "0"
    pod = _one("Deployment")["spec"]["template"]["spec"]
    assert str(pod["securityContext"]["runAsUser"]) == user.split(":")[0]
