"""deploy/kubernetes: a kustomize base and two overlays, `single` and `fleet`. Each overlay is
rendered with `kubectl kustomize` (Debian's kubernetes-client, which scripts/test.sh installs:
kustomize v2, so the files stay within what it reads) and every document is valid against the
Kubernetes schemas (bundled by kubernetes-validate, so offline). The Deployments agree with
the config.yaml their ConfigMap holds: port, probe paths and timings (as docs/operations.md
gives them), the drain/grace budget, the mounted path and the variables the config expands.
The fleet shares its state on Redis, names the ingress as a trusted proxy and has the admin
endpoint on. The Dockerfile runs as a numeric non-root user and checks /healthz."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from proxy.config import Config, parse_config

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy" / "kubernetes"
DOCKERFILE = REPO / "Dockerfile"
OPERATIONS = REPO / "docs" / "operations.md"
OVERLAYS = ["single", "fleet"]
# The oldest Kubernetes the manifests are meant for (autoscaling/v2, policy/v1 and
# networking.k8s.io/v1 are GA well before it), and the newest whose schemas the package bundles.
VERSIONS = ["1.27.0", kubernetes_validate.latest_version()]
KUBECTL = shutil.which("kubectl")
# What the Secret holds, as the overlays' comments tell to create it.
SECRET_VALUES = {
    "JWT_SECRET": "x" * 64,
    "REDIS_URL": "redis://:password@s3-proxy-redis:6379/0",
    "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
    "AWS_SECRET_ACCESS_KEY": "x" * 40,
}
needs_kubectl = pytest.mark.skipif(
    KUBECTL is None, reason="kubectl not installed (scripts/test.sh installs kubernetes-client)"
)


@functools.cache
def _rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    assert KUBECTL is not None
    done = subprocess.run(
        [KUBECTL, "kustomize", str(DEPLOY / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"kubectl kustomize {overlay}: {done.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def _one(overlay: str, kind: str, name: str = "s3-proxy") -> dict[str, Any]:
    found = [
        doc
        for doc in _rendered(overlay)
        # A generated ConfigMap's name carries a hash of its content.
        if doc["kind"] == kind
        and re.fullmatch(rf"{name}(-[a-z0-9]{{10}})?", doc["metadata"]["name"])
    ]
    assert len(found) == 1, f"{overlay}: {len(found)} {kind} named {name}"
    return found[0]


def _kinds(overlay: str) -> list[str]:
    return sorted(doc["kind"] for doc in _rendered(overlay))


def _container(overlay: str) -> dict[str, Any]:
    containers = _one(overlay, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def _mounted_config(overlay: str) -> tuple[dict[str, Any], Config]:
    """The ConfigMap's config.yaml (raw and parsed), with the variables the Deployment sets."""
    env = {item["name"]: SECRET_VALUES[item["name"]] for item in _container(overlay)["env"]}
    text: str = _one(overlay, "ConfigMap", "s3-proxy-config")["data"]["config.yaml"]
    return yaml.safe_load(text), parse_config(text, source=f"{overlay}/config.yaml", env=env)


def _documented_probes() -> dict[str, dict[str, Any]]:
    """The probe settings docs/operations.md gives in its "Probes" example."""
    text = OPERATIONS.read_text()
    found = re.search(r"^livenessProbe: .*\nreadinessProbe: .*$", text, re.MULTILINE)
    assert found is not None, "docs/operations.md lost its probe example"
    probes: dict[str, dict[str, Any]] = yaml.safe_load(found.group(0))
    return probes


