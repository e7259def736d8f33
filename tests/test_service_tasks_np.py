"""service/tasks_np.py (what torch-free clients use) encodes exactly like training/tasks.py.

The random content is drawn from torch's generator in the order training/tasks.py draws it, then each
sequence is encoded by numpy and compared with the torch batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from service import tasks_np
from training import tasks

B = 16


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("length", [1, 5, 20])
def test_copy(length: int) -> None:
    batch = tasks.copy_batch(_gen(length), B, length)
    seq = torch.randint(0, 2, (length, B, 8), generator=_gen(length)).float().numpy()  # the draw copy_batch makes
    for b in range(B):
        inputs, targets = tasks_np.encode_copy(seq[:, b])
        np.testing.assert_array_equal(inputs, batch.inputs[:, b].numpy())
        np.testing.assert_array_equal(targets, batch.targets[:, b].numpy())


@pytest.mark.parametrize(("length", "repeats"), [(1, 1), (3, 7), (10, 10)])
def test_repeat_copy(length: int, repeats: int) -> None:
    batch = tasks.repeat_copy_batch(_gen(length), B, length, repeats)
    seq = torch.randint(0, 2, (length, B, 8), generator=_gen(length)).float().numpy()
    for b in range(B):
        inputs, targets = tasks_np.encode_repeat_copy(seq[:, b], repeats)
        np.testing.assert_array_equal(inputs, batch.inputs[:, b].numpy())
        np.testing.assert_array_equal(targets, batch.targets[:, b].numpy())


@pytest.mark.parametrize(("items", "wrap"), [(2, False), (6, False), (5, True)])
def test_associative_recall(items: int, wrap: bool) -> None:
    batch = tasks.associative_recall_batch(_gen(items), B, items, wrap)
    gen = _gen(items)
    data = torch.randint(0, 2, (items, 3, B, 6), generator=gen).float().numpy()  # (K, 3, B, 6)
    query = torch.randint(0, items if wrap else items - 1, (B,), generator=gen).numpy()
    for b in range(B):
        inputs, targets = tasks_np.encode_associative_recall(data[:, :, b], int(query[b]))
        np.testing.assert_array_equal(inputs, batch.inputs[:, b].numpy())
        np.testing.assert_array_equal(targets, batch.targets[:, b].numpy())


def test_priority_sort() -> None:
    batch = tasks.priority_sort_batch(_gen(3), B)
    gen = _gen(3)
    seq = torch.randint(0, 2, (20, B, 8), generator=gen).float().numpy()
    priority = (torch.rand(20, B, generator=gen) * 2.0 - 1.0).numpy()
    for b in range(B):
        inputs, targets = tasks_np.encode_priority_sort(seq[:, b], priority[:, b])
        np.testing.assert_array_equal(inputs, batch.inputs[:, b].numpy())
        np.testing.assert_array_equal(targets, batch.targets[:, b].numpy())


@pytest.mark.parametrize("task", sorted(tasks_np.TASKS))
def test_samplers_match_the_task_sizes(task: str) -> None:
    spec = tasks.get_task(task)
    example = tasks_np.TASKS[task](np.random.default_rng(0))
    assert example.inputs.dtype == np.float32 and example.inputs.shape[1] == spec.input_size
    assert example.targets.shape[1] == spec.output_size
    assert example.targets.shape[0] <= example.inputs.shape[0]
