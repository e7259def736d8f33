"""GPU benchmark: the engine and service tables on onnxruntime's CUDA provider, state on the device.

`python -m benchmarks --only gpu` on a machine with an NVIDIA GPU. Engine contenders: IOBinding with
the state in device memory (only the inputs go up and the outputs come down each step), the server's
CUDA-graph path (ntm_serve/runtime/cuda_graphs.py: the batch in its bucket's fixed buffers, one captured graph per
bucket and direction), `session.run` with numpy (the state round-trips to the host every step), and the
sequence graph; the CPU provider is measured in the same run. The CUDA-graph table puts side by side, per
batch: launches per step (benchmarks/launches.py), µs per step with and without graphs, and the batch from
which each GPU path moves more session-steps per second than the CPU. The service grid runs with
`--provider cuda`, and with `--cuda-graph true`. Where CUDA does not load, the results say so plainly and
nothing is measured; `--gpu-device cpu` dry-runs the same code on the CPU provider (no capture there).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from benchmarks import machine
from benchmarks.launches import Launches, launches
from benchmarks.models import ModelFolder, single_model_dir
from benchmarks.ort_engine import (
    DEFAULT,
    BoundStep,
    BucketStep,
    RunStep,
    SequenceRun,
    bucket_steps,
    copy_task_inputs,
    initial_state,
    make_session,
)
from benchmarks.report import Table, fmt_rate, fmt_us, write_result
from benchmarks.timing import FULL, QUICK, Contender, Timing, measure
from ntm_serve.runtime.buckets import bucket_rows, default_buckets, padded

log = logging.getLogger(__name__)

GPU_BATCHES_FULL = (1, 8, 64, 256, 1024, 4096)
GPU_BATCHES_QUICK = (1, 64)
SEQ_LEN = 100


def cuda_unavailable(model: ModelFolder) -> str | None:
    """None when a CUDA session of the step graph really runs here, else the reason."""
    if machine.gpu_name() is None:
        return "no NVIDIA GPU here (nvidia-smi finds none)"
    ort.set_default_logger_severity(3)  # the provider bridge logs its own load failure; we report it below
    try:
        sess = make_session(model.graph("step"), DEFAULT, "cuda")
        state = initial_state(model.path, 1)
        BoundStep(sess, state, copy_task_inputs(np.random.default_rng(0), 2, 1, model.config["input_size"]),
                  "cuda")()
    except Exception as err:
        return f"{type(err).__name__}: {err}"[:400]
    return None


def _try(name: str, make: Any, errors: dict[str, str], warm: bool = True) -> Any:
    """Build (and warm) a runner; a failure (e.g. CUDA graph capture refused) is recorded, not raised."""
    try:
        runner = make()
        for _ in range(3 if warm else 0):
            runner()
        return runner
    except Exception as err:
        errors[name] = f"{type(err).__name__}: {err}"[:400]
        log.warning("gpu: %s failed: %s", name, err)
        return None


def accel_label(device: str) -> str:
    """Row label of the accelerator contenders: CUDA, or a dry run's plain statement that it is the CPU."""
    return "CUDA" if device == "cuda" else "DRY RUN (CPU provider as the accelerator)"


def graph_label(device: str) -> str:
    """Row label of the server's CUDA-graph path."""
    return f"{accel_label(device)}, IOBinding + CUDA graphs (server buckets)" if device == "cuda" else \
        f"{accel_label(device)}, IOBinding at server buckets (the CUDA-graph path, no capture on CPU)"


def engine(model: ModelFolder, batches: tuple[int, ...], quick: bool, device: str = "cuda"
           ) -> tuple[dict[str, dict[int, Timing]], dict[str, str]]:
    """The engine table; `device="cpu"` runs the same code on the CPU provider (a dry run of the script)."""
    plan = QUICK if quick else FULL
    seq_len = 10 if quick else SEQ_LEN
    cores = os.cpu_count() or 1
    path = model.graph("step")
    sessions = {"cuda": make_session(path, DEFAULT, device), "cpu1": make_session(path, DEFAULT),
                "cpuN": make_session(path, DEFAULT.with_threads(cores)),
                "seq": make_session(model.graph("sequence"), DEFAULT, device)}
    results: dict[str, dict[int, Timing]] = {}
    errors: dict[str, str] = {}
    acc = accel_label(device)
    graphs = _try("CUDA graphs: capture of every bucket", partial(
        bucket_steps, model.path, default_buckets(max(batches)), device, device == "cuda"), errors, warm=False)
    for batch in batches:
        rng = np.random.default_rng(batch)
        steps = copy_task_inputs(rng, 64, batch, model.config["input_size"])
        seq = copy_task_inputs(rng, seq_len, batch, model.config["input_size"])
        state = initial_state(model.path, batch)
        makers: dict[str, Callable[[], object]] = {
            f"{acc}, IOBinding, state on device": partial(BoundStep, sessions["cuda"], state, steps, device),
            f"{acc}, run() with numpy (state via host)": partial(RunStep, sessions["cuda"], state, steps),
            f"{acc}, sequence T={seq_len} (per step)": partial(SequenceRun, sessions["seq"], state, seq),
            "CPU, IOBinding, 1 thread": partial(BoundStep, sessions["cpu1"], state, steps),
            f"CPU, IOBinding, {cores} threads": partial(BoundStep, sessions["cpuN"], state, steps),
        }
        if graphs is not None:
            makers[graph_label(device)] = partial(BucketStep, graphs, steps, device)
        contenders = []
        for name, make in makers.items():
            runner = _try(f"{name}, B={batch}", make, errors)
            if runner is not None:
                contenders.append(Contender(name, runner, batch * (seq_len if "sequence" in name else 1)))
        for name, timing in measure(contenders, plan).items():
            results.setdefault(name, {})[batch] = timing
    return results, errors


