"""Engine benchmark: one NTM step of a whole batch in PyTorch and in onnxruntime, side by side.

Contenders (each at 1 thread and at all cores): the trained model's own `step` in eager PyTorch
(no_grad), the same under torch.compile, the ONNX step graph through plain `session.run` with
onnxruntime's default options, the ONNX step graph through IOBinding (preallocated state buffers), and
the ONNX sequence graph (T steps per call, reported per step). Also: node counts, onnxruntime's
profiler by op type, and a sweep over session options.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import machine
from benchmarks.models import ModelFolder, load_torch_model
from benchmarks.ort_engine import (
    DEFAULT,
    BoundStep,
    RunStep,
    SequenceRun,
    copy_task_inputs,
    initial_state,
    make_session,
)
from benchmarks.profiling import node_counts, profile_step
from benchmarks.report import Table, fmt_rate, fmt_us, write_result
from benchmarks.timing import FULL, QUICK, Contender, Timing, TimingPlan, measure
from ntm_serve.runtime.ort_session import SessionSettings

log = logging.getLogger(__name__)

INPUT_ROWS = 64  # distinct input rows cycled through by the step runners


@dataclass(frozen=True)
class EngineConfig:
    batches: tuple[int, ...]
    plan: TimingPlan
    seq_len: int  # T of the sequence graph
    compile: bool  # try torch.compile (slow to compile: full mode only by default)
    sweep_batches: tuple[int, ...]  # batch sizes of the session-options sweep ((): no sweep)
    profile_batches: tuple[int, ...]
    profile_calls: int
    all_threads: int


def engine_config(quick: bool, batches: tuple[int, ...] | None = None) -> EngineConfig:
    cores = os.cpu_count() or 1
    if quick:
        return EngineConfig(batches or (1, 64), QUICK, 10, False, (1,), (1,), 20, cores)
    return EngineConfig(batches or (1, 8, 64, 256, 1024), FULL, 100, True, (1, 64), (1, 64), 200, cores)


def thread_counts(cfg: EngineConfig) -> tuple[int, ...]:
    return (1,) if cfg.all_threads == 1 else (1, cfg.all_threads)


def _tlabel(threads: int) -> str:
    return f"{threads} thread{'s' if threads > 1 else ''}"


def build_contenders(model: ModelFolder, torch_model: Any, batch: int, cfg: EngineConfig,
                     compile_notes: dict[str, Any]) -> list[Contender]:
    """Every contender of one batch size, each starting from the model's initial state."""
    rng = np.random.default_rng(batch)
    input_size = model.config["input_size"]
    steps = copy_task_inputs(rng, INPUT_ROWS, batch, input_size)  # (64, B, I)
    sequence = copy_task_inputs(rng, cfg.seq_len, batch, input_size)  # (T, B, I)
    state = initial_state(model.path, batch)
    contenders: list[Contender] = []
    compiled = None
    if torch_model is not None and cfg.compile:
        from benchmarks.torch_engine import compile_step

        key = f"batch {batch}"
        try:  # compiled once per batch size, with every core (inductor emits OpenMP loops), run at each thread count
            compiled, seconds = compile_step(torch_model, batch, steps, cfg.all_threads)
            compile_notes[key] = {"ok": True, "compile_s": seconds}
        except Exception as err:  # report plainly: whatever the compiler raises is the finding
            compile_notes[key] = {"ok": False, "error": f"{type(err).__name__}: {err}"[:500]}
            log.warning("torch.compile failed at %s: %s", key, err)
    for threads in thread_counts(cfg):
        label = _tlabel(threads)
        if torch_model is not None:
            from benchmarks.torch_engine import TorchStep, threads_setter, torch_state

            set_threads = threads_setter(threads)
            contenders.append(Contender(f"torch eager, {label}", TorchStep(torch_model.step, torch_state(
                torch_model, batch), steps), batch, set_threads))
            if compiled is not None:
                contenders.append(Contender(f"torch.compile, {label}", TorchStep(compiled, torch_state(
                    torch_model, batch), steps), batch, set_threads))
        step_run = make_session(model.graph("step"), DEFAULT.with_threads(threads))
        step_bound = make_session(model.graph("step"), DEFAULT.with_threads(threads))  # a session per runner
        seq_session = make_session(model.graph("sequence"), DEFAULT.with_threads(threads))
        contenders.append(Contender(f"onnxruntime step, run(), default options, {label}",
                                    RunStep(step_run, state, steps), batch))
        contenders.append(Contender(f"onnxruntime step, IOBinding, {label}",
                                    BoundStep(step_bound, state, steps), batch))
        contenders.append(Contender(f"onnxruntime sequence T={cfg.seq_len}, {label}",
                                    SequenceRun(seq_session, state, sequence), batch * cfg.seq_len))
    return contenders


