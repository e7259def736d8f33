"""µs per session-step of the copy step graph against the batch size, at several N (the journal entry's second
paragraph): does a smaller batch keep the memory in cache and cost less per session?

`python docs/journal/results/2026-12-07-engine-against-torch-compile/batch_sizes.py` from the repository root.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, ".")  # the repository root: benchmarks/ is not an installed package

from benchmarks.memory_rows import INPUT_ROWS, initial_state
from benchmarks.models import find_model
from benchmarks.ort_engine import BoundStep, copy_task_inputs, make_session
from ntm_serve.contract import GRAPH_FILES


def main() -> None:
    model = find_model(explicit=Path("models/copy"))
    sess = make_session(model.path / GRAPH_FILES["step"])
    for rows in (128, 512, 1024, 2048):
        cells = []
        for batch in (1, 4, 8, 16, 32, 64):
            inputs = copy_task_inputs(np.random.default_rng(batch), INPUT_ROWS, batch, model.config["input_size"])
            step = BoundStep(sess, initial_state(model, batch, rows), inputs)
            for _ in range(10):
                step()
            times = []
            for _ in range(max(20, 2000 // batch)):
                start = time.perf_counter()
                step()
                times.append(time.perf_counter() - start)
            cells.append(f"B={batch}: {np.median(times) * 1e6 / batch:6.1f}")
        print(f"N={rows:5d} µs/session-step  " + "  ".join(cells), flush=True)


if __name__ == "__main__":
    main()
