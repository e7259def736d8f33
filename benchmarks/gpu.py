"""GPU benchmark: the engine and service tables on onnxruntime's CUDA provider, state on the device.

`python -m benchmarks --only gpu` on a machine with an NVIDIA GPU. Engine contenders: IOBinding with
the state in device memory (only the inputs go up and the outputs come down each step), the same
under CUDA graphs (one captured graph per batch size and direction), `session.run` with numpy (the
state round-trips to the host every step), and the sequence graph; the CPU provider is measured in
the same run, and the batch size from which the GPU moves more session-steps per second than the CPU
is reported. Where CUDA does not load, the results say so plainly and nothing is measured.
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
from benchmarks.models import ModelFolder, single_model_dir
from benchmarks.ort_engine import (
    DEFAULT,
    BoundStep,
    RunStep,
    SequenceRun,
    copy_task_inputs,
    initial_state,
    make_session,
)
from benchmarks.report import Table, fmt_rate, fmt_us, write_result
from benchmarks.timing import FULL, QUICK, Contender, Timing, measure

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


def _try(name: str, make: Any, errors: dict[str, str]) -> Any:
    """Build and warm a runner; a failure (e.g. CUDA graph capture refused) is recorded, not raised."""
    try:
        runner = make()
        for _ in range(3):
            runner()
        return runner
    except Exception as err:
        errors[name] = f"{type(err).__name__}: {err}"[:400]
        log.warning("gpu: %s failed: %s", name, err)
        return None


def accel_label(device: str) -> str:
    """Row label of the accelerator contenders: CUDA, or a dry run's plain statement that it is the CPU."""
    return "CUDA" if device == "cuda" else "DRY RUN (CPU provider as the accelerator)"


def _graph_runner(path: Path, state: list[np.ndarray], steps: np.ndarray, graph_ids: tuple[int, int]) -> BoundStep:
    """IOBinding under CUDA graphs: a session of its own (captured graphs belong to a session)."""
    return BoundStep(make_session(path, DEFAULT, "cuda", cuda_graph=True), state, steps, "cuda", graph_ids=graph_ids)


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
    for k, batch in enumerate(batches):
        rng = np.random.default_rng(batch)
        steps = copy_task_inputs(rng, 64, batch, model.config["input_size"])
        seq = copy_task_inputs(rng, seq_len, batch, model.config["input_size"])
        state = initial_state(model.path, batch)
        graph_ids = (2 * k + 1, 2 * k + 2)  # one captured CUDA graph per batch size and direction
        makers: dict[str, Callable[[], object]] = {
            f"{acc}, IOBinding, state on device": partial(BoundStep, sessions["cuda"], state, steps, device),
            f"{acc}, run() with numpy (state via host)": partial(RunStep, sessions["cuda"], state, steps),
            f"{acc}, sequence T={seq_len} (per step)": partial(SequenceRun, sessions["seq"], state, seq),
            "CPU, IOBinding, 1 thread": partial(BoundStep, sessions["cpu1"], state, steps),
            f"CPU, IOBinding, {cores} threads": partial(BoundStep, sessions["cpuN"], state, steps),
        }
        if device == "cuda":
            makers[f"{acc}, IOBinding + CUDA graphs"] = partial(_graph_runner, path, state, steps, graph_ids)
        contenders = []
        for name, make in makers.items():
            runner = _try(f"{name}, B={batch}", make, errors)
            if runner is not None:
                contenders.append(Contender(name, runner, batch * (seq_len if "sequence" in name else 1)))
        for name, timing in measure(contenders, plan).items():
            results.setdefault(name, {})[batch] = timing
    return results, errors


def crossover(results: dict[str, dict[int, Timing]], batches: tuple[int, ...], acc: str = "CUDA") -> int | None:
    """The smallest batch from which the best CUDA step beats the best CPU step in session-steps/s."""
    def best(prefix: str, batch: int) -> float:
        rates = [row[batch].steps_per_s for name, row in results.items()
                 if name.startswith(prefix) and "sequence" not in name and batch in row]
        return max(rates, default=0.0)

    for batch in batches:
        if best(acc, batch) > best("CPU,", batch) > 0 and all(
                best(acc, b) > best("CPU,", b) for b in batches if b >= batch):
            return batch
    return None


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
    tables = engine_tables(results, batches, cross, errors, 10 if quick else SEQ_LEN, title)

    cfg = service_bench.service_config(quick)
    models_dir = single_model_dir(model)
    grid = []
    for batching in (True, False):
        grid += service_bench.run_grid(model, models_dir, cfg, batching, ("--provider", device))
    raw = service_bench.raw_engine(model, tuple(min(s, service_bench.MAX_BATCH) for s in cfg.sessions), cfg.plan,
                                   device)
    load_after = machine.load_average()
    note = machine.load_note(load_before, load_after)
    title = "GPU service (--provider cuda)" if device == "cuda" else "GPU DRY RUN on the CPU provider: service"
    service_tables, found = service_bench.tables(grid, raw, note, title=title)
    tables += service_tables
    for t in tables:
        print(t.markdown())
    payload = {
        "benchmark": "gpu", "ran": True, "device": device, "mode": "quick" if quick else "full",
        "machine": machine.describe(),
        "load_before": load_before, "load_after": load_after, "model": model.describe(),
        "engine": {name: {str(b): t.to_json() for b, t in row.items()} for name, row in results.items()},
        "engine_errors": errors, "gpu_overtakes_cpu_from_batch": cross,
        "service": [r.to_json() for r in grid], "raw_cuda_steps_per_s": {str(b): v for b, v in raw.items()},
        "targets": found,
    }
    write_result(out_dir, "gpu", payload, tables)
    return payload
