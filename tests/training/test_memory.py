"""Memory read and erase/add write (ntm_serve/training/memory.py) against explicit numpy loops."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from ntm_serve.training.memory import read, write


def rand(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def distributions(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.dirichlet(np.ones(shape[-1]), size=shape[:-1]).astype(np.float32)


def numpy_read(memory: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """r[b, h, m] = sum_n w[b, h, n] M[b, n, m]"""
    b_size, heads, rows = weights.shape
    out = np.zeros((b_size, heads, memory.shape[2]))
    for b, h, n in itertools.product(range(b_size), range(heads), range(rows)):
        out[b, h] += weights[b, h, n] * memory[b, n]
    return out


def numpy_write(memory: np.ndarray, weights: np.ndarray, erase: np.ndarray, add: np.ndarray) -> np.ndarray:
    """M'[b, n, m] = M[b, n, m] * prod_h (1 - w[b,h,n] e[b,h,m]) + sum_h w[b,h,n] a[b,h,m]"""
    b_size, heads, rows = weights.shape
    out = np.array(memory, dtype=np.float64)
    for b, n, m in itertools.product(range(b_size), range(rows), range(memory.shape[2])):
        keep, added = 1.0, 0.0
        for h in range(heads):
            keep *= 1.0 - weights[b, h, n] * erase[b, h, m]
            added += weights[b, h, n] * add[b, h, m]
        out[b, n, m] = memory[b, n, m] * keep + added
    return out


@pytest.mark.parametrize("heads", [1, 2, 3])
def test_read_matches_numpy(heads: int) -> None:
    rng = np.random.default_rng(heads)
    memory, weights = rand(rng, 2, 7, 4), distributions(rng, 2, heads, 7)
    got = read(torch.from_numpy(memory), torch.from_numpy(weights)).numpy()
    assert got.shape == (2, heads, 4)
    np.testing.assert_allclose(got, numpy_read(memory, weights), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("heads", [1, 2, 3])
def test_write_matches_numpy(heads: int) -> None:
    rng = np.random.default_rng(10 + heads)
    memory, weights = rand(rng, 2, 7, 4), distributions(rng, 2, heads, 7)
    erase = rng.uniform(0, 1, (2, heads, 4)).astype(np.float32)
    add = rand(rng, 2, heads, 4)
    got = write(*(torch.from_numpy(x) for x in (memory, weights, erase, add))).numpy()
    np.testing.assert_allclose(got, numpy_write(memory, weights, erase, add), rtol=1e-5, atol=1e-6)


def test_single_head_write_is_the_paper_formula() -> None:
    """M <- M o (1 - w e^T) + w a^T, written out with outer products."""
    rng = np.random.default_rng(0)
    memory, w = rand(rng, 1, 5, 3), distributions(rng, 1, 1, 5)
    e, a = rng.uniform(0, 1, (1, 1, 3)).astype(np.float32), rand(rng, 1, 1, 3)
    expected = memory[0] * (1 - np.outer(w[0, 0], e[0, 0])) + np.outer(w[0, 0], a[0, 0])
    got = write(*(torch.from_numpy(x) for x in (memory, w, e, a)))[0].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


def test_one_hot_full_erase_replaces_one_row() -> None:
    memory = torch.arange(15.0).reshape(1, 5, 3)
    weights = torch.tensor([[[0.0, 0.0, 1.0, 0.0, 0.0]]])
    add = torch.tensor([[[7.0, -8.0, 9.0]]])
    got = write(memory, weights, torch.ones(1, 1, 3), add)
    expected = memory.clone()
    expected[0, 2] = add[0, 0]
    assert torch.equal(got, expected)
    assert torch.equal(read(got, weights), add)  # and reading the same place gives it back


def test_zero_erase_and_add_leave_memory_unchanged() -> None:
    memory = torch.randn(2, 6, 4)
    weights = torch.softmax(torch.randn(2, 2, 6), -1)
    assert torch.equal(write(memory, weights, torch.zeros(2, 2, 4), torch.zeros(2, 2, 4)), memory)


def test_write_heads_commute_and_an_idle_head_changes_nothing() -> None:
    gen = torch.Generator().manual_seed(1)
    memory = torch.randn(3, 8, 5, generator=gen)
    weights = torch.softmax(torch.randn(3, 2, 8, generator=gen), -1)
    erase, add = torch.rand(3, 2, 5, generator=gen), torch.randn(3, 2, 5, generator=gen)
    both = write(memory, weights, erase, add)
    swapped = write(memory, weights.flip(1), erase.flip(1), add.flip(1))
    torch.testing.assert_close(both, swapped)
    idle = weights.clone()
    idle[:, 1] = 0.0  # second head writes nowhere: same as the first head alone
    torch.testing.assert_close(write(memory, idle, erase, add), write(memory, weights[:, :1], erase[:, :1], add[:, :1]))


def test_gradients_finite_for_extreme_writes() -> None:
    """One-hot weightings, erase exactly 0 and 1, huge adds, all-zero memory."""
    memory = torch.zeros(2, 4, 3, requires_grad=True)
    weights = torch.zeros(2, 2, 4)
    weights[:, 0, 0] = 1.0
    weights[:, 1, 3] = 1.0
    weights.requires_grad_(True)
    erase = torch.tensor([0.0, 1.0, 1.0]).expand(2, 2, 3).clone().requires_grad_(True)
    add = torch.full((2, 2, 3), 1e6, requires_grad=True)
    new = write(memory, weights, erase, add)
    out = read(new, weights)
    (out.square().sum() * 1e-12 + new.sum()).backward()
    for x in (memory, weights, erase, add):
        assert bool(torch.isfinite(x.grad).all())
