"""The four tasks' encodings in numpy, for clients that have no torch (the demo, load generators).

Exactly the layouts of `ntm_serve/training/tasks.py` (tests/test_service_tasks_np.py checks them against it on the
same random content); one sequence at a time, shapes (T, I) and (T_out, O). The random streams differ
from torch's: only the encodings are shared. Targets are compared with the outputs of the last T_out
steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ITEM_LEN = 3  # associative recall: steps per item


@dataclass(frozen=True)
class Example:
    task: str
    inputs: np.ndarray  # (T, I) float32
    targets: np.ndarray  # (T_out, O) float32
    params: dict[str, Any] = field(default_factory=dict)


def encode_copy(seq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """seq (L, 8) bits -> inputs (2L+1, 9): the vectors, a delimiter on ch 8, L blanks; targets seq."""
    length = seq.shape[0]
    inputs = np.zeros((2 * length + 1, 9), dtype=np.float32)  # (2L+1, 9)
    inputs[:length, :8] = seq
    inputs[length, 8] = 1.0
    return inputs, seq.astype(np.float32)


def encode_repeat_copy(seq: np.ndarray, repeats: int) -> tuple[np.ndarray, np.ndarray]:
    """seq (L, 8) -> inputs (L+2+R*L+1, 10): vectors, delimiter (ch 8), R/10 on ch 9, R*L+1 blanks;
    targets (R*L+1, 9): R copies, then an end marker on ch 8."""
    length = seq.shape[0]
    out_steps = repeats * length + 1
    inputs = np.zeros((length + 2 + out_steps, 10), dtype=np.float32)
    inputs[:length, :8] = seq
    inputs[length, 8] = 1.0
    inputs[length + 1, 9] = np.float32(repeats / 10.0)
    targets = np.zeros((out_steps, 9), dtype=np.float32)  # (R*L+1, 9)
    targets[:-1, :8] = np.tile(seq, (repeats, 1))
    targets[-1, 8] = 1.0
    return inputs, targets


def encode_associative_recall(items: np.ndarray, query: int) -> tuple[np.ndarray, np.ndarray]:
    """items (K, 3, 6) bits, query q in [0, K) -> inputs (4K+8, 8): each item after a delimiter (ch 6), a
    query delimiter (ch 7), item q, a query delimiter, 3 blanks; targets item q+1 (mod K), (3, 6)."""
    count = items.shape[0]
    steps = (ITEM_LEN + 1) * count
    inputs = np.zeros((steps + 1 + ITEM_LEN + 1 + ITEM_LEN, 8), dtype=np.float32)
    for k in range(count):
        inputs[k * (ITEM_LEN + 1), 6] = 1.0
        inputs[k * (ITEM_LEN + 1) + 1 : (k + 1) * (ITEM_LEN + 1), :6] = items[k]
    inputs[steps, 7] = 1.0
    inputs[steps + 1 : steps + 1 + ITEM_LEN, :6] = items[query]
    inputs[steps + 1 + ITEM_LEN, 7] = 1.0
    return inputs, items[(query + 1) % count].astype(np.float32)


def encode_priority_sort(seq: np.ndarray, priority: np.ndarray, keep: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """seq (20, 8), priority (20,) in [-1, 1] -> inputs (37, 10): vectors with their priority on ch 8, a
    delimiter (ch 9), 16 blanks; targets the `keep` highest-priority vectors, highest first."""
    count = seq.shape[0]
    inputs = np.zeros((count + 1 + keep, 10), dtype=np.float32)
    inputs[:count, :8] = seq
    inputs[:count, 8] = priority
    inputs[count, 9] = 1.0
    order = np.argsort(-priority, kind="stable")[:keep]  # (keep,)
    return inputs, seq[order].astype(np.float32)


def _bits(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.integers(0, 2, shape).astype(np.float32)


def copy(rng: np.random.Generator, length: int = 12) -> Example:
    inputs, targets = encode_copy(_bits(rng, length, 8))
    return Example("copy", inputs, targets, {"length": length})


def repeat_copy(rng: np.random.Generator, length: int = 5, repeats: int = 3) -> Example:
    inputs, targets = encode_repeat_copy(_bits(rng, length, 8), repeats)
    return Example("repeat_copy", inputs, targets, {"length": length, "repeats": repeats})


def associative_recall(rng: np.random.Generator, items: int = 4, wrap: bool = False) -> Example:
    query = int(rng.integers(0, items if wrap else items - 1))
    inputs, targets = encode_associative_recall(_bits(rng, items, ITEM_LEN, 6), query)
    return Example("associative_recall", inputs, targets, {"items": items, "query": query})


def priority_sort(rng: np.random.Generator, count: int = 20, keep: int = 16) -> Example:
    priority = (rng.random(count, dtype=np.float32) * 2.0 - 1.0).astype(np.float32)
    inputs, targets = encode_priority_sort(_bits(rng, count, 8), priority, keep)
    return Example("priority_sort", inputs, targets, {"count": count, "keep": keep})


TASKS: dict[str, Callable[..., Example]] = {
    "copy": copy,
    "repeat_copy": repeat_copy,
    "associative_recall": associative_recall,
    "priority_sort": priority_sort,
}
