"""Cluster faults: sessions streaming through the real proxy (Envoy), store (valkey-server) and replica
processes while a replica is killed with kill -9, another is drained with SIGTERM and restarted, the killed
one is restarted, and the store is restarted; every output checked against an offline run.

    python -m tests.cluster_faults                                  # 64 sessions x 1000 steps, 3 replicas
    python -m tests.cluster_faults --sessions 16 --steps 200        # the CI size (tests/test_cluster_faults.py)

Each session streams its steps in chunks through `NTMClient.stream_session(..., start_steps=0)` (one stream
per session, routed on `x-ntm-session`, resumed with `expect_steps` after every break). The run is cut into
five phases of chunks; a fault is injected while each phase is in flight:

    phase 2: kill -9 replica 0                phase 3: SIGTERM replica 1 (drain), then start it again
    phase 4: start replica 0 again            phase 5: restart the store (SIGTERM, down, start)

Checked: no session lost, every acknowledged step present (each session ends at exactly its step count, in
the store too), every output bit-identical to an offline onnxruntime run of the same graphs in the server's
row layout. Printed: outages seen by clients, retries by status, time to recover. Exit status 1 if a check fails.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ntm_serve.client.sdk import NTMClient
from ntm_serve.cluster.launcher import LocalCluster
from ntm_serve.server.state.store import SessionStore
from tests.soak import ROOT, offline_reference, snapshot_model


@dataclass(frozen=True)
class FaultConfig:
    models: Path = ROOT / "models"
    sessions: int = 64
    steps: int = 1000
    chunk: int = 10  # steps per request
    replicas: int = 3
    seed: int = 0
    commit_every: int = 1


@dataclass
class FaultReport:
    config: FaultConfig
    faults: list[tuple[str, float]] = field(default_factory=list)  # (what, seconds into the run)
    retries: int = 0
    codes: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)
    outages: list[float] = field(default_factory=list)
    lost_sessions: list[str] = field(default_factory=list)
    wrong_steps: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not (self.lost_sessions or self.wrong_steps or self.mismatched or self.errors)

    def table(self) -> str:
        c = self.config
        outages = sorted(self.outages)
        lines = [f"cluster faults: {c.sessions} sessions x {c.steps} steps ({c.chunk} per request), "
                 f"{c.replicas} replicas, commit every {c.commit_every}, {self.seconds:.1f} s",
                 "| fault | at (s) |", "|---|---|"]
        lines += [f"| {what} | {at:.1f} |" for what, at in self.faults]
        lines += ["", "| figure | value |", "|---|---|",
                  f"| sessions lost | {len(self.lost_sessions)} |",
                  f"| sessions not at their acknowledged step count | {len(self.wrong_steps)} |",
                  f"| sessions with an output not bit-identical to offline | {len(self.mismatched)} |",
                  f"| client errors (not retried) | {len(self.errors)} |",
                  f"| outages seen by clients (a run of failures, then success) | {len(outages)} |",
                  f"| retries | {self.retries} ({', '.join(f'{k} {v}' for k, v in sorted(self.codes.items()))}) |",
                  f"| time to recover, median / max (s) | "
                  f"{(outages[len(outages) // 2] if outages else 0):.2f} / {(outages[-1] if outages else 0):.2f} |"]
        lines += ["", "| what clients saw (status: message) | times |", "|---|---|"]
        lines += [f"| {why} | {n} |" for why, n in sorted(self.reasons.items(), key=lambda kv: -kv[1])]
        return "\n".join(lines)


class Gate:
    """How many chunks each session may send so far (the fault schedule moves it), and how many came back."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.allowed = 0
        self.answered = 0
        self.failed = 0  # sessions whose client gave up: they answer nothing more

    def chunks(self, inputs: np.ndarray, chunk: int) -> Iterator[np.ndarray]:
        for k, start in enumerate(range(0, len(inputs), chunk)):
            with self.cond:
                self.cond.wait_for(lambda k=k: self.allowed > k)
            yield inputs[start:start + chunk]

    def allow(self, chunks: int) -> None:
        with self.cond:
            self.allowed = chunks
            self.cond.notify_all()

    def got_one(self) -> None:
        with self.cond:
            self.answered += 1
            self.cond.notify_all()

    def give_up(self) -> None:
        with self.cond:
            self.failed += 1
            self.cond.notify_all()

    def wait_answered(self, count: int, timeout: float) -> bool:
        """Until `count` chunks came back, or a session failed (the run is lost anyway: stop waiting)."""
        with self.cond:
            return self.cond.wait_for(lambda: self.answered >= count or self.failed > 0, timeout)


