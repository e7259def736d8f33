"""Store faults: sessions streaming through the real proxy (Envoy) and replica processes while the replicated
store (a Valkey primary, its replicas, three Sentinels) loses its primary in three ways; every output checked
against an offline run.

    python -m tests.store_faults                                   # 32 sessions x 600 steps
    python -m tests.store_faults --sessions 4 --steps 160          # the CI size (tests/cluster/test_store_faults.py)

Each session streams its steps in chunks through `NTMClient.stream_session(..., start_steps=0)` (resumed with
`expect_steps` after every break). The run is cut into phases of chunks; a fault is injected while a phase's
requests are in flight, and what a supervisor would do follows (ntm_serve/cluster/launcher.py, before_restart):

    kill-primary              kill -9 the primary; the Sentinels promote a replica; the old primary is started
                              again and must come back as a replica of the new one
    stall-primary             SIGSTOP the primary until the Sentinels promoted a replica, then SIGCONT: it must
                              refuse writes as a stale primary and be turned into a replica
    kill-primary-and-replica  kill -9 the primary and a replica at once; both started again as replicas

Checked: no session lost, every session at exactly its step count in the store, every output bit-identical to
an offline onnxruntime run, the store settled again (one primary, every replica linked) after each fault.
Printed: per fault the Sentinels' failover time, the longest pause of a session's answers (median / max over
sessions: the time until steps flow again), the retries; what clients saw. Exit status 1 if a check fails.
"""

from __future__ import annotations

import argparse
import itertools
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import redis

from ntm_serve.client.sdk import NTMClient
from ntm_serve.cluster.launcher import LOCAL, LocalCluster, Proc, store_role
from tests.cluster_faults import Gate, check_against_store
from tests.soak import ROOT, offline_reference, snapshot_model

FAULTS = ("kill-primary", "stall-primary", "kill-primary-and-replica")


@dataclass(frozen=True)
class StoreFaultConfig:
    models: Path = ROOT / "models"
    sessions: int = 32
    steps: int = 600
    chunk: int = 10  # steps per request
    replicas: int = 2  # ntm-serve replicas behind the proxy
    store_replicas: int = 2
    store_min_replicas: int = 1
    store_wait_ms: int = 1000
    down_ms: int = 1000  # the Sentinels' down-after-milliseconds
    faults: tuple[str, ...] = FAULTS
    seed: int = 0


@dataclass
class FaultFigures:
    fault: str
    at_s: float = 0.0  # seconds into the run
    failover_s: float = 0.0  # fault to a promoted primary, as the Sentinels name it
    pauses: list[float] = field(default_factory=list)  # per session: its longest gap between answers in the phase
    retries: int = 0
    note: str = ""  # what the old primary did (its role once back; what a write to it got as a stale primary)


@dataclass
class StoreFaultReport:
    config: StoreFaultConfig
    figures: list[FaultFigures] = field(default_factory=list)
    retries: int = 0
    codes: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)
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
        lines = [f"store faults: {c.sessions} sessions x {c.steps} steps ({c.chunk} per request), {c.replicas} "
                 f"replicas; store: primary + {c.store_replicas} replicas + 3 Sentinels, writes wait for "
                 f"{c.store_min_replicas} (at most {c.store_wait_ms} ms), down after {c.down_ms} ms; "
                 f"{self.seconds:.1f} s", "",
                 "| fault | at (s) | failover (s) | steps flow again: longest pause, median / max (s) | retries | "
                 "the old primary |", "|---|---|---|---|---|---|"]
        for f in self.figures:
            pauses = sorted(f.pauses) or [0.0]
            lines.append(f"| {f.fault} | {f.at_s:.1f} | {f.failover_s:.2f} | {pauses[len(pauses) // 2]:.2f} / "
                         f"{pauses[-1]:.2f} | {f.retries} | {f.note} |")
        lines += ["", "| figure | value |", "|---|---|",
                  f"| sessions lost | {len(self.lost_sessions)} |",
                  f"| sessions not at their acknowledged step count | {len(self.wrong_steps)} |",
                  f"| sessions with an output not bit-identical to offline | {len(self.mismatched)} |",
                  f"| client errors (not retried) | {len(self.errors)} |",
                  f"| retries | {self.retries} ({', '.join(f'{k} {v}' for k, v in sorted(self.codes.items()))}) |"]
        lines += ["", "| what clients saw (status: message) | times |", "|---|---|"]
        lines += [f"| {why[:160]} | {n} |" for why, n in sorted(self.reasons.items(), key=lambda kv: -kv[1])]
        return "\n".join(lines)


