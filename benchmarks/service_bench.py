"""Service benchmark: the real server under a loopback load, continuous batching on and off, in one run.

For 1, 8, 64 and 256 concurrent sessions streaming copy-task steps (1 and 20 steps per message):
aggregate session-steps per second, p50/p99 latency per message, mean onnxruntime batch size (from
the server's Prometheus histogram), and the CPU the server and the load generator used (from
/proc). Raw onnxruntime at the same batch sizes is measured in the same run, for the ratio.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import machine
from benchmarks.loadgen import LoadResult, LoadSpec, run_load
from benchmarks.models import ModelFolder, single_model_dir
from benchmarks.ort_engine import BoundStep, copy_task_inputs, initial_state, make_session
from benchmarks.procstat import cpu_seconds
from benchmarks.report import Table, fmt_rate, write_result
from benchmarks.server import ServerProcess, metric_sum, running_server, scrape
from benchmarks.timing import FULL, QUICK, Contender, TimingPlan, measure
from ntm_serve.runtime.ort_session import SERVER

log = logging.getLogger(__name__)

MAX_BATCH = 256  # the server's --max-batch here, so 256 sessions can share one call


@dataclass(frozen=True)
class ServiceConfig:
    sessions: tuple[int, ...]
    steps_per_message: tuple[int, ...]
    warmup_s: float
    window_s: float
    max_messages: int
    plan: TimingPlan


def service_config(quick: bool) -> ServiceConfig:
    if quick:
        return ServiceConfig((1, 8), (1, 20), 0.2, 0.6, 500, QUICK)
    return ServiceConfig((1, 8, 64, 256), (1, 20), 1.0, 5.0, 100_000, FULL)


def _window_hooks(server: ServerProcess) -> tuple[Any, Any]:
    """Snapshots at the window's start and the differences at its end: CPU of server and client, metrics."""

    def start() -> dict[str, Any]:
        return {"wall": time.perf_counter(), "server_cpu": cpu_seconds(server.pid), "client_cpu": time.process_time(),
                "metrics": scrape(server.metrics_port)}

    def end(s: dict[str, Any]) -> dict[str, Any]:
        wall = time.perf_counter() - s["wall"]
        metrics = scrape(server.metrics_port)
        batches = metric_sum(metrics, "ntm_batch_size_count") - metric_sum(s["metrics"], "ntm_batch_size_count")
        batched = metric_sum(metrics, "ntm_batch_size_sum") - metric_sum(s["metrics"], "ntm_batch_size_sum")
        steps = metric_sum(metrics, "ntm_steps_total") - metric_sum(s["metrics"], "ntm_steps_total")
        engine_s = (metric_sum(metrics, "ntm_engine_call_seconds_sum")
                    - metric_sum(s["metrics"], "ntm_engine_call_seconds_sum"))
        return {
            "engine_busy": engine_s / wall,  # share of the window the model's thread spent in onnxruntime calls
            "engine_call_us": engine_s / batches * 1e6 if batches else None,
            "server_cores": (cpu_seconds(server.pid) - s["server_cpu"]) / wall,
            "client_cores": (time.process_time() - s["client_cpu"]) / wall,
            "mean_batch": batched / batches if batches else None,
            "engine_calls": batches,
            "server_steps_per_s": steps / wall,
        }

    return start, end


def run_grid(model: ModelFolder, models_dir: Path, cfg: ServiceConfig, batching: bool,
             server_args: tuple[str, ...] = ()) -> list[LoadResult]:
    extra = ["--batching", "true" if batching else "false", "--max-batch", str(MAX_BATCH), *server_args]
    results = []
    with running_server(models_dir, extra) as server:
        start, end = _window_hooks(server)
        for sessions in cfg.sessions:
            for steps in cfg.steps_per_message:
                spec = LoadSpec(sessions, steps, cfg.warmup_s, cfg.window_s, cfg.max_messages)
                log.info("service: batching %s, %d sessions, %d steps/message", batching, sessions, steps)
                result = run_load(server.target, model.path.name, model.config["input_size"], spec, start, end)
                result.window_hooks["batching"] = batching
                results.append(result)
    return results


def raw_engine(model: ModelFolder, batches: tuple[int, ...], plan: TimingPlan, device: str = "cpu") -> dict[int, float]:
    """Session-steps/s of the bare step graph (IOBinding, the service's session options) per batch size."""
    out = {}
    sess = make_session(model.graph("step"), SERVER, device)
    for batch in batches:
        steps = copy_task_inputs(np.random.default_rng(batch), 64, batch, model.config["input_size"])
        runner = BoundStep(sess, initial_state(model.path, batch), steps, device)
        out[batch] = measure([Contender("raw", runner, batch)], plan)["raw"].steps_per_s
    return out


def _ms(seconds: float) -> str:
    return "—" if np.isnan(seconds) else f"{seconds * 1e3:.2f}"