def run_faults(config: FaultConfig, work_dir: Path, timeout_s: float = 600) -> FaultReport:
    report = FaultReport(config)
    rng = np.random.default_rng(config.seed)
    inputs = rng.integers(0, 2, (config.sessions, config.steps, 9)).astype(np.float32)  # (S, T, I)
    models = work_dir / "models"
    snapshot_model(config.models / "copy", models / "copy")
    expected, _ = offline_reference(models / "copy", inputs)
    n_chunks = -(-config.steps // config.chunk)
    phases = [n_chunks * p // 5 for p in range(1, 6)]
    gate = Gate()
    received: dict[str, list[np.ndarray]] = {}
    began = time.monotonic()
    with LocalCluster(models, config.replicas, "cpu", config.commit_every, work_dir / "cluster") as cluster, \
            NTMClient(cluster.proxy, timeout=timeout_s) as client:
        ids = [client.create_session("copy").session_id for _ in range(config.sessions)]

        def drive(k: int) -> None:
            sid = ids[k]
            received[sid] = []
            try:
                for output in client.stream_session(sid, gate.chunks(inputs[k], config.chunk), start_steps=0):
                    received[sid].append(output.outputs)  # type: ignore[arg-type]
                    gate.got_one()
            except Exception as err:  # recorded; the check below fails the run
                report.errors.append(f"{sid}: {err!r}")
                gate.give_up()

        threads = [threading.Thread(target=drive, args=(k,), daemon=True) for k in range(config.sessions)]
        for t in threads:
            t.start()

        def phase(p: int, fault: str | None, action: object = None) -> None:
            """Let the phase's requests go and inject the fault at once, while they are in flight."""
            if action is not None:
                report.faults.append((str(fault), time.monotonic() - began))
            gate.allow(phases[p])
            if action is not None:
                action()  # type: ignore[operator]
            if not gate.wait_answered(phases[p] * config.sessions, timeout_s):
                raise TimeoutError(f"phase {p + 1} did not complete ({gate.answered} chunks answered)")
            if gate.failed:
                gate.allow(n_chunks)  # release the others; the report says what failed

        schedule = [(None, None), ("kill -9 replica 0", lambda: cluster.kill_replica(0)),
                    ("SIGTERM replica 1 (drain), start it again",
                     lambda: (cluster.drain_replica(1), cluster.restart_replica(1))),
                    ("start replica 0 again", lambda: cluster.restart_replica(0)),
                    ("restart the store", lambda: cluster.restart_store(0.5))]
        for p, (fault, action) in enumerate(schedule):
            if not gate.failed:
                phase(p, fault, action)
        for t in threads:
            t.join(timeout_s)
        report.seconds = time.monotonic() - began
        stats = client.stats
        report.retries, report.codes, report.reasons, report.outages = (stats.retries, stats.codes, stats.reasons,
                                                                        stats.outages)
        check_against_store(cluster.store_url, ids, received, expected, config.steps, report)
    return report


def check_against_store(store_url: str, ids: Sequence[str], received: Mapping[str, list[np.ndarray]],
                        expected: Sequence[np.ndarray], steps: int, report: Any) -> None:
    """Every session from outside: in the store (else lost), at `steps` there and answered as many (else wrong
    steps), its answered outputs equal to the offline run's (else mismatched). Appends to the report's lists."""
    store = SessionStore(store_url)
    try:
        for k, sid in enumerate(ids):
            stored = store.sync.hget(store.key(sid), "steps")
            if stored is None:
                report.lost_sessions.append(sid)
                continue
            got = np.concatenate(received[sid]) if received.get(sid) else np.zeros((0, 8), np.float32)
            if int(stored) != steps or len(got) != steps:
                report.wrong_steps.append(f"{sid}: store {int(stored)}, answered {len(got)}")
            elif not np.array_equal(got, expected[k]):
                report.mismatched.append(sid)
    finally:
        store.close()


def main(argv: Sequence[str] | None = None) -> int:
    defaults = FaultConfig()
    p = argparse.ArgumentParser(prog="python -m tests.cluster_faults", description=__doc__.splitlines()[0])
    p.add_argument("--models", type=Path, default=defaults.models)
    p.add_argument("--sessions", type=int, default=defaults.sessions)
    p.add_argument("--steps", type=int, default=defaults.steps)
    p.add_argument("--chunk", type=int, default=defaults.chunk)
    p.add_argument("--replicas", type=int, default=defaults.replicas)
    p.add_argument("--commit-every", type=int, default=defaults.commit_every)
    args = p.parse_args(argv)
    config = FaultConfig(args.models, args.sessions, args.steps, args.chunk, args.replicas, 0, args.commit_every)
    with tempfile.TemporaryDirectory(prefix="ntm-faults-") as work:
        report = run_faults(config, Path(work))
    print(report.table())
    for line in report.errors[:10]:
        print(line)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
