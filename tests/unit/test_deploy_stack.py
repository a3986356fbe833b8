"""docker/compose.yaml, prometheus.yml, the Grafana provisioning and docker/k8s: they parse, every
file they name exists, and they agree with each other and with the server (settings, routes,
ports, drain time)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.deploy_helpers import (
    DASHBOARD,
    DOCKER,
    K8S,
    REPO,
    answered_paths,
    dashboard,
    fake_bundle_dir,
    load_yaml,
    load_yaml_all,
    read_dockerfile,
    settings_from_env,
    shutdown_bound_s,
    stages,
)

SERVERS = ("exitwise", "exitwise-cpu")


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fake_bundle_dir(tmp_path_factory.mktemp("deploy") / "bundle")


@pytest.fixture(scope="module")
def routes(bundle_dir: Path) -> set[str]:
    """The health and metrics paths the server really has."""
    status = answered_paths(bundle_dir, {"/healthz", "/readyz", "/metrics", "/no-such-path"})
    assert status == {"/healthz": 200, "/readyz": 503, "/metrics": 200, "/no-such-path": 404}
    return {path for path, code in status.items() if code != 404}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(DOCKER / "compose.yaml")
    return data


def _seconds(value: str) -> float:
    match = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", value)
    assert match and value, value
    return int(match.group(1) or 0) * 60 + int(match.group(2) or 0)


def _default(value: str) -> str:
    """``${VAR:-default}`` -> ``default`` (what compose uses when VAR is unset)."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


def _container_port(mapping: str) -> int:
    return int(_default(mapping).rsplit(":", 1)[1].split("/")[0])


# --- compose ----------------------------------------------------------------------------------


def test_compose_builds_and_mounts_files_that_exist(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        build = service.get("build")
        if build:
            context = (DOCKER / build["context"]).resolve()
            assert context == REPO, name
            assert (context / build["dockerfile"]).is_file(), name
        for volume in service.get("volumes", []):
            if isinstance(volume, str):
                source = volume.split(":")[0]
                if source in compose.get("volumes", {}):
                    continue  # a named volume
            else:
                source = volume["source"]
            if "${" in source:
                # The bundle: a user's path; compose refuses to start when it is missing.
                assert volume["bind"]["create_host_path"] is False, name
                var = re.match(r"\$\{(\w+)", source)
                assert var and var.group(1) in (REPO / "docs" / "deployment.md").read_text()
                continue
            assert (DOCKER / source).exists(), f"{name}: {source} does not exist"


def test_compose_servers(compose: dict[str, Any], bundle_dir: Path) -> None:
    services = compose["services"]
    gpu, cpu = services["exitwise"], services["exitwise-cpu"]
    assert gpu["profiles"] == ["gpu"] and cpu["profiles"] == ["cpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert "deploy" not in cpu
    assert gpu["build"]["dockerfile"] == "docker/Dockerfile"
    assert cpu["build"]["dockerfile"] == "docker/Dockerfile.cpu"
    for name in SERVERS:
        service = services[name]
        settings = settings_from_env(service["environment"], bundle_dir)
        assert service["environment"]["EXITWISE_BUNDLE"] == "/bundle"
        assert any(v.get("target") == "/bundle" and v.get("read_only") for v in service["volumes"])
        assert [_container_port(p) for p in service["ports"]] == [settings.port]
        assert settings.host == "0.0.0.0"
        # Docker sends SIGKILL after stop_grace_period: it must outlast the drain.
        assert _seconds(service["stop_grace_period"]) > shutdown_bound_s(settings), name
    assert settings_from_env(gpu["environment"], bundle_dir).require_gpu
    assert settings_from_env(cpu["environment"], bundle_dir).device == "cpu"


def test_prometheus_scrapes_the_servers(compose: dict[str, Any], bundle_dir: Path, routes) -> None:
    config = load_yaml(DOCKER / "prometheus.yml")
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "exitwise"]
    assert job["metrics_path"] == "/metrics" and "/metrics" in routes
    (sd,) = job["dns_sd_configs"]
    for name in SERVERS:
        service = compose["services"][name]
        assert sd["names"] == service["networks"]["default"]["aliases"]
        assert sd["port"] == settings_from_env(service["environment"], bundle_dir).port
    prometheus = compose["services"]["prometheus"]
    mount = "./prometheus.yml:/etc/prometheus/prometheus.yml:ro"
    assert mount in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]


