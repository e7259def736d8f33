"""What a step costs after the core has been idle: the bare engine's step with a gap before each call.

`python -m benchmarks.idle_gap [--batch 8] [--gap-ms 0.5]`. A closed-loop server steps once per message and
then waits for the client's next one, so its core idles between steps; the bare engine's figure
(benchmarks/overhead.py, benchmarks/engine.py) comes from steps back to back. Here the same step graph, through
IOBinding, one thread, pinned to one core, runs with a gap before each call: none (back to back), a sleep (the core
idles, as a server's does between messages), a busy wait of the same length (the core stays awake running
Python), and touching 1 MiB of memory (the data caches pollute, the core does not idle). Each row times the
step alone (wall and thread CPU), in rounds that take the gaps in turn. Why: it separates the cost of idling
(frequency, C-states, a virtual CPU given up to the host) from cache pollution by other work, in the "step in the
server costs more than the bare engine's" of docs/performance.md.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np

from benchmarks import machine
from benchmarks.models import find_model
from benchmarks.ort_engine import BoundStep, copy_task_inputs, initial_state, make_session
from benchmarks.report import Table, write_result
from benchmarks.server import add_model_options, pin_here
from ntm_serve.runtime.ort_session import SERVER

POLLUTE_FLOATS = 256 * 1024  # 1 MiB


def gaps(seconds: float) -> dict[str, Callable[[], None]]:
    """The gaps compared, by name: what runs before each timed step."""
    junk = np.ones(POLLUTE_FLOATS, dtype=np.float32)

    def spin() -> None:
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            pass

    def touch() -> None:
        junk.__iadd__(1.0)  # read and write every byte: the data caches hold junk, the core never idles

    return {"none (back to back)": lambda: None, f"sleep {seconds * 1e3:g} ms (idle)": lambda: time.sleep(seconds),
            f"busy wait {seconds * 1e3:g} ms": spin, "touch 1 MiB": touch}


def time_steps(step: Callable[[], None], gap: Callable[[], None], calls: int) -> dict[str, float]:
    """Median and mean wall µs of `step`, and its mean thread-CPU µs, with `gap` before each call."""
    wall, cpu = np.empty(calls), np.empty(calls)
    for i in range(calls):
        gap()
        c, w = time.thread_time(), time.perf_counter()
        step()
        wall[i], cpu[i] = time.perf_counter() - w, time.thread_time() - c
    return {"wall_median_us": float(np.median(wall) * 1e6), "wall_mean_us": float(wall.mean() * 1e6),
            "cpu_mean_us": float(cpu.mean() * 1e6)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.idle_gap", description=__doc__.splitlines()[0])
    add_model_options(parser)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--gap-ms", type=float, default=0.5)
    parser.add_argument("--calls", type=int, default=1500, help="timed steps per gap and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="tiny counts: checks the script, not the figures")
    args = parser.parse_args(argv)
    model = find_model(args.models_dir, args.model)
    calls, rounds = (20, 1) if args.quick else (args.calls, args.rounds)
    core = max(os.sched_getaffinity(0))  # the core benchmarks.overhead gives the server
    pin_here({core})
    load_before = machine.load_average()
    sess = make_session(model.graph("step"), SERVER)
    inputs = copy_task_inputs(np.random.default_rng(args.batch), 64, args.batch, model.config["input_size"])
    step = BoundStep(sess, initial_state(model.path, args.batch), inputs)
    for _ in range(10 if args.quick else 300):  # warm-up
        step()
    kinds = gaps(args.gap_ms / 1e3)
    results: dict[str, list[dict[str, float]]] = {name: [] for name in kinds}
    for _ in range(rounds):
        for name, gap in kinds.items():
            results[name].append(time_steps(step, gap, calls))
    table = Table(f"The step after a gap (batch {args.batch}, one thread, core {core})",
                  ["gap before each step", "wall µs, median", "wall µs, mean", "thread CPU µs, mean",
                   "CPU against back to back"])
    base = float(np.median([r["cpu_mean_us"] for r in results[next(iter(kinds))]]))
    for name, rows in results.items():
        med = {k: float(np.median([r[k] for r in rows])) for k in rows[0]}
        table.add(name, f"{med['wall_median_us']:.0f}", f"{med['wall_mean_us']:.0f}", f"{med['cpu_mean_us']:.0f}",
                  f"{med['cpu_mean_us'] / base:.2f}×")
    table.notes = [f"{model.path.name}: the step graph through IOBinding, the server's session options; {rounds} "
                   f"round(s) of {calls} timed steps per gap, median of the rounds",
                   machine.load_note(load_before, machine.load_average())]
    print(table.markdown())
    write_result(args.out, "idle_gap", {"benchmark": "idle_gap", "machine": machine.describe(), "core": core,
                                        "model": model.describe(), "batch": args.batch, "gap_ms": args.gap_ms,
                                        "results": results}, [table])
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
