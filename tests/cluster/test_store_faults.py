"""The replicated store under live sessions, through the real parts: `ntm-cluster up --store-replicas 2` names
every store process with its role and restarts a killed primary as a replica; and sessions streaming through
the proxy while the store's primary is killed -9, stalled (SIGSTOP) past the failover, and killed together with
a replica: nothing acknowledged lost, every output bit-identical (tests/store_faults.py; the larger run is
`python -m tests.store_faults`)."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
from helpers import ROOT, Offline, alive, bits

from ntm_serve.client.sdk import NTMClient
from ntm_serve.cluster.launcher import store_role
from tests.store_faults import FAULTS, StoreFaultConfig, run_store_faults


def _lines(stream: Any, into: queue.Queue[dict[str, Any]]) -> None:
    for line in stream:
        into.put(json.loads(line))


def _next(events: queue.Queue[dict[str, Any]], event: str, process: str, timeout: float = 60) -> dict[str, Any]:
    while True:
        got = events.get(timeout=timeout)
        if got.get("event") == event and got.get("process") == process:
            return got


def test_cluster_up_with_store_replicas_names_roles_and_restarts_a_killed_primary_as_a_replica(
        copy_dir: Path, offline: Offline, rng: np.random.Generator) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "ntm_serve.cluster", "up", "--replicas", "2", "--store-replicas",
                             "2", "--models", str(copy_dir), "--provider", "cpu"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line, proc.stderr.read()  # type: ignore[union-attr]
        info = json.loads(line)
        store = info["store"]
        roles = sorted(p["role"] for p in store["processes"])
        assert roles == ["primary", "replica", "replica", "sentinel", "sentinel", "sentinel"]
        assert store["url"].startswith("redis+sentinel://") and store["min_replicas"] == 1
        assert all(alive(p["pid"]) for p in store["processes"])
        primary = next(p for p in store["processes"] if p["role"] == "primary")
        assert (primary["pid"], primary["port"]) == (store["pid"], store["port"])
        events: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=_lines, args=(proc.stdout, events), daemon=True).start()
        x = bits(rng, 12)
        with NTMClient(info["proxy"], timeout=60) as client:
            sid = client.create_session("copy").session_id
            out = [client.step(sid, x[:4], expect_steps=0).outputs]
            os.kill(primary["pid"], signal.SIGKILL)
            exited = _next(events, "exited", primary["name"], 30)
            assert (exited["pid"], exited["signal"]) == (primary["pid"], "SIGKILL")
            out.append(client.step(sid, x[4:8], expect_steps=4).outputs)  # after the Sentinels' failover
            restarted = _next(events, "restarted", primary["name"])
            assert restarted["port"] == primary["port"] and alive(restarted["pid"])
            assert store_role(primary["port"]) == "replica"  # never a second primary
            out.append(client.step(sid, x[8:], expect_steps=8).outputs)
        assert np.array_equal(np.concatenate(out), offline.run(x)["outputs"])
        assert client.stats.retries > 0  # the failover was felt, and retried
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(90) == 0
    assert not any(alive(p["pid"]) for p in store["processes"] if p["name"] != primary["name"])
    assert not alive(restarted["pid"])


def test_sessions_survive_the_store_primary_killed_stalled_and_lost_with_a_replica(copy_dir: Path,
                                                                                    tmp_path: Path) -> None:
    config = StoreFaultConfig(models=copy_dir, sessions=4, steps=160, chunk=10, replicas=2, store_wait_ms=5000)
    report = run_store_faults(config, tmp_path / "run1", timeout_s=240)
    print(report.table())
    if report.ok and any(f.retries == 0 for f in report.figures):
        # A fault that no client's request met says nothing either way (seen once in CI on a fast box: the primary
        # killed and failed over with no step in flight): the run is inconclusive, and runs once more.
        report = run_store_faults(config, tmp_path / "run2", timeout_s=240)
        print(report.table())
    assert report.ok, report.table() + "\n" + "\n".join(report.errors)
    assert [f.fault for f in report.figures] == list(FAULTS)
    for figures in report.figures:
        assert figures.retries > 0, f"{figures.fault} was not felt by the clients"
        assert 0 < figures.failover_s < 15
    stalled = report.figures[1]
    assert stalled.note.startswith("a write to it at once: NOREPLICAS") or "READONLY" in stalled.note
