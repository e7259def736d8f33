"""onnxruntime's profiler over the copy step graph at one (B, N): per-node medians, slowest first (the journal
entry's table of the kernels that touch every memory cell).

`python docs/journal/results/2026-12-07-engine-against-torch-compile/step_profile.py 64 1024` from the repository
root, on an idle box.
"""

from __future__ import annotations

import collections
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, ".")  # the repository root: benchmarks/ is not an installed package

from benchmarks.memory_rows import INPUT_ROWS, initial_state
from benchmarks.models import find_model
from benchmarks.ort_engine import BoundStep, copy_task_inputs
from ntm_serve.runtime.ort_session import SessionSettings, open_session


def main(batch: int, rows: int, runs: int = 60, warmup: int = 20) -> None:
    model = find_model(explicit=Path("models/copy"))
    with tempfile.TemporaryDirectory() as tmp:
        options = SessionSettings(threads=1, spinning=False, log_severity=3).options()
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "profile")
        sess = open_session(model.graph("step"), "cpu", options=options)
        inputs = copy_task_inputs(np.random.default_rng(batch), INPUT_ROWS, batch,
                                  model.config["input_size"])
        step = BoundStep(sess, initial_state(model, batch, rows), inputs)
        for _ in range(runs):
            step()
        events = json.loads(Path(sess.end_profiling()).read_text())
    kept = sorted((e["ts"], e["dur"]) for e in events if e.get("name") == "model_run")[warmup:]
    durations: dict[str, list[float]] = collections.defaultdict(list)
    op_of: dict[str, str] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= kept[0][0]:
            durations[e["name"]].append(e["dur"])
            op_of[e["name"]] = e["args"]["op_name"]
    nodes = sorted(((statistics.median(d), name) for name, d in durations.items()), reverse=True)
    print(f"B = {batch}, N = {rows}: {statistics.median(d for _, d in kept):.0f} µs per run, "
          f"{sum(t for t, _ in nodes):.0f} in kernels, {len(nodes)} nodes")
    for us, name in nodes[:25]:
        print(f"{us:8.1f}  {op_of[name]:12s}  {name.removesuffix('_kernel_time')}")


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
