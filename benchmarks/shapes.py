"""Export-shape experiment: the same model exported with cheaper expressions of the same math, measured.

For each variant of benchmarks/export_variants.py the step graph is exported from the model's own
checkpoint with the variant's functions swapped in (training/ itself is not edited), then measured
side by side (IOBinding, default session options, 1 thread) and checked against the shipped expression's export:
the same inputs from the same state for K steps must give the same outputs and state (max abs diff).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np

from benchmarks import machine
from benchmarks.export_variants import QUICK_VARIANTS, VARIANTS
from benchmarks.models import ModelFolder, load_torch_model
from benchmarks.ort_engine import DEFAULT, BoundStep, copy_task_inputs, initial_state, make_session
from benchmarks.profiling import node_counts
from benchmarks.report import Table, fmt_us, write_result
from benchmarks.timing import FULL, QUICK, Contender, measure

log = logging.getLogger(__name__)


@contextlib.contextmanager
def swapped(patches: dict[str, object]) -> Iterator[None]:
    """Replace functions of training/ for the duration of one export."""
    with contextlib.ExitStack() as stack:
        for target, replacement in patches.items():
            stack.enter_context(mock.patch(target, replacement))
        yield


def export_variant(torch_model: Any, patches: dict[str, object]) -> bytes:
    from ntm_serve.export.graphs import step_graph
    from ntm_serve.export.model_files import model_bytes

    with swapped(patches):
        return model_bytes(step_graph(torch_model))


def parity(graphs: dict[str, bytes], folder: Path, input_size: int, steps: int, batch: int = 4) -> dict[str, float]:
    """Max abs difference of outputs and every state tensor after `steps` steps, against the first graph."""
    rng = np.random.default_rng(7)
    inputs = copy_task_inputs(rng, steps, batch, input_size)
    state = initial_state(folder, batch)
    finals: dict[str, list[np.ndarray]] = {}
    for name, graph in graphs.items():
        runner = BoundStep(make_session(graph, DEFAULT), state, inputs)
        outputs = []
        for _ in range(steps):
            runner()
            outputs.append(np.array(runner.output.numpy()))
        finals[name] = [np.stack(outputs), *runner.state()]
    reference = next(iter(finals.values()))
    return {name: max(float(np.abs(a - b).max()) for a, b in zip(arrays, reference, strict=True))
            for name, arrays in finals.items()}


def run(model: ModelFolder, out_dir: Path, quick: bool) -> dict[str, Any]:
    loaded = load_torch_model(model.path)
    if loaded is None:
        raise RuntimeError(f"{model.path}: the export-shape experiment needs the model's checkpoint.pt")
    torch_model, sha = loaded
    names = QUICK_VARIANTS if quick else tuple(VARIANTS)
    batches = (1,) if quick else (1, 64, 256)
    plan = QUICK if quick else FULL
    load_before = machine.load_average()
    graphs = {}
    for name in names:
        log.info("shapes: exporting %s", name)
        graphs[name] = export_variant(torch_model, VARIANTS[name])
    errors = parity(graphs, model.path, model.config["input_size"], 8 if quick else 200)
    counts = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, graph) in enumerate(graphs.items()):
            path = Path(tmp) / f"variant{i}.onnx"
            path.write_bytes(graph)
            counts[name] = node_counts(path, DEFAULT)
    timings: dict[str, dict[int, Any]] = {}
    for batch in batches:
        rng = np.random.default_rng(batch)
        inputs = copy_task_inputs(rng, 64, batch, model.config["input_size"])
        state = initial_state(model.path, batch)
        contenders = [Contender(name, BoundStep(make_session(g, DEFAULT), state, inputs), batch)
                      for name, g in graphs.items()]
        for name, t in measure(contenders, plan).items():
            timings.setdefault(name, {})[batch] = t
    load_after = machine.load_average()

    base = names[0]
    table = Table("Export shape: the same math expressed differently (step graph; IOBinding, 1 thread)",
                  ["variant", "nodes (optimised)", *(f"B={b} µs/step" for b in batches),
                   *(f"B={b} vs shipped" for b in batches[1:] or batches), "max abs diff vs shipped"])
    for name in names:
        row = timings[name]
        speed = [f"{row[b].wall_s * 1e6:.0f}" if row[b].wall_s >= 1e-4 else fmt_us(row[b].wall_s) for b in batches]
        gains = [f"{timings[base][b].wall_s / row[b].wall_s:.2f}×" for b in (batches[1:] or batches)]
        table.add(name, f"{counts[name]['exported']} ({counts[name]['optimised']})", *speed, *gains,
                  f"{errors[name]:.1e}")
    table.notes = [f"each variant exported from {model.path}/checkpoint.pt (sha256 {sha[:12]}) with the functions of "
                   "benchmarks/export_variants.py swapped into training/ during the export only",
                   f"max abs diff: outputs and all six state tensors after {8 if quick else 200} copy-task steps "
                   "(batch 4) from the initial state, against the shipped expression's export",
                   machine.load_note(load_before, load_after)]
    print(table.markdown())
    payload = {"benchmark": "shapes", "mode": "quick" if quick else "full", "machine": machine.describe(),
               "load_before": load_before, "load_after": load_after, "model": model.describe(),
               "variants": {name: {"node_counts": counts[name], "max_abs_diff": errors[name],
                                   "timings": {str(b): t.to_json() for b, t in timings[name].items()}}
                            for name in names}}
    write_result(out_dir, "shapes", payload, [table])
    return payload
