"""Memory rows benchmark (issue 24): what a session costs as its memory size N grows, and the same step in
onnxruntime and in PyTorch at two N.

`python -m benchmarks.memory_rows [--quick] [--model models/copy] [--engines ort,compile,eager] [--out DIR]`

Tables:
- per N (128, 512, 2048, 8192): wall and CPU microseconds per session-step of the step graph (IOBinding, the
  server's PingPong, one thread) at B = 1 and 64, and the bytes of one session's state;
- onnxruntime (IOBinding) against torch.compile and torch eager of the same `NTM.step`, B = 1, 8, 64 at N = 128 and
  1024, timed side by side in one process, interleaved round by round (benchmarks/timing.py).
The graphs take N as a dimension (docs/onnx-contract.md): every N runs the same step.onnx, started from
initial_state.onnx fed that N. Quick mode: tiny counts, fewer sizes (checks the script, not the figures).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from benchmarks import machine
from benchmarks.models import ModelFolder, find_model, load_torch_model
from benchmarks.ort_engine import BoundStep, copy_task_inputs, make_session
from benchmarks.report import Table, fmt_rate, fmt_us, write_result
from benchmarks.timing import FULL, QUICK, Contender, Timing, TimingPlan, measure
from benchmarks.torch_engine import TorchStep
from ntm_serve.contract import GRAPH_FILES, MEMORY_ROWS
from ntm_serve.runtime.engine import read_spec
from ntm_serve.runtime.memory_rows import rows_axes
from ntm_serve.server.config import ServiceConfig
from ntm_serve.server.scheduler import batch_cap

log = logging.getLogger(__name__)

ENGINES = ("ort", "compile", "eager")
INPUT_ROWS = 16  # distinct input rows cycled through


@dataclass(frozen=True)
class RowsConfig:
    growth_rows: tuple[int, ...]  # N of the cost-per-N table
    growth_batches: tuple[int, ...]
    compare_rows: tuple[int, ...]  # N of the onnxruntime / torch table
    compare_batches: tuple[int, ...]
    plan: TimingPlan


def rows_config(quick: bool) -> RowsConfig:
    if quick:
        return RowsConfig((128, 512), (1, 8), (128,), (1, 8), QUICK)
    return RowsConfig((128, 512, 2048, 8192), (1, 64), (128, 1024), (1, 8, 64), FULL)


def state_bytes(model: ModelFolder, rows: int) -> int:
    """float32 bytes of one session's state with `rows` memory rows, as the server counts them (ModelSpec)."""
    sess = make_session(model.graph("step"))
    spec = read_spec(model.path.name, sess.get_modelmeta().custom_metadata_map,
                     rows_axes((i.name, i.shape) for i in sess.get_inputs()))
    return spec.state_bytes(rows)


def initial_state(model: ModelFolder, batch: int, rows: int) -> list[np.ndarray]:
    """initial_state.onnx fed N = `rows`, repeated to `batch` rows, contiguous float32."""
    sess = make_session(model.path / GRAPH_FILES["initial_state"])
    values = sess.run(None, {MEMORY_ROWS: np.array(rows, dtype=np.int64)})
    return [np.ascontiguousarray(np.repeat(v, batch, axis=0), dtype=np.float32) for v in values]


def ort_step(model: ModelFolder, sess: ort.InferenceSession, batch: int, rows: int) -> BoundStep:
    inputs = copy_task_inputs(np.random.default_rng(batch), INPUT_ROWS, batch, model.config["input_size"])
    return BoundStep(sess, initial_state(model, batch, rows), inputs)


def torch_runner(net: torch.nn.Module, model: ModelFolder, batch: int, rows: int, compiled: bool
                 ) -> tuple[TorchStep, float]:
    """`net.step` eager or under torch.compile (inductor, static shapes: one compile per (B, N)), from the initial
    state at N; -> the runner and the seconds its first calls took."""
    inputs = copy_task_inputs(np.random.default_rng(batch), INPUT_ROWS, batch, model.config["input_size"])
    with torch.no_grad():
        state = net.initial_state(batch, rows).owned()
    if compiled:
        torch.compiler.reset()  # a fresh cache per shape: Dynamo's recompile limit would fall back to eager
    step = torch.compile(net.step, dynamic=False) if compiled else net.step
    runner = TorchStep(step, state, inputs)
    start = time.perf_counter()
    for _ in range(3):
        runner()
    return runner, time.perf_counter() - start


def _one_thread() -> None:
    torch.set_num_threads(1)


