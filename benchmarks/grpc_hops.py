"""What gRPC's thread model costs per message: the server and the echo floor under each GRPC_EXPERIMENTS setting.

`python -m benchmarks.grpc_hops [--cells 8x1,64x1] [--experiments ',-event_engine_listener']` starts the real
server and the echo server (benchmarks/echo_server.py: the contract without a model) once per GRPC_EXPERIMENTS
value, pinned to the second core with the load generator on the first (as benchmarks/overhead.py), and measures
packed messages (one StreamPackedSteps message per tick carries every session) in rounds that take the settings in
turn. Per message it reports the server's CPU and its **context switches** (every thread, /proc): how often a
message is handed from one thread to another, which on one core is paid in the kernel. The value "" is gRPC's own
default; "-event_engine_listener" is what `python -m ntm_serve.server` sets when the caller sets nothing
(ntm_serve/server/__main__.py;
docs/performance.md, section 3).
"""

from __future__ import annotations

import argparse
import contextlib

from benchmarks import machine
from benchmarks.loadgen import LoadSpec
from benchmarks.report import Table, fmt_rate, median_of_rounds, write_result
from benchmarks.server import (
    REPO,
    ServerProcess,
    add_model_options,
    measure_cell,
    pin_here,
    prepare,
    server_module,
    split_cores,
    start_server,
)

SERVERS = {"server": server_module(REPO), "echo floor": "benchmarks.echo_server"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.grpc_hops", description=__doc__.splitlines()[0])
    parser.add_argument("--cells", default="8x1,64x1", help="SESSIONSxSTEPS,...")
    parser.add_argument("--experiments", default=",-event_engine_listener",
                        help="GRPC_EXPERIMENTS values to compare, comma-separated ('' is gRPC's default)")
    parser.add_argument("--window", type=float, default=3.0, help="measured seconds per cell, round and server")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny counts: checks the script, not the figures")
    add_model_options(parser)
    args = parser.parse_args(argv)
    model, models_dir, cells = prepare(args)
    window, rounds = (0.5, 1) if args.quick else (args.window, args.rounds)
    values = args.experiments.split(",")
    split = split_cores()
    client_cores, server_cores = split if split else (None, None)
    load_before = machine.load_average()
    pin_here(client_cores)
    results: dict[tuple[str, str, str], list[dict[str, float]]] = {}
    with contextlib.ExitStack() as stack:
        servers: dict[tuple[str, str], ServerProcess] = {}
        for value in values:
            for name, module in SERVERS.items():
                servers[value, name] = start_server(models_dir, ("--max-batch", "256"), cores=server_cores,
                                                    module=module, env={"GRPC_EXPERIMENTS": value})
                stack.callback(servers[value, name].stop)
        for sessions, steps in cells:
            spec = LoadSpec(sessions, steps, 0.5, window, 100_000, packed=True)
            for _ in range(rounds):
                for (value, name), server in servers.items():
                    got = measure_cell(server, model.path.name, model.config["input_size"], spec)
                    results.setdefault((f"{sessions}x{steps}", value, name), []).append(got)
    table = Table("gRPC's thread hops: CPU and context switches per packed message (pinned, median of rounds)",
                  ["sessions × steps/msg", "GRPC_EXPERIMENTS", "server", "messages/s", "p50 ms", "p99 ms",
                   "server CPU µs / message", "context switches / message"])
    for sessions, steps in cells:
        for value, name in servers:
            med = median_of_rounds(results[f"{sessions}x{steps}", value, name])
            per_message = sessions * steps  # session-steps in one packed message
            table.add(f"{sessions} × {steps}", f"`{value}`" if value else "(gRPC's default)", name,
                      fmt_rate(med["steps_per_s"] / per_message), f"{med['p50_ms']:.2f}", f"{med['p99_ms']:.2f}",
                      f"{med['server_cpu_us_per_step'] * per_message:.0f}", f"{med['switches_per_message']:.1f}")
    where = (f"load generator on core {sorted(client_cores)}, servers on cores {sorted(server_cores)}" if split
             else "not pinned (one core)")
    table.notes = [f"{where}; every server started with its GRPC_EXPERIMENTS, all running at once, measured in turn; "
                   f"{rounds} round(s) of {window:g} s per cell and server; one StreamPackedSteps stream, one "
                   "message in flight", machine.load_note(load_before, machine.load_average())]
    print(table.markdown())
    write_result(args.out, "grpc_hops", {"benchmark": "grpc_hops", "machine": machine.describe(), "pinned": where,
                                         "model": model.describe(), "experiments": values,
                                         "results": {"|".join(k): v for k, v in results.items()}}, [table])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
