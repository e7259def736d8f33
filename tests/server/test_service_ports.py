"""Ports without a race: `--port 0 --port-file PATH` (the server binds a free port itself and says which), a port
that is taken (a one-line startup error, exit status 2), and the helpers of ntm_serve/server/ports.py, on real
sockets and
real server processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT, service_config

from ntm_serve.client.sdk import NTMClient
from ntm_serve.server.healthcheck import check
from ntm_serve.server.ports import (
    IN_USE,
    LOCAL,
    BindError,
    bind_error,
    listens,
    read_port_file,
    wait_port_file,
    write_port_file,
)
from ntm_serve.server.server import ServerThread


@pytest.fixture
def held() -> Iterator[socket.socket]:
    """A loopback port this test process listens on: taken for everyone else."""
    with socket.socket() as s:
        s.bind((LOCAL, 0))
        s.listen()
        yield s


def _serve(copy_dir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "ntm_serve.server", "--models", str(copy_dir), "--host", LOCAL,
            "--metrics-host", LOCAL, "--provider", "cpu", "--log-format", "text", *args]


def test_bind_error_and_listens_see_who_holds_a_port(held: socket.socket) -> None:
    port = held.getsockname()[1]
    assert bind_error(LOCAL, port) == IN_USE == "Address already in use"
    assert listens(os.getpid(), port)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert not listens(child.pid, port)  # the port is answered, but not by that process
    finally:
        child.kill()
        child.wait()
    held.close()
    assert bind_error(LOCAL, port) == "" and not listens(os.getpid(), port)


def test_port_file_is_read_only_from_the_process_that_wrote_it(tmp_path: Path) -> None:
    path = tmp_path / "ports.json"
    assert read_port_file(path) is None
    write_port_file(path, {"port": 1234})
    assert read_port_file(path) == {"pid": os.getpid(), "port": 1234}
    assert read_port_file(path, os.getpid()) == {"pid": os.getpid(), "port": 1234}
    assert read_port_file(path, os.getpid() + 1) is None  # a stale file of an earlier process is no answer
    path.write_text('{"pid": ')  # a torn file reads as not there yet
    assert read_port_file(path) is None


def test_port_0_with_a_port_file_serves_on_the_port_the_file_names(copy_dir: Path, tmp_path: Path) -> None:
    """A supervisor's view: start with port 0 everywhere, wait for the file, call the server where it says; on
    SIGTERM the server exits 0 and removes the file."""
    path = tmp_path / "server.ports"
    log_path = tmp_path / "server.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(_serve(copy_dir, "--port", "0", "--metrics-port", "0", "--health-port", "0",
                                          "--port-file", str(path)),
                                   cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ,
                                                                                        "PYTHONPATH": str(ROOT)})
    try:
        ports = wait_port_file(path, process, log_path)
        assert ports["pid"] == process.pid
        port, metrics_port, health_port = ports["port"], ports["metrics_port"], ports["health_port"]
        assert 0 not in (port, metrics_port, health_port) and len({port, metrics_port, health_port}) == 3
        assert all(listens(process.pid, p) for p in (port, metrics_port, health_port))
        assert check(f"{LOCAL}:{port}", "ntm.v1.NTM") == "SERVING"  # SERVING already when the file appears
        assert check(f"{LOCAL}:{health_port}", "ntm.v1.NTM") == "SERVING"
        with NTMClient(f"{LOCAL}:{port}", timeout=60) as client:
            session = client.create_session("copy")
            assert client.step(session.session_id, np.zeros((3, 9), np.float32)).steps == 3
        metrics = urllib.request.urlopen(f"http://{LOCAL}:{metrics_port}/metrics", timeout=10).read().decode()
        assert "ntm_" in metrics
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, log_path.read_text()
        assert not path.exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_taken_port_is_one_line_and_exit_status_2(copy_dir: Path, tmp_path: Path, held: socket.socket) -> None:
    """The message names the port and the OS's reason (a launcher retries on IN_USE); no port file is written."""
    port, path = held.getsockname()[1], tmp_path / "server.ports"
    result = subprocess.run(_serve(copy_dir, "--port", str(port), "--metrics-port", "-1", "--port-file", str(path)),
                            capture_output=True, text=True, timeout=120, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 2, result.stderr
    assert f"cannot start: cannot bind the gRPC port {LOCAL}:{port}: {IN_USE}" in result.stderr
    assert "Traceback" not in result.stderr and not path.exists()
    metrics_taken = service_config(copy_dir, metrics_port=port)
    with pytest.raises(BindError, match=f"cannot bind the metrics port {LOCAL}:{port}: {IN_USE}"):
        ServerThread(metrics_taken).start()