def contender_order(cfg: EngineConfig, with_torch: bool) -> list[str]:
    names = []
    for kind in ("torch eager", "torch.compile", "onnxruntime step, run(), default options",
                 "onnxruntime step, IOBinding", f"onnxruntime sequence T={cfg.seq_len}"):
        if kind.startswith("torch") and (not with_torch or (kind == "torch.compile" and not cfg.compile)):
            continue
        names += [f"{kind}, {_tlabel(t)}" for t in thread_counts(cfg)]
    return names


def measure_engine(model: ModelFolder, torch_model: Any, cfg: EngineConfig
                   ) -> tuple[dict[str, dict[int, Timing]], dict[str, Any]]:
    """name -> batch -> Timing, and the torch.compile notes."""
    results: dict[str, dict[int, Timing]] = {}
    compile_notes: dict[str, Any] = {}
    for batch in cfg.batches:
        log.info("engine: batch %d", batch)
        contenders = build_contenders(model, torch_model, batch, cfg, compile_notes)
        for name, timing in measure(contenders, cfg.plan).items():
            results.setdefault(name, {})[batch] = timing
    return results, compile_notes


SWEEP: tuple[tuple[str, Callable[[SessionSettings], SessionSettings]], ...] = (
    ("onnxruntime defaults (graph optimisation: all)", lambda o: o),
    ("graph optimisation: extended", lambda o: replace(o, level="extended")),
    ("graph optimisation: basic", lambda o: replace(o, level="basic")),
    ("graph optimisation: disabled", lambda o: replace(o, level="disable")),
    ("flush denormals to zero", lambda o: replace(o, denormal_as_zero=True)),
    ("no memory arena, no memory pattern", lambda o: replace(o, arena=False, mem_pattern=False)),
    ("thread pool does not spin", lambda o: replace(o, spinning=False)),
    ("parallel execution mode", lambda o: replace(o, parallel=True)),
)


def sweep_options(model: ModelFolder, cfg: EngineConfig) -> dict[str, dict[str, Timing]]:
    """Session options one at a time over onnxruntime's defaults (IOBinding runner); row -> column -> Timing."""
    out: dict[str, dict[str, Timing]] = {}
    for batch in cfg.sweep_batches:
        rng = np.random.default_rng(batch)
        steps = copy_task_inputs(rng, INPUT_ROWS, batch, model.config["input_size"])
        state = initial_state(model.path, batch)
        for threads in thread_counts(cfg):
            column = f"B={batch}, {_tlabel(threads)}"
            contenders = [
                Contender(name, BoundStep(make_session(model.graph("step"), change(DEFAULT.with_threads(threads))),
                                          state, steps), batch)
                for name, change in SWEEP
            ]
            contenders.append(Contender("session.run() instead of IOBinding (defaults)", RunStep(
                make_session(model.graph("step"), DEFAULT.with_threads(threads)), state, steps), batch))
            for name, timing in measure(contenders, cfg.plan).items():
                out.setdefault(name, {})[column] = timing
    return out


