"""A real `python -m service` process on loopback ports, for the service and memory benchmarks."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from prometheus_client.parser import text_string_to_metric_families

from service.proto_gen.ntm.v1 import ntm_pb2, ntm_pb2_grpc

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"  # loopback only: the load generator never leaves the machine


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    proc: subprocess.Popen[bytes]
    port: int
    metrics_port: int
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def target(self) -> str:
        return f"{HOST}:{self.port}"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (graceful), then SIGKILL if it does not exit in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("server %d ignored SIGTERM for %.0f s: killing it", self.pid, timeout)
                self.proc.kill()
                self.proc.wait(10)


def start_server(models_dir: Path, extra: Sequence[str] = (), ready_timeout: float = 120.0,
                 tree: Path = REPO) -> ServerProcess:
    """Start the server (the `service` package of source tree `tree`) on free loopback ports and wait until
    ListModels answers."""
    port, metrics_port = free_port(), free_port()
    log_file = Path(tempfile.mkstemp(prefix="ntm-bench-server-", suffix=".log")[1])
    cmd = [sys.executable, "-m", "service", "--models", str(models_dir), "--host", HOST, "--port", str(port),
           "--metrics-host", HOST, "--metrics-port", str(metrics_port), "--log-level", "WARNING", *extra]
    env = {**os.environ, "PYTHONPATH": str(tree) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with log_file.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = ServerProcess(proc, port, metrics_port, log_file)
    deadline = time.monotonic() + ready_timeout
    with grpc.insecure_channel(server.target) as channel:
        stub = ntm_pb2_grpc.NTMStub(channel)
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{server.log_tail()}")
            try:
                stub.ListModels(ntm_pb2.ListModelsRequest(), timeout=2)
                return server
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    server.stop()
                    raise RuntimeError(f"server not ready after {ready_timeout} s:\n{server.log_tail()}") from None
                time.sleep(0.2)


@contextlib.contextmanager
def running_server(models_dir: Path, extra: Sequence[str] = ()) -> Iterator[ServerProcess]:
    server = start_server(models_dir, extra)
    try:
        yield server
    finally:
        server.stop()


def scrape(metrics_port: int) -> dict[str, float]:
    """Prometheus samples of the server as name{label=value,...} -> value."""
    with urllib.request.urlopen(f"http://{HOST}:{metrics_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}"] = s.value
    return samples


def metric_sum(samples: dict[str, float], name: str) -> float:
    """Sum of a metric over all its label sets (e.g. every model), ignoring histogram buckets."""
    return sum(v for k, v in samples.items() if k.split("{", 1)[0] == name)
