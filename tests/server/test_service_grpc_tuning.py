"""The server's gRPC tuning (ntm_serve/server/__main__.py): GRPC_EXPERIMENTS defaults to "-event_engine_listener"
before gRPC
starts, a caller's own value wins, and the pinned grpcio knows the experiment (an unknown name is only logged, so a
grpcio upgrade that drops it would silently undo the tuning: this test is what notices). Its effect, half the thread
hops per message, is measured by benchmarks/overhead.py (docs/performance.md, section 3), not here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = "-event_engine_listener"


def _python(code: str, experiments: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
    if experiments is not None:
        env["GRPC_EXPERIMENTS"] = experiments
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120, check=True)


@pytest.mark.parametrize(("given", "seen"), [(None, DEFAULT), ("", ""), ("-event_engine_client",) * 2])
def test_the_server_sets_its_default_and_keeps_the_callers(given: str | None, seen: str) -> None:
    out = _python("import os, ntm_serve.server.__main__; print(repr(os.environ['GRPC_EXPERIMENTS']))", given)
    assert out.stdout.strip() == repr(seen)


def _start_a_server() -> str:
    return ("import grpc; from concurrent import futures; s = grpc.server(futures.ThreadPoolExecutor(1)); "
            "s.add_insecure_port('127.0.0.1:0'); s.start(); s.stop(None)")


def test_the_pinned_grpcio_knows_the_experiment() -> None:
    assert "Unknown experiment" not in _python(_start_a_server(), DEFAULT).stderr
    assert "Unknown experiment" in _python(_start_a_server(), "-no_such_experiment_here").stderr  # the check can fail