def engine_tables(results: dict[str, dict[int, Timing]], order: list[str], cfg: EngineConfig,
                  note: str) -> list[Table]:
    cols = [f"B={b}" for b in cfg.batches]
    latency = Table("Engine: latency of one step of the whole batch (µs, median of rounds)", ["contender", *cols])
    throughput = Table("Engine: session-steps per second", ["contender", *cols])
    per_step = Table("Engine: µs per session-step (latency / B)", ["contender", *cols])
    cpu = Table("Engine: process CPU time per step call (µs; all threads summed)", ["contender", *cols])
    for name in order:
        if name not in results:
            continue
        row = results[name]
        seq = "sequence" in name
        latency.add(name, *(fmt_us(row[b].wall_s / (cfg.seq_len if seq else 1)) if b in row else "—"
                            for b in cfg.batches))
        throughput.add(name, *(fmt_rate(row[b].steps_per_s) if b in row else "—" for b in cfg.batches))
        per_step.add(name, *(fmt_us(row[b].per_step_s) if b in row else "—" for b in cfg.batches))
        cpu.add(name, *(fmt_us(row[b].cpu_s / (cfg.seq_len if seq else 1)) if b in row else "—" for b in cfg.batches))
    latency.notes = [f"sequence rows: one call runs T={cfg.seq_len} steps; the figure is the call's time / T",
                     "run(): numpy in, numpy out (onnxruntime allocates the next state every step); IOBinding: "
                     "two preallocated state sets bound in turn (A -> B, B -> A), nothing allocated or copied", note]
    cpu.notes = ["CPU time counts only this process's own work: on a busy machine it is closer to what the "
                 "step costs on an idle one than the wall time is (for 1 thread; with more threads it adds them up)"]
    return [latency, throughput, per_step, cpu]


def targets(results: dict[str, dict[int, Timing]]) -> tuple[Table, list[dict[str, Any]]]:
    """The issue's two engine targets, where the batch sizes they need were measured."""
    table = Table("Engine targets", ["target", "measured", "met"])
    found: list[dict[str, Any]] = []
    eager = results.get("torch eager, 1 thread", {})
    onnx_best = results.get("onnxruntime step, IOBinding, 1 thread", {})
    onnx_plain = results.get("onnxruntime step, run(), default options, 1 thread", {})
    if 1 in eager and 1 in onnx_best:
        ratio = eager[1].wall_s / onnx_best[1].wall_s
        plain = eager[1].wall_s / onnx_plain[1].wall_s if 1 in onnx_plain else float("nan")
        text = (f"{ratio:.2f}× (torch eager {fmt_us(eager[1].wall_s)} µs, onnxruntime IOBinding "
                f"{fmt_us(onnx_best[1].wall_s)} µs; run() with defaults {plain:.2f}×)")
        table.add("ONNX step ≥ 4× faster than torch eager at batch 1 (1 thread)", text, "yes" if ratio >= 4 else "no")
        found.append({"target": "onnx_vs_eager_b1", "ratio": ratio, "ratio_run_defaults": plain, "met": ratio >= 4})
    if 64 in onnx_best:
        us = onnx_best[64].per_step_s * 1e6
        table.add("≤ 10 µs per session-step at batch 64, 1 thread", f"{us:.1f} µs", "yes" if us <= 10 else "no")
        found.append({"target": "us_per_session_step_b64", "us": us, "met": us <= 10})
    return table, found


def sweep_table(sweep: dict[str, dict[str, Timing]]) -> Table:
    columns = list(next(iter(sweep.values())).keys()) if sweep else []
    table = Table("Engine: session options, one at a time (µs per step call; IOBinding)", ["options", *columns])
    for name, row in sweep.items():
        table.add(name, *(fmt_us(row[c].wall_s) if c in row else "—" for c in columns))
    return table


def profile_table(profiles: dict[int, dict[str, Any]]) -> Table:
    batches = sorted(profiles)
    table = Table("Engine: where the time goes (onnxruntime profiler, IOBinding, 1 thread; median µs per step "
                  "call, share)",
                  ["op type", "nodes", *(f"B={b}" for b in batches)])
    last = profiles[batches[-1]]
    shown = [o["op"] for o in last["ops"][:14]]
    for op in shown:
        cells = []
        nodes = 0
        for b in batches:
            entry = next((o for o in profiles[b]["ops"] if o["op"] == op), None)
            cells.append(f"{entry['us_per_call']:.1f} ({entry['share']:.0%})" if entry else "—")
            nodes = entry["nodes"] if entry else nodes
        table.add(op, nodes, *cells)
    table.add("outside kernels (executor)", "", *(f"{profiles[b]['outside_kernels_us']:.1f}" for b in batches))
    table.add("**whole run (profiled)**", "", *(f"{profiles[b]['us_per_call']:.1f}" for b in batches))
    table.notes = ["the profiler adds ~1-2 µs per node and rounds to whole µs: at small batches the per-op figures "
                   "show shares, not absolute costs; 'outside kernels' is the executor's own per-node work"]
    return table


