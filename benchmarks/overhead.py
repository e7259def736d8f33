"""What the server costs on top of the step it runs: the served model against the bare engine, pinned, in one run.

`python -m benchmarks.overhead [--baseline DIR] [--quick]`. The load generator runs on the first core and the
server on the others (`sched_setaffinity`, inherited by every thread each process starts), so neither takes
the other's CPU: with 2 cores the whole server (gRPC, event loop, batcher, onnxruntime) has one core. For
each load cell (sessions x steps per message, one stream per session, closed loop) it reports the server's
CPU per session-step (from /proc) next to the bare engine's: the step graph through IOBinding (the server's
own session options, one thread) at batch = sessions, timed on the server's core in the same run. With
`--baseline`, a server from another source tree (e.g. the tree before a change) runs the same cells in turn.
The targets are issue 12's items 1 and 2.

Packed rows (`--modes per-session,packed`, the default: both, side by side in one run): the same cells with one
StreamPackedSteps message per tick carrying every session's steps (one client hosting all the sessions;
`--packed-clients K` splits them among K clients, each with its own stream), against this tree's server, the echo
floor and the in-process batcher fed packs. With `--baseline-packed`, the baseline tree runs the PACKED rows too
(its server, and its batcher in a child process importing that tree): before/after of the packed path in one run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import machine
from benchmarks.loadgen import LoadSpec
from benchmarks.models import ModelFolder
from benchmarks.ort_engine import BoundStep, copy_task_inputs, initial_state, make_session
from benchmarks.report import Table, fmt_rate, median_of_rounds, write_result
from benchmarks.server import (
    REPO,
    add_model_options,
    measure_cell,
    pin_here,
    prepare,
    server_module,
    split_cores,
    start_server,
)
from benchmarks.timing import FULL, QUICK, Contender, measure
from ntm_serve.runtime.engine import Engine
from ntm_serve.runtime.ort_session import SERVER
from ntm_serve.server.batcher import Batcher
from ntm_serve.server.jobs import PackJob, StepJob
from ntm_serve.server.metrics import Metrics
from ntm_serve.server.sessions import SessionRecord

log = logging.getLogger(__name__)

MAX_BATCH = 256  # as in benchmarks/service_bench.py
CELLS = ((64, 20), (64, 1), (8, 1), (8, 20))
CPU_RATIO = {20: 1.5, 1: 2.0}  # item 1: server CPU per session-step over the bare engine's, by steps/message
SHARE = 0.70  # item 2: served session-steps/s over the bare engine's
P99_MS = 1.0  # item 2: p99 of a 1-step message at 8 sessions
BATCHER_ALONE = "batcher + engine, no gRPC"  # the server's batcher in this process, requests resubmitted at once
FLOOR = "gRPC floor (echo, no model)"  # benchmarks/echo_server.py: what gRPC and the event loop cost alone
FLOOR_ITERATOR = "gRPC floor, request iterator + generator"  # the same, as StreamSteps was written before
PACKED = "PACKED: this tree"  # one StreamPackedSteps message per tick carries every session's steps
FLOOR_PACKED = "PACKED: gRPC floor (echo, no model)"
BATCHER_ALONE_PACKED = "PACKED: batcher + engine, no gRPC"  # one PackJob of every session, resubmitted at once
PACKED_BASELINE = "PACKED: baseline"  # --baseline-packed: the baseline tree's server, packed messages
BATCHER_ALONE_PACKED_BASELINE = "PACKED: baseline batcher + engine, no gRPC"  # the baseline tree's batcher
MODES = ("per-session", "packed")


def bare_engine(model: ModelFolder, batches: set[int], quick: bool) -> dict[int, dict[str, float]]:
    """Per batch size: the bare step graph's session-steps/s (wall) and CPU µs per session-step."""
    sess = make_session(model.graph("step"), SERVER)
    contenders = []
    for batch in sorted(batches):
        steps = copy_task_inputs(np.random.default_rng(batch), 64, batch, model.config["input_size"])
        contenders.append(Contender(str(batch), BoundStep(sess, initial_state(model.path, batch), steps), batch))
    timed = measure(contenders, QUICK if quick else FULL)
    return {int(name): {"steps_per_s": t.steps_per_s, "cpu_us_per_step": t.cpu_s / t.steps * 1e6}
            for name, t in timed.items()}