def _until(what: Callable[[], bool], timeout: float, message: str) -> float:
    began = time.monotonic()
    while not what():
        if time.monotonic() - began > timeout:
            raise TimeoutError(message)
        time.sleep(0.05)
    return time.monotonic() - began


def stale_write(port: int) -> str:
    """A write straight to the store on `port`, as a client still connected to it would send: what it got."""
    client = redis.Redis(LOCAL, port, socket_timeout=2.0)
    try:
        client.eval("return redis.call('SET', KEYS[1], '1')", 1, "ntm:stale-probe")
        return "accepted"
    except redis.ReadOnlyError:
        return "READONLY"
    except redis.ResponseError as err:
        return str(err).split(" ", 1)[0]
    except (redis.RedisError, OSError) as err:
        return type(err).__name__
    finally:
        client.close()


def inject(cluster: LocalCluster, fault: str, figures: FaultFigures) -> None:
    """The fault, then what a supervisor does about it; waits until the store has settled again."""
    primary = cluster.primary()
    back: list[Proc] = []  # the nodes started again, each of which must start as a replica
    if fault == "kill-primary":
        cluster.kill_store_node(primary)
        figures.failover_s = cluster.wait_failover(primary.port)
        back = [primary]
    elif fault == "stall-primary":
        cluster.kill_store_node(primary, signal.SIGSTOP)
        figures.failover_s = cluster.wait_failover(primary.port)
        cluster.kill_store_node(primary, signal.SIGCONT)
        figures.note = f"a write to it at once: {stale_write(primary.port)}; "
        demoted = _until(lambda: store_role(primary.port) == "replica", 60, "the stale primary was not demoted")
        figures.note += f"a replica {demoted:.1f} s after SIGCONT"
    elif fault == "kill-primary-and-replica":
        replica = next(s for s in cluster.stores if s is not primary)
        cluster.kill_store_node(primary)
        cluster.kill_store_node(replica)
        figures.failover_s = cluster.wait_failover(primary.port)
        back = [replica, primary]
    else:
        raise ValueError(f"unknown fault {fault!r}; one of {', '.join(FAULTS)}")
    promoted = cluster.primary()
    started = []
    for node in back:
        cluster.restart_store_node(node)
        started.append(store_role(node.port))  # at once, before the Sentinels could touch it
    cluster.wait_store_settled(60)
    if back:
        figures.note = f"back as {', '.join(started)}"
        if any(role != "replica" for role in started):
            raise AssertionError(f"{fault}: a restarted store node started as {started}, not as a replica; "
                                 f"what the Sentinels did:\n{sentinel_events(cluster)}")
    now = cluster.primary()
    if now is not promoted:  # legitimate Sentinel behaviour on a loaded machine; the data checks still apply
        figures.note += f"; then a second failover, from {promoted.name} to {now.name}, while the store settled"


def sentinel_events(cluster: LocalCluster, lines: int = 200) -> str:
    """The failover events in the first Sentinel's log (what to read when a check on the store's roles fails)."""
    events = ("+sdown", "+odown", "+switch-master", "+convert-to-slave", "+failover-end", "-failover-abort")
    tail = cluster.sentinels[0].tail(lines).splitlines() if cluster.sentinels else []
    return "\n".join(line for line in tail if any(e in line for e in events))


def _pauses(stamps: list[float], start: float, end: float) -> float:
    """The longest gap between answers (or from `start` to the first) inside [start, end]."""
    inside = [start, *(t for t in stamps if start <= t <= end)]
    return max((b - a for a, b in itertools.pairwise(inside)), default=0.0)


