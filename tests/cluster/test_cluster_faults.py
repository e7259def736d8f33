"""The cluster through its real parts: `python -m ntm_serve.cluster up` (store, replicas, Envoy as processes),
and sessions streaming through the proxy while a replica is killed (-9), another drained (SIGTERM) and
restarted, and the store restarted: nothing lost, every output bit-identical (tests/cluster_faults.py; the
64-session run is `python -m tests.cluster_faults`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
from helpers import ROOT, Offline, alive, bits

from ntm_serve.client.sdk import NTMClient
from tests.cluster_faults import FaultConfig, run_faults


def test_cluster_up_prints_its_processes_serves_and_stops_on_sigint(copy_dir: Path, offline: Offline,
                                                                     rng: np.random.Generator) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "ntm_serve.cluster", "up", "--replicas", "2", "--models",
                             str(copy_dir), "--provider", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line, proc.stderr.read()  # type: ignore[union-attr]
        info = json.loads(line)
        pids = [info["store"]["pid"], info["proxy_process"]["pid"], *(r["pid"] for r in info["replicas"])]
        assert len(info["replicas"]) == 2 and all(alive(p) for p in pids)
        x = bits(rng, 8)
        with NTMClient(info["proxy"], timeout=30) as client:
            sid = client.create_session("copy").session_id
            out = [client.step(sid, x[:4], expect_steps=0).outputs, client.step(sid, x[4:], expect_steps=4).outputs]
        assert np.array_equal(np.concatenate(out), offline.run(x)["outputs"])
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
    assert not any(alive(p) for p in pids)


def test_sessions_survive_kill_drain_and_store_restart(copy_dir: Path, tmp_path: Path) -> None:
    report = run_faults(FaultConfig(models=copy_dir, sessions=16, steps=200, chunk=10, replicas=3), tmp_path,
                        timeout_s=240)
    print(report.table())
    assert report.ok, report.table() + "\n" + "\n".join(report.errors)
    assert [what for what, _ in report.faults] == ["kill -9 replica 0", "SIGTERM replica 1 (drain), start it again",
                                                   "start replica 0 again", "restart the store"]
    assert report.retries > 0  # the faults were felt (and retried), not dodged


def test_maglev_moves_only_the_leavers_sessions(copy_dir: Path, tmp_path: Path) -> None:
    """Counts, not timings: a replica leaves (drained) and rejoins; through the real Envoy, only the sessions it
    held move, and all of them come back (benchmarks/cluster_bench.py reports the same on 150 sessions)."""
    from benchmarks.cluster_bench import sessions_moved
    from ntm_serve.cluster.launcher import LocalCluster

    with LocalCluster(copy_dir, 3, "cpu", workdir=tmp_path / "cluster") as cluster:
        moved = sessions_moved(cluster, 30)
    assert 0 < moved["held_by_leaver"] < 30
    assert moved["moved_on_leave"] == moved["held_by_leaver"] == moved["moved_on_join"]
    assert moved["back_where_they_were"] == 30