def test_grafana_provisioning(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    mounts = {
        v.split(":")[1]: DOCKER / v.split(":")[0] for v in grafana["volumes"] if v.startswith("./")
    }
    provisioning = mounts["/etc/grafana/provisioning"]
    (source,) = load_yaml(provisioning / "datasources" / "prometheus.yaml")["datasources"]
    prometheus_port = _container_port(compose["services"]["prometheus"]["ports"][0])
    assert source["type"] == "prometheus"
    assert source["url"] == f"http://prometheus:{prometheus_port}"
    (provider,) = load_yaml(provisioning / "dashboards" / "exitwise.yaml")["providers"]
    dashboards_dir = mounts[provider["options"]["path"]]
    assert (dashboards_dir / DASHBOARD.name).resolve() == DASHBOARD.resolve()
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD.name}"
    # Every query of the dashboard goes to the provisioned data source.
    data = dashboard()
    uids = {p["datasource"]["uid"] for p in data["panels"] if "datasource" in p} | {
        t["datasource"]["uid"] for p in data["panels"] for t in p.get("targets", [])
    }
    assert uids == {source["uid"]}
    assert data["uid"] and data["title"]


# --- Kubernetes -------------------------------------------------------------------------------


def _k8s() -> dict[str, dict[str, Any]]:
    """Every manifest under docker/k8s by kind (one object per kind here)."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in load_yaml_all(path):
            if "kind" in doc:
                assert doc["kind"] not in out, doc["kind"]
                out[doc["kind"]] = doc
    return out


def test_kustomization_resources_exist() -> None:
    kustomization = load_yaml(K8S / "kustomization.yaml")
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file(), resource
    # The HPA needs a metrics adapter first, so it is applied on its own.
    assert "hpa.yaml" not in kustomization["resources"]


def test_deployment(routes: set[str], bundle_dir: Path) -> None:
    objects = _k8s()
    deployment = objects["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value", "") for e in container["env"] if "value" in e}
    settings = settings_from_env(env, bundle_dir)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": settings.port} and settings.host == "0.0.0.0"
    assert settings.workers == 1  # one registry per pod: each scrape sees the whole replica

    probes = {
        k: container[k]["httpGet"] for k in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == "/healthz"
    for probe in probes.values():
        assert probe["path"] in routes and probe["port"] in ports

    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert settings.require_gpu
    assert pod["terminationGracePeriodSeconds"] > shutdown_bound_s(settings)

    # Non-root, as the image's USER.
    runtime = stages(read_dockerfile(DOCKER / "Dockerfile"))["runtime"]
    uid, gid = next(i.args for i in runtime if i.keyword == "USER").split(":")
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == int(uid)
    assert pod["securityContext"]["runAsGroup"] == int(gid)

    # The bundle volume is the claim of pvc.yaml, mounted read-only at EXITWISE_BUNDLE.
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    bundle_mount = mounts[env["EXITWISE_BUNDLE"]]
    assert bundle_mount["readOnly"] is True
    claim = volumes[bundle_mount["name"]]["persistentVolumeClaim"]["claimName"]
    assert claim == objects["PersistentVolumeClaim"]["metadata"]["name"]
    assert objects["Pod"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == claim
    # A read-only root filesystem needs a writable /tmp (uploads spool there).
    assert container["securityContext"]["readOnlyRootFilesystem"] is True and "/tmp" in mounts

    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == "/metrics" and "/metrics" in routes
    assert int(annotations["prometheus.io/port"]) == settings.port


def test_service_and_autoscaler() -> None:
    objects = _k8s()
    deployment, service, hpa = (
        objects["Deployment"],
        objects["Service"],
        objects["HorizontalPodAutoscaler"],
    )
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    port_names = {
        p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
    }
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names

    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    name = metric["pods"]["metric"]["name"]
    # The adapter serves exactly that name, from that series, per pod.
    rules = load_yaml(K8S / "prometheus-adapter-values.yaml")["rules"]["custom"]
    (rule,) = [r for r in rules if r["name"]["as"] == name]
    assert rule["seriesQuery"].startswith(f"{name}{{")
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
    assert re.fullmatch(rule["name"]["matches"], name)
