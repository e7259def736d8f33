"""ntm_serve/demos/tasks_np.py (what torch-free clients use) encodes exactly like ntm_serve/training/tasks.py.

The check is on the encoding itself: each torch batch's random content (bits, repeat count, query, priorities)
is read back out of its inputs, encoded again by numpy, and must give that sequence's inputs and targets bit
for bit. Nothing depends on the order in which either module draws random numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ntm_serve.demos import tasks_np
from ntm_serve.training import tasks

B = 16


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _same(encoded: tuple[np.ndarray, np.ndarray], batch: tasks.Batch, b: int) -> None:
    inputs, targets = encoded
    np.testing.assert_array_equal(inputs, batch.inputs[:, b].numpy())
    np.testing.assert_array_equal(targets, batch.targets[:, b].numpy())


@pytest.mark.parametrize("length", [1, 5, 20])
def test_copy(length: int) -> None:
    batch = tasks.copy_batch(_gen(length), B, length)
    for b in range(B):
        seq = batch.inputs[:length, b, :8].numpy()  # (L, 8): the content, as the model sees it
        _same(tasks_np.encode_copy(seq), batch, b)


@pytest.mark.parametrize(("length", "repeats"), [(1, 1), (3, 7), (10, 10)])
def test_repeat_copy(length: int, repeats: int) -> None:
    batch = tasks.repeat_copy_batch(_gen(length), B, length, repeats)
    for b in range(B):
        seq = batch.inputs[:length, b, :8].numpy()  # (L, 8)
        _same(tasks_np.encode_repeat_copy(seq, repeats), batch, b)


@pytest.mark.parametrize(("items", "wrap"), [(2, False), (6, False), (5, True), (15, False)])
def test_associative_recall(items: int, wrap: bool) -> None:
    batch = tasks.associative_recall_batch(_gen(items), B, items, wrap)
    span = tasks_np.ITEM_LEN + 1  # an item's delimiter and its steps
    steps = span * items
    for b in range(B):
        x = batch.inputs[:, b].numpy()
        data = np.stack([x[k * span + 1 : (k + 1) * span, :6] for k in range(items)])  # (K, 3, 6): item k
        shown = x[steps + 1 : steps + 1 + tasks_np.ITEM_LEN, :6]  # (3, 6): the query item
        candidates = [q for q in range(items) if np.array_equal(data[q], shown)]  # equal items: any may be meant
        assert candidates, "the query is one of the items"
        encodings = [tasks_np.encode_associative_recall(data, q) for q in candidates]
        assert any(np.array_equal(i, x) and np.array_equal(t, batch.targets[:, b].numpy()) for i, t in encodings)


def test_priority_sort() -> None:
    batch = tasks.priority_sort_batch(_gen(3), B)
    for b in range(B):
        x = batch.inputs[:, b].numpy()
        _same(tasks_np.encode_priority_sort(x[:20, :8], x[:20, 8]), batch, b)  # bits (20, 8), priorities (20,)


@pytest.mark.parametrize("task", sorted(tasks_np.TASKS))
def test_samplers_match_the_task_sizes(task: str) -> None:
    spec = tasks.get_task(task)
    example = tasks_np.TASKS[task](np.random.default_rng(0))
    assert example.inputs.dtype == np.float32 and example.inputs.shape[1] == spec.input_size
    assert example.targets.shape[1] == spec.output_size
    assert example.targets.shape[0] <= example.inputs.shape[0]
