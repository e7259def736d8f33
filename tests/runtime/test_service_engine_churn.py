"""The engine's resident batch buffers under churn: sessions join and leave the batch between every call,
rows are created, read and freed in between, and every session still computes exactly its offline run.

The engine keeps the state of the sessions it is stepping in two batch-contiguous buffers stepped in turn
and copies only joining/leaving sessions to and from the pool (ntm_serve/runtime/engine.py); this drives that
bookkeeping directly, with many more membership changes per step than the server tests produce."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from helpers import Offline

from ntm_serve.runtime.engine import Engine


def test_random_joins_and_leaves_match_each_sessions_offline_run(models_dir: Path, offline: Offline,
                                                                 rng: np.random.Generator) -> None:
    engine = Engine(models_dir / "copy", "cpu")
    width = engine.spec.input_size
    live: dict[int, list[np.ndarray]] = {engine.new_row(): [] for _ in range(10)}  # slot -> inputs so far
    outputs: dict[int, list[np.ndarray]] = {slot: [] for slot in live}
    finished: list[tuple[list[np.ndarray], list[np.ndarray], dict[str, np.ndarray]]] = []
    for call in range(160):
        slots = sorted(live)
        chosen = rng.choice(slots, size=int(rng.integers(1, len(slots) + 1)), replace=False)
        x = (rng.random((len(chosen), width)) < 0.5).astype(np.float32)  # (B, I)
        result = engine.step(chosen.astype(np.int64), x)
        for row, slot in enumerate(chosen.tolist()):
            live[slot].append(x[row])
            outputs[slot].append(result.outputs[row])
        if call % 17 == 5:  # a session leaves for good: its state read, its row freed
            slot = slots[int(rng.integers(len(slots)))]
            finished.append((live.pop(slot), outputs.pop(slot), engine.read_row(slot)))
            engine.free_row(slot)
        if call % 13 == 7:  # a session joins (it may reuse a freed row)
            slot = engine.new_row()
            live[slot], outputs[slot] = [], []
        if call % 29 == 11:  # a read between steps flushes the resident batch back to the pool
            engine.read_row(slots[0])
    finished += [(live[s], outputs[s], engine.read_row(s)) for s in live]
    checked = 0
    for inputs, got, state in finished:
        if not inputs:
            continue
        want = offline.run(np.stack(inputs))
        np.testing.assert_array_equal(np.stack(got), want["outputs"])
        for name, value in want["state"].items():
            np.testing.assert_array_equal(state[name], value, err_msg=name)
        checked += 1
    assert checked >= 15