def batcher_alone(model: ModelFolder, sessions: int, steps: int, seconds: float,
                  packed: bool = False) -> dict[str, float]:
    """The server's batcher and engine in this process, without gRPC: `sessions` sessions, each resubmitting a
    `steps`-step request as soon as its last one is answered (on the batcher thread); `packed`: one PackJob of
    every session, resubmitted the same way. CPU µs per session-step of this process, and session-steps/s."""
    engine = Engine(model.path, "cpu")
    batcher = Batcher(engine, Metrics(), max_batch=MAX_BATCH)
    batcher.start()
    rng = np.random.default_rng(sessions * 100 + steps)
    inputs = copy_task_inputs(rng, steps, sessions, model.config["input_size"])  # (T, B, I)
    counted = [0]
    stop = threading.Event()

    def resubmit(session: SessionRecord, b: int) -> Callable[[object], None]:
        def done(result: object) -> None:
            counted[0] += steps
            if not stop.is_set():
                batcher.submit(StepJob(session, inputs[:, b], False, done))
        return done

    def pack(result: object) -> None:
        counted[0] += steps * sessions
        if not stop.is_set():
            batcher.submit(PackJob(tuple(records), ticks, False, pack, (None,) * sessions))

    records = []
    for b in range(sessions):
        record = SessionRecord(f"s{b}", model.path.name, "bench", 600.0, time.time(), time.monotonic())
        record.slot = engine.new_row()
        records.append(record)
    ticks = np.ascontiguousarray(inputs.transpose(1, 0, 2))  # (E, T, I)
    if packed:
        batcher.submit(PackJob(tuple(records), ticks, False, pack, (None,) * sessions))
    for b, record in enumerate(records if not packed else []):
        batcher.submit(StepJob(record, np.ascontiguousarray(inputs[:, b]), False, resubmit(record, b)))
    time.sleep(min(0.5, seconds / 4))  # warm-up
    wall, cpu, done_before = time.perf_counter(), time.process_time(), counted[0]
    time.sleep(seconds)
    wall, cpu, done_steps = time.perf_counter() - wall, time.process_time() - cpu, counted[0] - done_before
    stop.set()
    batcher.stop(timeout=10)
    return {"steps_per_s": done_steps / wall, "cpu_us_per_step": cpu / max(done_steps, 1) * 1e6}


