"""deploy/kubernetes: every manifest is valid against the Kubernetes schemas (bundled by
kubernetes-validate, so offline), and the Deployment agrees with the config.yaml its ConfigMap
holds: port, probe paths, the drain/grace budget, the mounted path and the variables the
config expands. The Dockerfile runs as a numeric non-root user and checks /healthz."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from proxy.config import Config, parse_config

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"
DOCKERFILE = Path(__file__).resolve().parent.parent / "Dockerfile"
# The oldest Kubernetes the manifests are meant for (autoscaling/v2 and policy/v1 are GA
# well before it), and the newest whose schemas the package bundles.
VERSIONS = ["1.27.0", kubernetes_validate.latest_version()]


def _manifests() -> dict[str, dict[str, Any]]:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    found: dict[str, dict[str, Any]] = {}
    for name in kustomization["resources"]:
        for document in yaml.safe_load_all((DEPLOY / name).read_text()):
            found[document["kind"]] = document
    return found


def _container(manifests: dict[str, dict[str, Any]]) -> dict[str, Any]:
    containers = manifests["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def _mounted_config(manifests: dict[str, dict[str, Any]]) -> tuple[str, Config]:
    """The ConfigMap's config.yaml, parsed with the variables the Deployment sets."""
    env = {item["name"]: "x" * 64 for item in _container(manifests).get("env", [])}
    text: str = manifests["ConfigMap"]["data"]["config.yaml"]
    return text, parse_config(text, source="configmap.yaml", env=env)


def test_kustomization_lists_every_manifest() -> None:
    listed = set(yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())["resources"])
    present = {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


@pytest.mark.parametrize("version", VERSIONS)
def test_manifests_are_valid_kubernetes(version: str) -> None:
    manifests = _manifests()
    assert set(manifests) == {
        "ServiceAccount",
        "ConfigMap",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    }
    for kind, manifest in manifests.items():
        try:
            kubernetes_validate.validate(manifest, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{kind} is not valid Kubernetes {version}: {exc.message} at {exc.path}")


def test_deployment_matches_the_config_it_mounts() -> None:
    manifests = _manifests()
    pod = manifests["Deployment"]["spec"]["template"]["spec"]
    container = _container(manifests)
    raw, config = _mounted_config(manifests)
    listen = config.settings.listen

    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": listen.port}
    assert listen.host == "0.0.0.0"  # noqa: S104 - reachable from the kubelet and the Service
    # The health endpoints' default paths (the config does not move them).
    assert "health" not in yaml.safe_load(raw)
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert container[probe]["httpGet"] == {"path": path, "port": "http"}
    assert manifests["Service"]["spec"]["ports"][0]["targetPort"] == "http"

    # Kubernetes kills the pod after terminationGracePeriodSeconds, downloads or not.
    assert listen.drain_delay > 0
    assert listen.drain_delay + listen.shutdown_grace < pod["terminationGracePeriodSeconds"]

    # `serve --config` reads the file the ConfigMap is mounted as.
    config_path = Path(container["args"][container["args"].index("--config") + 1])
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    config_volume = volumes[next(n for n, p in mounts.items() if Path(p) == config_path.parent)]
    assert config_volume["configMap"]["name"] == manifests["ConfigMap"]["metadata"]["name"]
    assert config_path.name in manifests["ConfigMap"]["data"]

    # With a read-only root, the pid file must be on a writable (emptyDir) mount.
    assert listen.pid_file is not None
    writable = [Path(p) for n, p in mounts.items() if "emptyDir" in volumes[n]]
    assert any(listen.pid_file.is_relative_to(w) for w in writable)


def test_every_selector_finds_the_pods() -> None:
    manifests = _manifests()
    labels = manifests["Deployment"]["spec"]["template"]["metadata"]["labels"]
    selectors = [
        manifests["Deployment"]["spec"]["selector"]["matchLabels"],
        manifests["Service"]["spec"]["selector"],
        manifests["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
    ]
    for selector in selectors:
        assert selector.items() <= labels.items()
    target = manifests["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "s3-proxy")
    assert manifests["HorizontalPodAutoscaler"]["spec"]["minReplicas"] >= 2  # PDB can evict


def test_pods_run_locked_down() -> None:
    manifests = _manifests()
    pod = manifests["Deployment"]["spec"]["template"]["spec"]
    container = _container(manifests)
    assert pod["securityContext"]["runAsNonRoot"] is True
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert set(container["resources"]) == {"requests", "limits"}
    # Secrets come from a Secret, never from a literal in the manifests.
    env = {item["name"]: item for item in container["env"]}
    assert env["JWT_SECRET"]["valueFrom"]["secretKeyRef"]["key"] == "JWT_SECRET"
    assert all("value" not in item for item in env.values())


def test_dockerfile_runs_as_the_pods_user_and_checks_healthz() -> None:
    text = DOCKERFILE.read_text()
    user = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)[-1]
    assert user.split(":")[0] == "10001"  # numeric, so runAsNonRoot can verify it
    pod = _manifests()["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == 10001
    joined = text.replace("\\\n", " ")  # continuation lines
    healthcheck = re.search(r"^HEALTHCHECK .*", joined, re.MULTILINE)
    assert healthcheck is not None
    assert "/healthz" in healthcheck.group(0)
    assert "python" in healthcheck.group(0)