def nodes_table(counts: dict[str, dict[str, Any]]) -> Table:
    table = Table("Engine: node counts (before and after onnxruntime's graph optimisation, level all)",
                  ["graph", "exported", "optimised", "largest op types after optimisation"])
    for graph, c in counts.items():
        top = ", ".join(f"{op} {n}" for op, n in list(c["optimised_ops"].items())[:8])
        table.add(graph, c["exported"], c["optimised"], top)
    return table


def run(model: ModelFolder, out_dir: Path, quick: bool, batches: tuple[int, ...] | None = None,
        compile_torch: bool | None = None, plan: TimingPlan | None = None) -> dict[str, Any]:
    """Measure everything, print the tables, write engine.json/engine.md; returns the JSON payload."""
    cfg = engine_config(quick, batches)
    if compile_torch is not None:
        cfg = replace(cfg, compile=compile_torch)
    if plan is not None:
        cfg = replace(cfg, plan=plan)
    load_before = machine.load_average()
    loaded = load_torch_model(model.path)
    torch_model, torch_sha = loaded if loaded else (None, None)
    if torch_model is None:
        log.warning("%s has no loadable checkpoint.pt: torch rows are skipped", model.path)

    results, compile_notes = measure_engine(model, torch_model, cfg)
    sweep = sweep_options(model, cfg) if cfg.sweep_batches else {}
    counts = {"step": node_counts(model.graph("step"), DEFAULT), "sequence (Scan body included)":
              node_counts(model.graph("sequence"), DEFAULT)}
    profiles = {}
    for batch in cfg.profile_batches:
        rng = np.random.default_rng(batch)
        profiles[batch] = profile_step(model.graph("step"), initial_state(model.path, batch), copy_task_inputs(
            rng, INPUT_ROWS, batch, model.config["input_size"]), DEFAULT, cfg.profile_calls)
    load_after = machine.load_average()
    note = machine.load_note(load_before, load_after)

    order = contender_order(cfg, torch_model is not None)
    tables = engine_tables(results, order, cfg, note)
    target_table, target_results = targets(results)
    tables.append(target_table)
    if cfg.compile:
        failed = {k: v for k, v in compile_notes.items() if not v["ok"]}
        compile_text = ("torch.compile (inductor) worked at every batch size; compile time "
                        + ", ".join(f"{k}: {v['compile_s']:.1f} s" for k, v in compile_notes.items())
                        if not failed else "torch.compile FAILED here: " + "; ".join(
                            f"{k}: {v['error']}" for k, v in failed.items()))
    else:
        compile_text = "torch.compile not tried (quick mode or --no-compile)"
    tables[0].notes.append(compile_text)
    if sweep:
        tables.append(sweep_table(sweep))
    tables.append(nodes_table(counts))
    tables.append(profile_table(profiles))
    for t in tables:
        print(t.markdown())

    payload = {
        "benchmark": "engine",
        "mode": "quick" if quick else "full",
        "machine": machine.describe(),
        "load_before": load_before,
        "load_after": load_after,
        "load_note": note,
        "model": {**model.describe(), "torch_checkpoint_sha256": torch_sha},
        "config": {"batches": list(cfg.batches), "seq_len": cfg.seq_len, "rounds": cfg.plan.rounds,
                   "round_s": cfg.plan.round_s, "threads": list(thread_counts(cfg)),
                   "iobinding_options": repr(DEFAULT)},
        "results": {name: {str(b): t.to_json() for b, t in row.items()} for name, row in results.items()},
        "torch_compile": {"tried": cfg.compile, "batches": compile_notes, "summary": compile_text},
        "targets": target_results,
        "sweep": {name: {col: t.to_json() for col, t in row.items()} for name, row in sweep.items()},
        "node_counts": counts,
        "profile": {str(b): p for b, p in profiles.items()},
    }
    write_result(out_dir, "engine", payload, tables)
    return payload
