"""Cluster benchmark: `python -m benchmarks.cluster_bench [--quick] [--out DIR]`.

On one machine, the same closed-loop load (benchmarks/loadgen.py: one stream per session, 1- and 20-step
messages) against

    single      one server, no store (the default mode)
    replica     one replica in replica mode, straight to its port: the difference to `single` is the
                cost of committing every request to the store before answering
    cluster-1   the same replica behind Envoy (proxy hop + commit)
    cluster-N   N replicas behind Envoy, all on this machine (shares its cores: not a scaling figure)

and, without timing, how many sessions move to another replica when one leaves (SIGTERM) and joins again
(consistent hashing should move about 1/N), read from the store's `holder` field of every session.

Quick mode checks the script with tiny counts; its numbers mean nothing. The figures belong to a quiet
machine (docs/performance.md says which were measured where).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import machine
from benchmarks.loadgen import LoadResult, LoadSpec, run_load
from benchmarks.models import find_model, single_model_dir
from benchmarks.report import Table, fmt_rate, write_result
from benchmarks.server import running_server
from ntm_serve.client.sdk import NTMClient
from ntm_serve.cluster.launcher import LocalCluster
from ntm_serve.server.state.store import SessionStore

log = logging.getLogger(__name__)


def _grid(quick: bool) -> tuple[list[int], list[int], LoadSpec]:
    if quick:
        return [4], [1, 20], LoadSpec(0, 0, warmup_s=0.2, window_s=0.5, max_messages_per_session=50)
    return [8, 64], [1, 20], LoadSpec(0, 0, warmup_s=2.0, window_s=8.0, max_messages_per_session=100_000)


def _load(target: str, input_size: int, sessions: int, steps: int, base: LoadSpec) -> LoadResult:
    spec = LoadSpec(sessions, steps, base.warmup_s, base.window_s, base.max_messages_per_session)
    return run_load(target, "copy", input_size, spec)


def holders(store_url: str, ids: list[str]) -> dict[str, str]:
    store = SessionStore(store_url)
    try:
        return {sid: (store.sync.hget(store.key(sid), "holder") or b"").decode() for sid in ids}
    finally:
        store.close()


def sessions_moved(cluster: LocalCluster, count: int) -> dict[str, Any]:
    """Step `count` sessions through the proxy; note which replica holds each; drain replica 0 (leave), step
    them all again; start it again (join), step again. Returns how many moved at each change."""
    with NTMClient(cluster.proxy, timeout=60) as client:
        ids = [client.create_session("copy").session_id for _ in range(count)]
        steps = dict.fromkeys(ids, 0)
        x = np.zeros((1, 9), np.float32)

        def step_all() -> dict[str, str]:
            for sid in ids:
                steps[sid] = client.step(sid, x, expect_steps=steps[sid]).steps
            return holders(cluster.store_url, ids)

        before = step_all()
        cluster.drain_replica(0)
        time.sleep(1.5)  # the proxy's health check has taken it out of the ring
        left = step_all()
        cluster.restart_replica(0)
        time.sleep(1.5)  # and back in
        joined = step_all()
    n = len(cluster.nodes)
    on_leaver = sum(1 for sid in ids if before[sid] == "replica-0")
    return {"sessions": count, "replicas": n, "expected_fraction": 1 / n,
            "held_by_leaver": on_leaver,
            "moved_on_leave": sum(1 for sid in ids if left[sid] != before[sid]),
            "moved_on_join": sum(1 for sid in ids if joined[sid] != left[sid]),
            "back_where_they_were": sum(1 for sid in ids if joined[sid] == before[sid])}


def run(models_dir: Path, out_dir: Path, quick: bool, replicas: int = 3, lb_policy: str = "MAGLEV"
        ) -> dict[str, Any]:
    model = find_model(models_dir)
    serve_dir = single_model_dir(model)
    input_size = int(model.config["input_size"])
    session_counts, steps_per_message, base = _grid(quick)
    rows: list[tuple[str, LoadResult]] = []

    def grid(label: str, target: str) -> None:
        for sessions in session_counts:
            for steps in steps_per_message:
                result = _load(target, input_size, sessions, steps, base)
                rows.append((label, result))
                log.info("%s %d x %d: %.0f steps/s", label, sessions, steps, result.steps_per_s)

    load_before = machine.load_average()
    with running_server(serve_dir, ["--provider", "cpu"]) as server:
        grid("single (no store)", server.target)
    with LocalCluster(serve_dir, 1, "cpu") as one:
        grid("replica + store, no proxy", f"127.0.0.1:{one.nodes[0].port}")
        grid("cluster: Envoy + store, 1 replica", one.proxy)
    with LocalCluster(serve_dir, replicas, "cpu", lb_policy=lb_policy) as many:
        grid(f"cluster: Envoy + store, {replicas} replicas", many.proxy)
        moved = sessions_moved(many, 30 if quick else 300)

    main = Table("Cluster vs single server (loopback, one machine, closed loop per session)",
                 ["path", "sessions", "steps/msg", "session-steps/s", "p50 ms", "p99 ms", "errors"])
    for label, r in rows:
        main.add(label, r.sessions, r.steps_per_message, fmt_rate(r.steps_per_s), f"{r.percentile(50) * 1e3:.2f}",
                 f"{r.percentile(99) * 1e3:.2f}", r.errors)
    main.notes.append("commit cost per request = p50 of 'replica + store, no proxy' minus 'single' at the same load")
    if quick:
        main.notes.append("QUICK MODE: tiny counts on whatever machine ran it; these numbers mean nothing")
    moves = Table(f"Sessions moved by consistent hashing ({moved['replicas']} replicas, {moved['sessions']} "
                  "sessions)", ["event", "sessions moved", "fraction", "expected"])
    share = moved["sessions"]
    moves.add("replica-0 leaves (SIGTERM)", moved["moved_on_leave"], f"{moved['moved_on_leave'] / share:.2f}",
              f"{moved['held_by_leaver']} (those it held)")
    moves.add("replica-0 joins again", moved["moved_on_join"], f"{moved['moved_on_join'] / share:.2f}",
              f"≈ 1/{moved['replicas']} = {1 / moved['replicas']:.2f}")
    moves.notes.append(f"{moved['back_where_they_were']} of {moved['sessions']} sessions ended on the replica they "
                       "started on")
    payload = {"benchmark": "cluster", "mode": "quick" if quick else "full", "machine": machine.describe(),
               "lb_policy": lb_policy,
               "load_before": load_before, "load_after": machine.load_average(),
               "results": [{"path": label, **r.to_json()} for label, r in rows], "moves": moved}
    write_result(out_dir, "cluster", payload, [main, moves])
    print(main.markdown())
    print(moves.markdown())
    return payload


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cluster_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny counts: checks the script, not the figures")
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--lb-policy", choices=("RING_HASH", "MAGLEV"), default="MAGLEV")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default benchmarks/results; with --quick a temporary folder)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = args.out or (Path(tempfile.gettempdir()) / "ntm-bench-quick" if args.quick else Path("benchmarks/results"))
    run(args.models_dir, out, args.quick, args.replicas, args.lb_policy)
    return 0


if __name__ == "__main__":
    sys.exit(main())