def _listed_files(directory: Path) -> set[str]:
    """Every file a kustomization.yaml names, directly."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    named = set(kustomization.get("resources", []))
    named |= set(kustomization.get("patchesStrategicMerge", []))
    for generator in kustomization.get("configMapGenerator", []):
        named |= set(generator.get("files", []))
    return named


def test_every_file_is_part_of_a_kustomization() -> None:
    for directory in sorted(p for p in DEPLOY.iterdir() if p.is_dir()):
        present = {p.name for p in directory.glob("*.yaml")} - {"kustomization.yaml"}
        assert _listed_files(directory) == present, directory.name
    assert {p.name for p in DEPLOY.iterdir()} == {"base", "single", "fleet", "redis"}


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("version", VERSIONS)
def test_overlays_render_valid_kubernetes(overlay: str, version: str) -> None:
    for document in _rendered(overlay):
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            kind, name = document["kind"], document["metadata"]["name"]
            pytest.fail(f"{overlay}: {kind} {name} is not valid Kubernetes {version}: {exc}")


@needs_kubectl
def test_each_overlay_has_what_its_shape_needs() -> None:
    assert _kinds("single") == ["ConfigMap", "Deployment", "Service", "ServiceAccount"]
    assert _kinds("fleet") == [
        "ConfigMap",
        "Deployment",
        "Deployment",  # Redis, from ../redis
        "HorizontalPodAutoscaler",
        "Ingress",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "Service",
        "Service",
        "ServiceAccount",
    ]


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_deployment_matches_the_config_it_mounts(overlay: str) -> None:
    deployment = _one(overlay, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = _container(overlay)
    raw, config = _mounted_config(overlay)
    listen = config.settings.listen

    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": listen.port}
    assert listen.host == "0.0.0.0"  # noqa: S104 - reachable from the kubelet and the Service
    # The health endpoints' default paths (the config does not move them).
    assert "health" not in raw
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert container[probe]["httpGet"] == {"path": path, "port": "http"}
    assert _one(overlay, "Service")["spec"]["ports"][0]["targetPort"] == "http"

    # Kubernetes kills the pod after terminationGracePeriodSeconds, downloads or not.
    assert listen.drain_delay > 0
    assert listen.drain_delay + listen.shutdown_grace < pod["terminationGracePeriodSeconds"]

    # `serve --config` reads the file the generated ConfigMap is mounted as.
    config_path = Path(container["args"][container["args"].index("--config") + 1])
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    config_volume = volumes[next(n for n, p in mounts.items() if Path(p) == config_path.parent)]
    config_map = _one(overlay, "ConfigMap", "s3-proxy-config")
    assert config_volume["configMap"]["name"] == config_map["metadata"]["name"]
    assert config_path.name in config_map["data"]

    # With a read-only root, the pid file must be on a writable (emptyDir) mount.
    assert listen.pid_file is not None
    writable = [Path(p) for n, p in mounts.items() if "emptyDir" in volumes[n]]
    assert any(listen.pid_file.is_relative_to(w) for w in writable)


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probe_timings_agree_with_the_docs(overlay: str) -> None:
    """Issue 23: the readiness probe (timeoutSeconds 2, failureThreshold 1) contradicted
    docs/operations.md, where each check may take health.timeout (2 s)."""
    container = _container(overlay)
    _, config = _mounted_config(overlay)
    documented = _documented_probes()
    for probe in ("livenessProbe", "readinessProbe"):
        shipped = {k: v for k, v in container[probe].items() if k != "httpGet"}
        expected = {k: v for k, v in documented[probe].items() if k != "httpGet"}
        assert shipped == expected, probe
        assert shipped["timeoutSeconds"] > config.settings.health.timeout


@needs_kubectl
def test_the_fleet_shares_its_state_and_knows_its_ingress() -> None:
    raw, config = _mounted_config("fleet")
    settings = config.settings
    # Revocations and limits on Redis, its URL from the Secret (never a literal).
    assert settings.state.backend == "redis"
    assert raw["state"]["url"] == "${REDIS_URL}"
    env = {item["name"]: item for item in _container("fleet")["env"]}
    assert env["REDIS_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "s3-proxy-secrets",
        "key": "REDIS_URL",
    }
    assert config.admin_access is not None  # a revocation on any replica reaches all
    assert settings.listen.trusted_proxies  # the ingress names each client
    assert settings.listen.drain_delay >= 10  # the balancer's deregistration time

    # The Ingress sends to the Service's port by name.
    ingress = _one("fleet", "Ingress")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    service = _one("fleet", "Service")
    assert backend["name"] == service["metadata"]["name"]
    assert backend["port"]["name"] in {port["name"] for port in service["spec"]["ports"]}

    # The included Redis: reachable by its Service's name, only from the proxy's pods, and
    # with the password the proxy's URL carries (both from the one Secret).
    redis = _one("fleet", "Deployment", "s3-proxy-redis")
    redis_service = _one("fleet", "Service", "s3-proxy-redis")
    assert "@s3-proxy-redis:6379/" in SECRET_VALUES["REDIS_URL"]
    assert redis_service["spec"]["ports"][0]["port"] == 6379
    labels = redis["spec"]["template"]["metadata"]["labels"]
    assert redis_service["spec"]["selector"].items() <= labels.items()
    policy = _one("fleet", "NetworkPolicy", "s3-proxy-redis")["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    proxy_labels = _one("fleet", "Deployment")["spec"]["template"]["metadata"]["labels"]
    (allowed,) = policy["ingress"][0]["from"]
    assert allowed["podSelector"]["matchLabels"].items() <= proxy_labels.items()
    redis_env = redis["spec"]["template"]["spec"]["containers"][0]["env"]
    assert redis_env[0]["valueFrom"]["secretKeyRef"]["name"] == "s3-proxy-secrets"


@needs_kubectl
def test_single_is_one_replica_with_its_state_in_memory() -> None:
    _, config = _mounted_config("single")
    assert _one("single", "Deployment")["spec"]["replicas"] == 1
    assert config.settings.state.backend == "memory"
    assert not config.settings.listen.trusted_proxies


@needs_kubectl
def test_every_selector_finds_the_pods() -> None:
    deployment = _one("fleet", "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selectors = [
        deployment["spec"]["selector"]["matchLabels"],
        _one("fleet", "Service")["spec"]["selector"],
        _one("fleet", "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
    ]
    for selector in selectors:
        assert selector.items() <= labels.items()
    hpa = _one("fleet", "HorizontalPodAutoscaler")["spec"]
    assert (hpa["scaleTargetRef"]["kind"], hpa["scaleTargetRef"]["name"]) == (
        "Deployment",
        "s3-proxy",
    )
    assert hpa["minReplicas"] >= 2  # so the PDB can evict one
    assert deployment["spec"]["replicas"] >= hpa["minReplicas"]


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_locked_down(overlay: str) -> None:
    for deployment in (doc for doc in _rendered(overlay) if doc["kind"] == "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"]["drop"] == ["ALL"]
            assert set(container["resources"]) == {"requests", "limits"}
            # Secrets come from a Secret, never from a literal in the manifests.
            for item in container["env"]:
                assert "value" not in item
                assert item["valueFrom"]["secretKeyRef"]["name"] == "s3-proxy-secrets"


def test_dockerfile_runs_as_the_pods_user_and_checks_healthz() -> None:
    text = DOCKERFILE.read_text()
    user = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)[-1]
    assert user.split(":")[0] == "10001"  # numeric, so runAsNonRoot can verify it
    base = yaml.safe_load((DEPLOY / "base" / "deployment.yaml").read_text())
    assert base["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == 10001
    joined = text.replace("\\\n", " ")  # continuation lines
    healthcheck = re.search(r"^HEALTHCHECK .*", joined, re.MULTILINE)
    assert healthcheck is not None
    assert "/healthz" in healthcheck.group(0)
    assert "python" in healthcheck.group(0)