def run_store_faults(config: StoreFaultConfig, work_dir: Path, timeout_s: float = 600) -> StoreFaultReport:
    report = StoreFaultReport(config)
    rng = np.random.default_rng(config.seed)
    inputs = rng.integers(0, 2, (config.sessions, config.steps, 9)).astype(np.float32)  # (S, T, I)
    models = work_dir / "models"
    snapshot_model(config.models / "copy", models / "copy")
    expected, _ = offline_reference(models / "copy", inputs)
    n_chunks = -(-config.steps // config.chunk)
    n_phases = len(config.faults) + 2  # a warm-up, one per fault, one after them all
    phases = [n_chunks * p // n_phases for p in range(1, n_phases + 1)]
    gate = Gate()
    received: dict[str, list[np.ndarray]] = {}
    stamps: dict[str, list[float]] = {}
    began = time.monotonic()
    cluster = LocalCluster(models, config.replicas, "cpu", workdir=work_dir / "cluster",
                           store_replicas=config.store_replicas, store_min_replicas=config.store_min_replicas,
                           store_wait_ms=config.store_wait_ms, sentinel_down_ms=config.down_ms)
    with cluster, NTMClient(cluster.proxy, timeout=timeout_s) as client:
        ids = [client.create_session("copy").session_id for _ in range(config.sessions)]

        def drive(k: int) -> None:
            sid = ids[k]
            received[sid], stamps[sid] = [], []
            try:
                for output in client.stream_session(sid, gate.chunks(inputs[k], config.chunk), start_steps=0):
                    received[sid].append(output.outputs)  # type: ignore[arg-type]
                    stamps[sid].append(time.monotonic())
                    gate.got_one()
            except Exception as err:  # recorded; the check below fails the run
                report.errors.append(f"{sid}: {err!r}")
                gate.give_up()

        threads = [threading.Thread(target=drive, args=(k,), daemon=True) for k in range(config.sessions)]
        for t in threads:
            t.start()
        windows: list[tuple[FaultFigures, float, float]] = []
        schedule: list[str | None] = [None, *config.faults, None]
        for p, fault in enumerate(schedule):
            if gate.failed:
                break
            figures, start, retries = None, time.monotonic(), client.stats.retries
            gate.allow(phases[p])
            if fault is not None:
                figures = FaultFigures(fault, start - began)
                report.figures.append(figures)
                inject(cluster, fault, figures)
            if not gate.wait_answered(phases[p] * config.sessions, timeout_s):
                raise TimeoutError(f"phase {p + 1} did not complete ({gate.answered} chunks answered)")
            if figures is not None:
                figures.retries = client.stats.retries - retries
                windows.append((figures, start, time.monotonic()))
        gate.allow(n_chunks)  # release any left (after a failure: the report says what failed)
        for t in threads:
            t.join(timeout_s)
        report.seconds = time.monotonic() - began
        stats = client.stats
        report.retries, report.codes, report.reasons = stats.retries, stats.codes, stats.reasons
        for figures, start, end in windows:
            figures.pauses = [_pauses(stamps.get(sid, []), start, end) for sid in ids]
        check_against_store(cluster.store_url, ids, received, expected, config.steps, report)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    d = StoreFaultConfig()
    p = argparse.ArgumentParser(prog="python -m tests.store_faults", description=__doc__.splitlines()[0])
    p.add_argument("--models", type=Path, default=d.models)
    p.add_argument("--sessions", type=int, default=d.sessions)
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--chunk", type=int, default=d.chunk)
    p.add_argument("--replicas", type=int, default=d.replicas)
    p.add_argument("--store-replicas", type=int, default=d.store_replicas)
    p.add_argument("--store-min-replicas", type=int, default=d.store_min_replicas)
    p.add_argument("--store-wait-ms", type=int, default=d.store_wait_ms)
    p.add_argument("--down-ms", type=int, default=d.down_ms)
    p.add_argument("--faults", default=",".join(d.faults), help=f"comma-separated, of: {', '.join(FAULTS)}")
    args = p.parse_args(argv)
    config = StoreFaultConfig(args.models, args.sessions, args.steps, args.chunk, args.replicas, args.store_replicas,
                              args.store_min_replicas, args.store_wait_ms, args.down_ms,
                              tuple(f for f in args.faults.split(",") if f))
    with tempfile.TemporaryDirectory(prefix="ntm-store-faults-") as work:
        report = run_store_faults(config, Path(work))
    print(report.table())
    for line in report.errors[:10]:
        print(line)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