def tables(results: list[LoadResult], raw: dict[int, float], note: str, title: str = "Service"
           ) -> tuple[list[Table], list[dict[str, Any]]]:
    main = Table(f"{title}: loopback load, closed loop per session (one stream each)",
                 ["batching", "sessions", "steps/msg", "session-steps/s", "msgs/s", "p50 ms", "p99 ms",
                  "mean batch", "engine busy", "server CPU (cores)", "load generator CPU (cores)",
                  "vs raw onnxruntime", "errors"])
    for r in results:
        h = r.window_hooks
        batching = h.get("batching")
        ratio = (r.steps_per_s / raw[min(r.sessions, MAX_BATCH)]) if batching and r.sessions in raw else None
        mean_batch = h.get("mean_batch")
        main.add("on" if batching else "off", r.sessions, r.steps_per_message, fmt_rate(r.steps_per_s),
                 fmt_rate(r.messages_per_s), _ms(r.percentile(50)), _ms(r.percentile(99)),
                 f"{mean_batch:.1f}" if mean_batch else "—", f"{h.get('engine_busy', 0):.0%}",
                 f"{h.get('server_cores', 0):.2f}",
                 f"{h.get('client_cores', 0):.2f}", f"{ratio:.0%}" if ratio is not None else "—", r.errors)
    main.notes = [
        f"server: `python -m ntm_serve.server` with --max-batch {MAX_BATCH}, 1 intra-op thread (its default), "
        f"on the same {os.cpu_count()} cores as the load generator (one Python grpc.aio process)",
        "vs raw onnxruntime: service session-steps/s over the bare step graph's (IOBinding, same session options) "
        "at batch = sessions, measured in the same run: "
        + ", ".join(f"B={b}: {fmt_rate(v)}/s" for b, v in raw.items()),
        "engine busy: share of the window the model's batcher thread spent in its engine calls (the step, and moving "
        "the rows of joining and leaving sessions; from the server's ntm_engine_call_seconds, wall time: on a busy "
        "machine it includes waiting for a core); the rest of the server's CPU is gRPC, protobuf and Python "
        "bookkeeping",
        note,
    ]
    found: list[dict[str, Any]] = []
    target = Table(f"{title} targets", ["target", "measured", "met"])

    def pick(batching: bool, sessions: int, steps: int) -> LoadResult | None:
        return next((r for r in results if r.window_hooks.get("batching") == batching and r.sessions == sessions
                     and r.steps_per_message == steps), None)

    on, off = pick(True, 64, 1), pick(False, 64, 1)
    if on and off and off.steps_per_s:
        ratio = on.steps_per_s / off.steps_per_s
        target.add("64 sessions, 1 step/msg: batching on ≥ 4× batching off", f"{ratio:.2f}×",
                   "yes" if ratio >= 4 else "no")
        found.append({"target": "batching_gain_64", "ratio": ratio, "met": ratio >= 4})
    for sessions in (64, 256, 8):
        r = pick(True, sessions, 20)
        if r and sessions in raw:
            share = r.steps_per_s / raw[sessions]
            target.add(f"20 steps/msg, {sessions} sessions: service ≥ 50% of raw onnxruntime at batch {sessions}",
                       f"{share:.0%}", "yes" if share >= 0.5 else "no")
            found.append({"target": f"share_of_raw_{sessions}", "share": share, "met": share >= 0.5})
            break
    for batching in (True, False):
        r = pick(batching, 8, 1)
        if r:
            p99 = r.percentile(99) * 1e3
            target.add(f"p99 of a 1-step message ≤ 2 ms at 8 sessions (batching {'on' if batching else 'off'})",
                       f"{p99:.2f} ms", "yes" if p99 <= 2 else "no")
            found.append({"target": f"p99_8_sessions_batching_{'on' if batching else 'off'}", "p99_ms": p99,
                          "met": p99 <= 2})
    return [main, target], found


def run(model: ModelFolder, out_dir: Path, quick: bool) -> dict[str, Any]:
    cfg = service_config(quick)
    models_dir = single_model_dir(model)
    load_before = machine.load_average()
    results = []
    for batching in (True, False):
        results += run_grid(model, models_dir, cfg, batching)
    raw = raw_engine(model, tuple(min(s, MAX_BATCH) for s in cfg.sessions), cfg.plan)
    load_after = machine.load_average()
    note = machine.load_note(load_before, load_after)
    all_tables, found = tables(results, raw, note)
    for t in all_tables:
        print(t.markdown())
    payload = {
        "benchmark": "service",
        "mode": "quick" if quick else "full",
        "machine": machine.describe(),
        "load_before": load_before,
        "load_after": load_after,
        "load_note": note,
        "model": model.describe(),
        "config": {"sessions": list(cfg.sessions), "steps_per_message": list(cfg.steps_per_message),
                   "warmup_s": cfg.warmup_s, "window_s": cfg.window_s, "max_messages_per_session": cfg.max_messages,
                   "max_batch": MAX_BATCH},
        "results": [r.to_json() for r in results],
        "raw_onnxruntime_steps_per_s": {str(b): v for b, v in raw.items()},
        "targets": found,
    }
    write_result(out_dir, "service", payload, all_tables)
    return payload
