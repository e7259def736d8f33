"""A client application installs the base package alone, in a fresh virtual environment, and calls a real server:
nothing of the server's (onnxruntime, prometheus, redis), the trainer's (torch) or the demos' (matplotlib,
scikit-learn) comes with it."""

from __future__ import annotations

import subprocess
import venv
from pathlib import Path

import pytest
from helpers import ROOT, service_config

from ntm_serve.server.server import ServerThread

CLIENT_APP = """
import sys
import numpy as np
from ntm_serve.client import NTMClient

with NTMClient(sys.argv[1], timeout=30) as client:
    session = client.create_session("copy")
    out = client.step(session.session_id, np.zeros((5, 9), np.float32))
    print(out.outputs.shape, client.get_session(session.session_id).steps)
"""
HEAVY = ("onnxruntime", "onnxruntime_gpu", "torch", "redis", "prometheus_client", "matplotlib", "sklearn")


@pytest.mark.slow
def test_the_base_install_calls_a_server_without_the_servers_packages(tmp_path: Path, copy_dir: Path) -> None:
    env_dir = tmp_path / "client-venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(ROOT)],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    probe = f"import importlib.util as u; print([m for m in {HEAVY!r} if u.find_spec(m)])"
    found = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert found.stdout.strip() == "[]", found.stdout + found.stderr
    with ServerThread(service_config(copy_dir)) as server:
        result = subprocess.run([str(python), "-c", CLIENT_APP, server.target], capture_output=True, text=True,
                                timeout=120, cwd=tmp_path)  # cwd outside the checkout: the installed package only
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(5, 8) 5"