def crossover(results: dict[str, dict[int, Timing]], batches: tuple[int, ...], acc: str = "CUDA",
              graphs: bool | None = None) -> int | None:
    """The smallest batch from which the best CUDA step (`graphs`: only the CUDA-graph row, or only the others;
    None: any) beats the best CPU step in session-steps/s, at that batch and every larger one measured."""
    def best(prefix: str, batch: int, graph_rows: bool | None = None) -> float:
        rates = [row[batch].steps_per_s for name, row in results.items()
                 if name.startswith(prefix) and "sequence" not in name and batch in row
                 and (graph_rows is None or ("server buckets" in name) == graph_rows)]
        return max(rates, default=0.0)

    for batch in batches:
        if best(acc, batch, graphs) > best("CPU,", batch) > 0 and all(
                best(acc, b, graphs) > best("CPU,", b) for b in batches if b >= batch):
            return batch
    return None


def count_launches(model: ModelFolder, batches: tuple[int, ...], device: str, errors: dict[str, str],
                   ) -> dict[str, dict[int, Launches]]:
    """Launches per step by batch, without and with CUDA graphs, each in the batch's own bucket."""
    buckets = default_buckets(max(batches))
    out: dict[str, dict[int, Launches]] = {"plain": {}, "graphs": {}}
    for batch in batches:
        bucket = (bucket_rows(padded(batch), buckets),)
        for key, graph in (("plain", False), ("graphs", device == "cuda")):
            try:
                out[key][batch] = launches(model.path, batch, bucket, device, graph)
            except Exception as err:
                errors[f"launch count, {key}, B={batch}"] = f"{type(err).__name__}: {err}"[:400]
    return out


def graph_table(results: dict[str, dict[int, Timing]], counts: dict[str, dict[int, Launches]],
                batches: tuple[int, ...], device: str, title: str) -> tuple[Table, dict[str, int | None]]:
    """Issue 12's CUDA-graph table: launches and µs per step by batch, with and without graphs, and crossovers."""
    acc = accel_label(device)
    provider = "CUDAExecutionProvider" if device == "cuda" else "CPUExecutionProvider"
    plain_name, graph_name = f"{acc}, IOBinding, state on device", graph_label(device)
    buckets = default_buckets(max(batches))
    table = Table(f"{title}: CUDA graphs, launches and µs per step by batch",
                  ["batch", "bucket", "launches/step, no graphs", "launches/step, CUDA graphs",
                   "µs/step, no graphs", "µs/step, CUDA graphs", "µs/step, best CPU", "graphs vs no graphs"])

    def us(name: str, batch: int) -> float | None:
        row = results.get(name, {})
        return row[batch].wall_s * 1e6 if batch in row else None

    for batch in batches:
        plain, graph = us(plain_name, batch), us(graph_name, batch)
        cpu = [v for v in (us(n, batch) for n in results if n.startswith("CPU,")) if v is not None]
        launch = [counts[k][batch].cell(provider, k == "graphs" and device == "cuda") if batch in counts[k] else "—"
                  for k in ("plain", "graphs")]
        table.add(batch, bucket_rows(padded(batch), buckets), *launch,
                  *(f"{v:,.1f}" if v is not None else "—" for v in (plain, graph, min(cpu, default=None))),
                  f"{plain / graph:.2f}×" if plain and graph else "—")
    cross = {"no_graphs": crossover(results, batches, acc, graphs=False),
             "graphs": crossover(results, batches, acc, graphs=True)}
    table.notes = [
        "the CUDA-graph column runs the server's own code (ntm_serve/runtime/cuda_graphs.py): the batch padded "
        "into its bucket's fixed buffers (ntm_serve/runtime/buckets.py), one graph per bucket and direction "
        "captured up front; µs are "
        "for the whole batch, inputs up and outputs down included, TF32 off",
        "launches: onnxruntime's profiler, the difference of two runs N steps apart (benchmarks/launches.py): "
        "nodes the executor ran per step (each launches one CUDA kernel or more; exact kernel counts only where "
        "the build records Kernel events); under CUDA graphs a replayed step runs no node: one graph launch. "
        "Both paths also copy inputs up and outputs down once per step",
        "the CPU rows of this table run no graphs: on the CPU provider the server refuses --cuda-graph"
        if device == "cuda" else "DRY RUN: the CPU provider stands in for CUDA and nothing is captured; "
        "these figures say nothing about GPUs",
    ] + [f"{'with' if k == 'graphs' else 'without'} CUDA graphs the GPU overtakes the CPU (session-steps/s, best "
         f"of each) from batch {v}" if v else f"{'with' if k == 'graphs' else 'without'} CUDA graphs the GPU did "
         "not overtake the CPU at any measured batch" for k, v in cross.items()]
    return table, cross