def growth(model: ModelFolder, sess: ort.InferenceSession, cfg: RowsConfig) -> tuple[Table, dict[str, Any]]:
    """Cost per session-step and bytes per session at each N (onnxruntime, IOBinding, one thread); and at the
    largest B, what the server's batch cap (--max-batch-kib) makes of it: the batch it runs instead."""
    results: dict[str, Any] = {}
    top = max(cfg.growth_batches)
    budget = 1024 * ServiceConfig.max_batch_kib
    table = Table("Memory size N: cost per session-step and state per session (onnxruntime, IOBinding, 1 thread)",
                  ["N", "bytes per session", *(f"B={b}: µs per session-step (wall / CPU)" for b in cfg.growth_batches),
                   f"{top} waiting, the server's batch (≤ {ServiceConfig.max_batch_kib} KiB of state): sessions, "
                   "µs per session-step (wall / CPU)", f"session-steps/s: B={top} / the server's batch"])
    for rows in cfg.growth_rows:
        capped = batch_cap(top, budget, state_bytes(model, rows))
        batches = [*cfg.growth_batches, *([capped] if capped not in cfg.growth_batches else [])]
        contenders = [Contender(f"B={b}", ort_step(model, sess, b, rows), b) for b in batches]
        timings = measure(contenders, cfg.plan)
        results[str(rows)] = {"bytes_per_session": state_bytes(model, rows), "server_batch": capped,
                              **{name: t.to_json() for name, t in timings.items()}}
        cells = [f"{fmt_us(t.per_step_s)} / {fmt_us(t.cpu_s / t.steps)}" for t in timings.values()]
        full, served = timings[f"B={top}"], timings[f"B={capped}"]
        table.add(rows, f"{state_bytes(model, rows):,}", *cells[:len(cfg.growth_batches)],
                  f"{capped}: {fmt_us(served.per_step_s)} / {fmt_us(served.cpu_s / served.steps)}",
                  f"{fmt_rate(full.steps_per_s)} / {fmt_rate(served.steps_per_s)}")
    table.notes.append("CPU is the process's CPU time per session-step (wall includes waiting for a core on a busy "
                       "machine); bytes: the six state tensors in float32, linear in N.")
    table.notes.append(f"The server's batch: with {top} sessions of one N waiting, the server steps at most "
                       f"--max-batch-kib (default {ServiceConfig.max_batch_kib}) of state per call "
                       "(ntm_serve/server/scheduler.py: batch_cap), so a large N runs in several smaller calls.")
    return table, results


def compare(model: ModelFolder, sess: ort.InferenceSession, net: torch.nn.Module, cfg: RowsConfig,
            engines: tuple[str, ...]) -> tuple[Table, dict[str, Any]]:
    """onnxruntime against torch.compile and eager, per (N, B), one thread each, interleaved."""
    results: dict[str, Any] = {}
    names = {"ort": "onnxruntime IOBinding", "compile": "torch.compile", "eager": "torch eager"}
    table = Table("The same NTM.step: onnxruntime against PyTorch (µs per call, 1 thread)",
                  ["N", "B", *(names[e] for e in engines), *(f"{names[e]} / onnxruntime" for e in engines
                                                             if e != "ort" and "ort" in engines)])
    for rows in cfg.compare_rows:
        for batch in cfg.compare_batches:
            contenders, compile_s = [], None
            for engine in engines:
                if engine == "ort":
                    call: Callable[[], object] = ort_step(model, sess, batch, rows)
                else:
                    call, seconds = torch_runner(net, model, batch, rows, compiled=engine == "compile")
                    compile_s = seconds if engine == "compile" else compile_s
                contenders.append(Contender(names[engine], call, batch, before=_one_thread))
            timings: dict[str, Timing] = measure(contenders, cfg.plan)
            results[f"N={rows},B={batch}"] = {**{k: t.to_json() for k, t in timings.items()},
                                              "torch_compile_first_calls_s": compile_s}
            ratios = [f"{timings[names[e]].wall_s / timings[names['ort']].wall_s:.2f}×" for e in engines
                      if e != "ort" and "ort" in engines]
            table.add(rows, batch, *(fmt_us(timings[names[e]].wall_s) for e in engines), *ratios)
    table.notes.append("Each (N, B) cell is one interleaved measurement (median of rounds); torch.compile is "
                       "compiled per shape before timing (its first calls are in the JSON).")
    return table, results


def run(model: ModelFolder, out_dir: Path, quick: bool, engines: tuple[str, ...] = ENGINES,
        plan: TimingPlan | None = None) -> dict[str, Any]:
    cfg = rows_config(quick)
    if plan is not None:
        cfg = RowsConfig(cfg.growth_rows, cfg.growth_batches, cfg.compare_rows, cfg.compare_batches, plan)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    load_before = machine.load_average()
    try:
        sess = make_session(model.graph("step"))
        loaded = load_torch_model(model.path)
        if loaded is None:
            raise RuntimeError(f"{model.path}: no checkpoint.pt to run in PyTorch")
        net = loaded[0]
        growth_table, growth_results = growth(model, sess, cfg)
        compare_table, compare_results = compare(model, sess, net, cfg, engines)
    finally:
        torch.set_num_threads(threads)
    payload = {"benchmark": "memory_rows", "mode": "quick" if quick else "full", "machine": machine.describe(),
               "load_before": load_before, "load_after": machine.load_average(), "model": model.describe(),
               "engines": list(engines), "growth": growth_results, "compare": compare_results}
    tables = [growth_table, compare_table]
    write_result(out_dir, "memory_rows", payload, tables)
    for table in tables:
        print(table.markdown())
    return payload


def _engines(text: str) -> tuple[str, ...]:
    names = tuple(e.strip() for e in text.split(",") if e.strip())
    unknown = [e for e in names if e not in ENGINES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"engines from {', '.join(ENGINES)}, got {text!r}")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory_rows", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny counts and fewer sizes: checks the script only")
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: models/copy)")
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--engines", type=_engines, default=ENGINES,
                        help=f"which of {','.join(ENGINES)} the comparison table runs (default: all)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default benchmarks/results; with --quick, one under the system temp dir)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = args.out or (Path(tempfile.gettempdir()) / "ntm-bench-quick" if args.quick else Path("benchmarks/results"))
    model = find_model(args.models_dir, args.model)
    run(model, out, args.quick, args.engines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