def batcher_alone_in(tree: Path, model: ModelFolder, sessions: int, steps: int, seconds: float) -> dict[str, float]:
    """`batcher_alone(packed=True)` with the `service` package of source tree `tree` (a child process whose
    import path puts `tree` first: this tree's benchmarks, that tree's batcher and engine)."""
    code = ("import json, sys; from pathlib import Path; from benchmarks.models import find_model; "
            "from benchmarks.overhead import batcher_alone; "
            f"m = find_model(explicit=Path({str(model.path.resolve())!r})); "
            f"print(json.dumps(batcher_alone(m, {sessions}, {steps}, {seconds}, packed=True)))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree.resolve()), str(REPO)])}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tree, capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out.splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, default=None, help="source tree of a server to compare with")
    parser.add_argument("--cells", default=",".join(f"{s}x{t}" for s, t in CELLS), help="SESSIONSxSTEPS,...")
    parser.add_argument("--window", type=float, default=4.0, help="measured seconds per cell and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="tiny counts: checks the script, not the figures")
    parser.add_argument("--no-pin", action="store_true", help="let the OS place server and load generator")
    parser.add_argument("--no-floor", action="store_true", help="skip the echo server (gRPC alone, no model)")
    parser.add_argument("--modes", default=",".join(MODES),
                        help="per-session (one stream per session), packed (one StreamPackedSteps message per tick "
                             "carries every session), or both (default), side by side")
    parser.add_argument("--packed-clients", type=int, default=1,
                        help="packed mode: clients (streams) the sessions are split among (default 1)")
    parser.add_argument("--baseline-packed", action="store_true",
                        help="the baseline tree runs the PACKED rows too (server and in-process batcher)")
    parser.add_argument("--server-arg", action="append", default=[], help="extra argument for both servers")
    add_model_options(parser)
    args = parser.parse_args(argv)
    model, models_dir, cells = prepare(args)
    if not set(args.modes.split(",")) <= set(MODES):
        parser.error(f"--modes takes {', '.join(MODES)}, got {args.modes}")
    split = None if args.no_pin else split_cores()
    original = os.sched_getaffinity(0)
    try:
        return _run(args, model, models_dir, cells, split)
    finally:
        pin_here(original)  # a caller in this process (a test) gets its cores back


def _rows(args: argparse.Namespace) -> tuple[dict[str, tuple[Path, str]], list[tuple[str, str, bool]]]:
    """The servers to start (name -> (source tree, module)) and the rows to measure: (row, server, packed)."""
    modes = set(args.modes.split(","))
    floor = not args.no_floor
    trees: dict[str, tuple[Path, str]] = {"this tree": (REPO, server_module(REPO))}
    if floor:
        trees[FLOOR] = (REPO, "benchmarks.echo_server")
    rows: list[tuple[str, str, bool]] = []
    if "per-session" in modes:
        rows.append(("this tree", "this tree", False))
        if args.baseline:
            trees["baseline"] = (args.baseline.resolve(), server_module(args.baseline.resolve()))
            rows.append(("baseline", "baseline", False))
        if floor:
            trees[FLOOR_ITERATOR] = (REPO, "benchmarks.echo_server --echo-iterator")
            rows += [(FLOOR, FLOOR, False), (FLOOR_ITERATOR, FLOOR_ITERATOR, False)]
    if "packed" in modes:
        rows += [(PACKED, "this tree", True)] + ([(FLOOR_PACKED, FLOOR, True)] if floor else [])
        if args.baseline and args.baseline_packed:
            trees["baseline"] = (args.baseline.resolve(), server_module(args.baseline.resolve()))
            rows.append((PACKED_BASELINE, "baseline", True))
    return trees, rows


def _run(args: argparse.Namespace, model: ModelFolder, models_dir: Path, cells: list[tuple[int, ...]],
         split: tuple[set[int], set[int]] | None) -> int:
    window, rounds = (0.5, 1) if args.quick else (args.window, args.rounds)
    client_cores, server_cores = split if split else (None, None)
    trees, rows = _rows(args)
    packed = any(p for _, _, p in rows)
    load_before = machine.load_average()
    pin_here(server_cores)  # the bare engine runs where the server will
    bare = bare_engine(model, {min(s, MAX_BATCH) for s, _ in cells}, args.quick)
    alone = {BATCHER_ALONE: {f"{s}x{t}": batcher_alone(model, s, t, window) for s, t in cells}}
    if packed:
        alone[BATCHER_ALONE_PACKED] = {f"{s}x{t}": batcher_alone(model, s, t, window, packed=True) for s, t in cells}
        if args.baseline and args.baseline_packed:
            alone[BATCHER_ALONE_PACKED_BASELINE] = {f"{s}x{t}": batcher_alone_in(args.baseline, model, s, t, window)
                                                    for s, t in cells}
    pin_here(client_cores)
    extra = ("--max-batch", str(MAX_BATCH), *args.server_arg)
    results: dict[str, dict[str, list[dict[str, float]]]] = {row: {} for row, _, _ in rows}
    with contextlib.ExitStack() as stack:
        servers = {}
        for name, (tree, module) in trees.items():
            servers[name] = start_server(models_dir, extra, tree=tree, cores=server_cores, module=module)
            stack.callback(servers[name].stop)
        for sessions, steps in cells:
            for _ in range(rounds):
                for row, server, is_packed in rows:
                    spec = LoadSpec(sessions, steps, 0.5, window, 100_000, is_packed, args.packed_clients)
                    got = measure_cell(servers[server], model.path.name, model.config["input_size"], spec)
                    results[row].setdefault(f"{sessions}x{steps}", []).append(got)
    note = machine.load_note(load_before, machine.load_average())
    where = (f"load generator on core {sorted(client_cores)}, server on cores {sorted(server_cores)} "
             "(sched_setaffinity before start, so every thread inherits it)" if split else "not pinned")
    table, found = _tables(cells, [row for row, _, _ in rows], results, bare, alone)
    table.notes = [f"{where}; `python -m ntm_serve.server --max-batch {MAX_BATCH}` (1 intra-op thread); "
                   f"{rounds} round(s) of "
                   f"{window:g} s per cell and server, median; bare engine: the step graph through IOBinding at "
                   "batch = sessions, one thread, timed on the server's core in the same run"]
    if packed:
        table.notes.append(f"PACKED rows: one StreamPackedSteps message per tick carries the steps of every session "
                           f"of its client ({args.packed_clients} client(s), one stream each, one message in flight); "
                           "p50/p99 are per packed message (one tick of all its sessions)")
    table.notes.append(note)
    print(table.markdown())
    payload = {"benchmark": "overhead", "machine": machine.describe(), "pinned": where, "load_before": load_before,
               "model": model.describe(), "bare_engine": bare, "batcher_alone": alone[BATCHER_ALONE],
               "batcher_alone_packed": alone.get(BATCHER_ALONE_PACKED, {}),
               "batcher_alone_packed_baseline": alone.get(BATCHER_ALONE_PACKED_BASELINE, {}), "results": results,
               "packed_clients": args.packed_clients,
               "trees": {k: f"{v[0]} ({v[1]})" for k, v in trees.items()}, "targets": found}
    write_result(args.out, "overhead", payload, [table])
    return 0


def _tables(cells: list[tuple[int, ...]], rows: list[str], results: dict[str, Any],
            bare: dict[int, dict[str, float]], alone: dict[str, dict[str, dict[str, float]]]
            ) -> tuple[Table, list[dict[str, Any]]]:
    table = Table("Server against the bare engine (CPU per session-step, throughput; pinned)",
                  ["sessions × steps/msg", "server", "session-steps/s", "share of bare engine", "p50 ms", "p99 ms",
                   "mean batch", "server CPU µs / session-step", "bare engine CPU µs / session-step",
                   "CPU ratio", "errors"])
    found = []
    for sessions, steps in cells:
        engine = bare[min(sessions, MAX_BATCH)]
        for name, cells_alone in alone.items():
            inproc = cells_alone[f"{sessions}x{steps}"]
            table.add(f"{sessions} × {steps}", name, fmt_rate(inproc["steps_per_s"]),
                      f"{inproc['steps_per_s'] / engine['steps_per_s']:.0%}", "—", "—", "—",
                      f"{inproc['cpu_us_per_step']:.1f}", f"{engine['cpu_us_per_step']:.1f}",
                      f"{inproc['cpu_us_per_step'] / engine['cpu_us_per_step']:.2f}×", 0)
        for name in rows:
            med = median_of_rounds(results[name][f"{sessions}x{steps}"])
            share = med["steps_per_s"] / engine["steps_per_s"]
            ratio = med["server_cpu_us_per_step"] / engine["cpu_us_per_step"]
            table.add(f"{sessions} × {steps}", name, fmt_rate(med["steps_per_s"]), f"{share:.0%}",
                      f"{med['p50_ms']:.2f}", f"{med['p99_ms']:.2f}", f"{med['mean_batch']:.1f}",
                      f"{med['server_cpu_us_per_step']:.1f}", f"{engine['cpu_us_per_step']:.1f}", f"{ratio:.2f}×",
                      int(med["errors"]))
            if name in (FLOOR, FLOOR_ITERATOR, FLOOR_PACKED):
                continue
            found.append({"cell": f"{sessions}x{steps}", "server": name, "packed": name in (PACKED, PACKED_BASELINE),
                          "share": share,
                          "cpu_ratio": ratio, "cpu_ratio_met": ratio <= CPU_RATIO.get(steps, CPU_RATIO[1]),
                          "share_met": share >= SHARE, "p99_ms": med["p99_ms"],
                          "p99_met": med["p99_ms"] <= P99_MS if (sessions, steps) == (8, 1) else None})
    return table, found


if __name__ == "__main__":
    raise SystemExit(main())