def engine_tables(results: dict[str, dict[int, Timing]], batches: tuple[int, ...], cross: int | None,
                  errors: dict[str, str], seq_len: int, title: str) -> list[Table]:
    cols = [f"B={b}" for b in batches]
    latency = Table(f"{title}: latency of one step of the whole batch (µs)", ["contender", *cols])
    rate = Table(f"{title}: session-steps per second", ["contender", *cols])
    for name, row in results.items():
        per = seq_len if "sequence" in name else 1
        latency.add(name, *(fmt_us(row[b].wall_s / per) if b in row else "—" for b in batches))
        rate.add(name, *(fmt_rate(row[b].steps_per_s) if b in row else "—" for b in batches))
    latency.notes = ["CUDA step rows include the host-to-device copy of the inputs and the device-to-host copy "
                     "of the outputs every step; TF32 off",
                     f"GPU overtakes CPU (session-steps/s, best of each) from batch {cross}" if cross else
                     "GPU did not overtake CPU at any measured batch size"]
    latency.notes += [f"failed: {k}: {v}" for k, v in errors.items()]
    return [latency, rate]


def not_run_payload(reason: str) -> tuple[dict[str, Any], Table]:
    table = Table("GPU: NOT RUN", ["reason"])
    table.add(reason)
    table.notes = ["run `python -m benchmarks --only gpu` on a machine with an NVIDIA GPU and onnxruntime-gpu's "
                   "CUDA 13 / cuDNN 9 libraries to fill these tables"]
    return {"benchmark": "gpu", "ran": False, "reason": reason, "machine": machine.describe()}, table


def run(model: ModelFolder, out_dir: Path, quick: bool, device: str = "cuda") -> dict[str, Any]:
    """`device="cpu"`: a dry run of this script on the CPU provider (labels still say CUDA; measures no GPU)."""
    reason = cuda_unavailable(model) if device == "cuda" else None
    if reason is not None:
        payload, table = not_run_payload(f"the CUDA execution provider does not run here: {reason}")
        print(table.markdown())
        write_result(out_dir, "gpu", payload, [table])
        return payload

    from benchmarks import service_bench  # the service grid, on the CUDA provider

    load_before = machine.load_average()
    batches = GPU_BATCHES_QUICK if quick else GPU_BATCHES_FULL
    results, errors = engine(model, batches, quick, device)
    cross = crossover(results, batches, accel_label(device))
    title = "GPU engine" if device == "cuda" else "GPU engine DRY RUN on the CPU provider (no GPU measured)"
    counts = count_launches(model, batches, device, errors)
    graph, graph_cross = graph_table(results, counts, batches, device, title)
    tables = [graph, *engine_tables(results, batches, cross, errors, 10 if quick else SEQ_LEN, title)]

    cfg = service_bench.service_config(quick)
    models_dir = single_model_dir(model)
    grid = []
    for batching in (True, False):
        grid += service_bench.run_grid(model, models_dir, cfg, batching, ("--provider", device))
    graph_grid = []  # the server with --cuda-graph (refused on the CPU provider: nothing to dry-run)
    if device == "cuda":
        graph_grid = service_bench.run_grid(model, models_dir, cfg, True, ("--provider", "cuda", "--cuda-graph", "1"))
    raw = service_bench.raw_engine(model, tuple(min(s, service_bench.MAX_BATCH) for s in cfg.sessions), cfg.plan,
                                   device)
    load_after = machine.load_average()
    note = machine.load_note(load_before, load_after)
    title = "GPU service (--provider cuda)" if device == "cuda" else "GPU DRY RUN on the CPU provider: service"
    service_tables, found = service_bench.tables(grid, raw, note, title=title)
    tables += service_tables
    if graph_grid:
        tables += service_bench.tables(graph_grid, raw, note, title="GPU service (--provider cuda --cuda-graph true)"
                                       )[0][:1]
    for t in tables:
        print(t.markdown())
    payload = {
        "benchmark": "gpu", "ran": True, "device": device, "mode": "quick" if quick else "full",
        "machine": machine.describe(),
        "load_before": load_before, "load_after": load_after, "model": model.describe(),
        "engine": {name: {str(b): t.to_json() for b, t in row.items()} for name, row in results.items()},
        "engine_errors": errors, "gpu_overtakes_cpu_from_batch": cross,
        "cuda_graphs": {"overtakes_cpu_from_batch": graph_cross, "buckets": default_buckets(max(batches)),
                        "launches": {k: {str(b): v.to_json() for b, v in row.items()} for k, row in counts.items()}},
        "service": [r.to_json() for r in grid], "service_cuda_graph": [r.to_json() for r in graph_grid],
        "raw_cuda_steps_per_s": {str(b): v for b, v in raw.items()},
        "targets": found,
    }
    write_result(out_dir, "gpu", payload, tables)
    return payload
