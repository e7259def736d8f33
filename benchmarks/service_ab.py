"""Service A/B: the server of another source tree (a baseline) against this tree's, side by side in one run.

`python -m benchmarks.service_ab --baseline DIR` with DIR a checkout of the baseline (e.g. `git worktree add
/tmp/base <commit>`). Both servers run at once on loopback ports; every load cell (sessions x steps per
message) is measured on each in turn, for a few rounds, so background load falls on both alike. A figure
is the median over rounds. Server CPU per session-step (from /proc) is the steadier figure on a busy machine.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import statistics
from pathlib import Path

from benchmarks import machine
from benchmarks.loadgen import LoadSpec
from benchmarks.report import Table, fmt_rate, write_result
from benchmarks.server import REPO, add_model_options, measure_cell, pin_here, prepare, split_cores, start_server

log = logging.getLogger(__name__)

MAX_BATCH = 256  # as in benchmarks/service_bench.py


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.service_ab", description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True, help="source tree of the baseline server")
    parser.add_argument("--cells", default="64x20,64x1,8x1,1x20,256x20", help="SESSIONSxSTEPS, comma separated")
    parser.add_argument("--window", type=float, default=3.0, help="measured seconds per cell and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--pin", action="store_true",
                        help="load generator on the first core, both servers on the others (benchmarks.overhead)")
    add_model_options(parser)
    args = parser.parse_args(argv)
    model, models_dir, cells = prepare(args)
    trees = {"baseline": args.baseline.resolve(), "this tree": REPO}
    extra = ("--max-batch", str(MAX_BATCH))
    split = split_cores() if args.pin else None
    client_cores, server_cores = split if split else (None, None)
    pin_here(client_cores)
    load_before = machine.load_average()
    results: dict[str, dict[str, list[dict[str, float]]]] = {name: {} for name in trees}
    with contextlib.ExitStack() as stack:
        servers = {}
        for name, tree in trees.items():
            servers[name] = start_server(models_dir, extra, tree=tree, cores=server_cores)
            stack.callback(servers[name].stop)
        for sessions, steps in cells:
            spec = LoadSpec(sessions, steps, 0.5, args.window, 100_000)
            for _ in range(args.rounds):
                for name, server in servers.items():
                    got = measure_cell(server, model.path.name, model.config["input_size"], spec)
                    results[name].setdefault(f"{sessions}x{steps}", []).append(got)
    note = machine.load_note(load_before, machine.load_average())
    table = Table("Service A/B: baseline tree against this tree (side by side, median of rounds)",
                  ["sessions", "steps/msg", "server", "session-steps/s", "p50 ms", "p99 ms", "mean batch",
                   "server CPU µs per session-step", "errors"])
    for sessions, steps in cells:
        for name in trees:
            rounds = results[name][f"{sessions}x{steps}"]
            med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
            table.add(sessions, steps, name, fmt_rate(med["steps_per_s"]), f"{med['p50_ms']:.2f}",
                      f"{med['p99_ms']:.2f}", f"{med['mean_batch']:.1f}", f"{med['server_cpu_us_per_step']:.1f}",
                      int(sum(r["errors"] for r in rounds)))
    table.notes = [f"baseline: {trees['baseline']}; this tree: {REPO}; both `python -m ntm_serve.server --max-batch "
                   f"{MAX_BATCH}`, running at once; {args.rounds} rounds of {args.window:g} s per cell and server; "
                   + (f"pinned: load generator on {sorted(client_cores)}, servers on {sorted(server_cores)}"
                      if split else "not pinned"),
                   note]
    print(table.markdown())
    write_result(args.out, "service_ab", {"benchmark": "service_ab", "machine": machine.describe(),
                                          "load_before": load_before, "model": model.describe(),
                                          "trees": {k: str(v) for k, v in trees.items()}, "results": results},
                 [table])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
