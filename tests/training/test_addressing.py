"""Addressing (ntm_serve/training/addressing.py) against hand-computed cases, an independent numpy reference
for the circular shift, property tests, and finite gradients at the extremes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ntm_serve.training import addressing as A


def t(values, dtype=torch.float32) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype)


def one_hot(n: int, i: int) -> torch.Tensor:
    w = torch.zeros(n)
    w[i] = 1.0
    return w


def unbatched(fn, *args):
    """Call a (B, H, ...) function on single vectors: adds and strips the batch and head dims."""
    return fn(*args)[0, 0]


# ---------------------------------------------------------------- content addressing


def test_content_hand_computed() -> None:
    memory = t([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])  # (1, 3, 2)
    key = t([[[2.0, 0.0]]])  # (1, 1, 2): same direction as row 0
    beta = t([[1.5]])
    # cosines: row 0: 2 / (2 * 1) = 1; row 1: 0; row 2: 2 / (2 * sqrt 2) = 1/sqrt 2 (delta = 1e-8 is negligible)
    logits = 1.5 * np.array([1.0, 0.0, 1.0 / math.sqrt(2.0)])
    expected = np.exp(logits) / np.exp(logits).sum()
    np.testing.assert_allclose(A.content_weighting(memory, key, beta)[0, 0].numpy(), expected, rtol=1e-6)


def test_content_beta_zero_is_uniform() -> None:
    gen = torch.Generator().manual_seed(0)
    memory, key = torch.randn(3, 7, 5, generator=gen), torch.randn(3, 2, 5, generator=gen)
    w = A.content_weighting(memory, key, torch.zeros(3, 2))
    torch.testing.assert_close(w, torch.full((3, 2, 7), 1 / 7))


def test_content_large_beta_picks_matching_row() -> None:
    gen = torch.Generator().manual_seed(1)
    memory = torch.randn(4, 16, 6, generator=gen)  # (B, N, M)
    rows = torch.tensor([3, 0, 15, 9])
    key = (memory[torch.arange(4), rows] * 2.5).unsqueeze(1)  # (B, 1, M): a scaled copy of one row
    w = A.content_weighting(memory, key, torch.full((4, 1), 200.0))
    assert torch.equal(w.argmax(-1).squeeze(1), rows)
    assert bool((w.amax(-1) > 0.999).all())


def test_content_cosine_delta() -> None:
    """delta = 1e-8 is added to |k||m|: for parallel vectors with |k||m| = 1e-8 the similarity is exactly 1/2."""
    memory = t([[[1e-4, 0.0], [0.0, 0.0]]])  # row 0: norm 1e-4, row 1: zero
    key = t([[[1e-4, 0.0]]])  # |k| |row 0| = 1e-8 = delta
    w = A.content_weighting(memory, key, t([[1.0]]))[0, 0]
    expected = np.exp([0.5, 0.0]) / np.exp([0.5, 0.0]).sum()
    np.testing.assert_allclose(w.numpy(), expected, rtol=1e-5)
    assert A.COSINE_EPS == 1e-8


@pytest.mark.parametrize("beta", [0.0, 1.0, 1e6, 1e30])
def test_content_zero_memory_or_zero_key_is_uniform(beta: float) -> None:
    """Cosine with a zero vector is 0/delta = 0: uniform, finite, whatever beta."""
    zero_memory = A.content_weighting(torch.zeros(2, 5, 3), torch.randn(2, 1, 3), torch.full((2, 1), beta))
    zero_key = A.content_weighting(torch.randn(2, 5, 3), torch.zeros(2, 1, 3), torch.full((2, 1), beta))
    for w in (zero_memory, zero_key):
        torch.testing.assert_close(w, torch.full((2, 1, 5), 0.2))


# ---------------------------------------------------------------- interpolation


def test_interpolate_gate_zero_keeps_previous_and_gate_one_takes_content() -> None:
    content, previous = t([[[0.7, 0.2, 0.1]]]), t([[[0.1, 0.1, 0.8]]])
    assert torch.equal(A.interpolate(content, previous, t([[0.0]])), previous)
    assert torch.equal(A.interpolate(content, previous, t([[1.0]])), content)
    np.testing.assert_allclose(
        A.interpolate(content, previous, t([[0.25]]))[0, 0].numpy(), [0.25, 0.125, 0.625], rtol=1e-6
    )


def test_interpolate_per_head_gates() -> None:
    content = t([[[1.0, 0.0], [1.0, 0.0]]])  # (1, 2, 2): two heads
    previous = t([[[0.0, 1.0], [0.0, 1.0]]])
    w = A.interpolate(content, previous, t([[0.0, 1.0]]))
    assert torch.equal(w, t([[[0.0, 1.0], [1.0, 0.0]]]))


# ---------------------------------------------------------------- shift


def test_shift_index_table() -> None:
    # idx[i, j] = (i - (j - c)) mod N, c = 1: out[i] = w[i+1] s[0] + w[i] s[1] + w[i-1] s[2]
    expected = [[1, 0, 4], [2, 1, 0], [3, 2, 1], [4, 3, 2], [0, 4, 3]]
    assert A.shift_index(5, 3).tolist() == expected


def shift1(w: list[float], s: list[float]) -> np.ndarray:
    return unbatched(A.shift, t([[w]]), t([[s]])).numpy()


@pytest.mark.parametrize("n", [5, 8])
def test_shift_wraps_at_both_ends_s3(n: int) -> None:
    # s = [backward 1, stay, forward 1]
    np.testing.assert_array_equal(shift1(one_hot(n, 0).tolist(), [1, 0, 0]), one_hot(n, n - 1).numpy())
    np.testing.assert_array_equal(shift1(one_hot(n, n - 1).tolist(), [0, 0, 1]), one_hot(n, 0).numpy())
    np.testing.assert_array_equal(shift1(one_hot(n, 0).tolist(), [0, 0, 1]), one_hot(n, 1).numpy())
    np.testing.assert_array_equal(shift1(one_hot(n, n - 1).tolist(), [1, 0, 0]), one_hot(n, n - 2).numpy())
    np.testing.assert_array_equal(shift1(one_hot(n, 3).tolist(), [0, 1, 0]), one_hot(n, 3).numpy())


@pytest.mark.parametrize("n", [5, 9])
def test_shift_wraps_at_both_ends_s5(n: int) -> None:
    # s = [back 2, back 1, stay, forward 1, forward 2]
    cases = [(0, 0, n - 2), (1, 0, n - 1), (0, 1, n - 1), (n - 1, 4, 1), (n - 2, 4, 0), (n - 1, 3, 0), (2, 2, 2)]
    for start, j, end in cases:
        s = [0.0] * 5
        s[j] = 1.0
        np.testing.assert_array_equal(shift1(one_hot(n, start).tolist(), s), one_hot(n, end).numpy(), str(cases))


def test_shift_spreads_hand_computed() -> None:
    # one-hot at 0, s = (0.2 back, 0.5 stay, 0.3 forward): 0.5 stays at 0, 0.3 to 1, 0.2 wraps to N-1
    np.testing.assert_allclose(shift1([1, 0, 0, 0, 0], [0.2, 0.5, 0.3]), [0.5, 0.3, 0, 0, 0.2], rtol=1e-6)


def reference_shift(w: np.ndarray, s: np.ndarray) -> np.ndarray:
    """The issue's words, literally: pad s to N with its centre moved to index 0, then circular convolution."""
    n, size = len(w), len(s)
    padded = np.zeros(n)
    for j in range(size):
        padded[(j - size // 2) % n] += s[j]
    return np.array([sum(w[k] * padded[(i - k) % n] for k in range(n)) for i in range(n)])


@pytest.mark.parametrize(("n", "size"), [(1, 3), (2, 3), (3, 3), (3, 5), (5, 5), (6, 3), (10, 5), (12, 7), (700, 3)])
def test_shift_is_the_index_table_gather_bit_for_bit(n: int, size: int) -> None:
    """The rolled copies are the elements `shift_index` names, in its order, so the weighted sum is the same bits
    as gathering by the table (how the graphs computed it before N became a dimension). From N = S // 2 on."""
    rng = np.random.default_rng(n + size)
    w = t(rng.dirichlet(np.ones(n), size=(2, 3)))  # (B, H, N)
    s = t(rng.dirichlet(np.ones(size), size=(2, 3)))  # (B, H, S)
    index = A.shift_index(n, size)
    assert torch.equal(A.shift_windows(w, size), w[..., index])
    assert torch.equal(A.shift(w, s), (w[..., index] @ s.unsqueeze(-1)).squeeze(-1))


@pytest.mark.parametrize(("n", "size"), [(3, 3), (5, 5), (6, 3), (10, 5), (12, 7)])
def test_shift_matches_padded_circular_convolution(n: int, size: int) -> None:
    rng = np.random.default_rng(n * size)
    w = rng.dirichlet(np.ones(n), size=(2, 3))  # (B, H, N)
    s = rng.dirichlet(np.ones(size), size=(2, 3))  # (B, H, S)
    got = A.shift(t(w), t(s)).numpy()
    for b in range(2):
        for h in range(3):
            np.testing.assert_allclose(got[b, h], reference_shift(w[b, h], s[b, h]), rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- sharpen


def test_sharpen_gamma_one_changes_nothing() -> None:
    w = torch.softmax(torch.randn(3, 2, 11, generator=torch.Generator().manual_seed(2)), -1)
    torch.testing.assert_close(A.sharpen(w, torch.ones(3, 2)), w, rtol=1e-6, atol=1e-7)


def test_sharpen_hand_computed() -> None:
    # [0.5, 0.25, 0.25]^2 = [0.25, 0.0625, 0.0625], sum 0.375 -> [2/3, 1/6, 1/6]
    w = unbatched(A.sharpen, t([[[0.5, 0.25, 0.25]]]), t([[2.0]]))
    np.testing.assert_allclose(w.numpy(), [2 / 3, 1 / 6, 1 / 6], rtol=1e-6)


def assert_one_hot(w: torch.Tensor, i: int) -> None:
    """One-hot up to the sharpening floor (zeros are clamped to 1e-30 before the power, see docs/training.md)."""
    torch.testing.assert_close(w, one_hot(len(w), i), rtol=0, atol=1e-20)


@pytest.mark.parametrize("gamma", [1.0, 2.0, 50.0, 1e6, 1e30])
def test_sharpen_one_hot_stays_one_hot_and_uniform_stays_uniform(gamma: float) -> None:
    assert_one_hot(unbatched(A.sharpen, one_hot(6, 4)[None, None], t([[gamma]])), 4)
    uniform = torch.full((6,), 1 / 6)
    torch.testing.assert_close(unbatched(A.sharpen, uniform[None, None], t([[gamma]])), uniform)


def test_sharpen_huge_gamma_does_not_underflow() -> None:
    """Without dividing by the row max first, 0.4^1e4 would underflow every entry to 0."""
    w = unbatched(A.sharpen, t([[[0.4, 0.35, 0.25]]]), t([[1e4]]))
    np.testing.assert_array_equal(w.numpy(), [1.0, 0.0, 0.0])
    ties = unbatched(A.sharpen, t([[[0.4, 0.4, 0.2]]]), t([[1e4]]))
    np.testing.assert_allclose(ties.numpy(), [0.5, 0.5, 0.0])


# ---------------------------------------------------------------- the whole pipeline


@pytest.mark.parametrize("gamma", [1.0, 3.0, 1e5])
def test_address_one_hot_in_one_hot_out(gamma: float) -> None:
    """gate 0 keeps the previous one-hot; a one-hot shift moves it by one row (wrapping); sharpening keeps it."""
    n, size = 8, 3
    memory, key = torch.randn(1, n, 4), torch.randn(1, 1, 4)
    for start, j, end in [(0, 2, 1), (7, 2, 0), (0, 0, 7), (5, 1, 5)]:
        shift = torch.zeros(1, 1, size)
        shift[..., j] = 1.0
        w = A.address(memory, one_hot(n, start)[None, None], key, t([[5.0]]), t([[0.0]]), shift, t([[gamma]]))
        assert_one_hot(w[0, 0], end)


def test_address_is_the_composition() -> None:
    gen = torch.Generator().manual_seed(3)
    b, h, n, m, s = 2, 3, 10, 4, 5
    memory, previous = torch.randn(b, n, m, generator=gen), torch.softmax(torch.randn(b, h, n, generator=gen), -1)
    key, shift = torch.randn(b, h, m, generator=gen), torch.softmax(torch.randn(b, h, s, generator=gen), -1)
    beta, gate, gamma = torch.rand(b, h, generator=gen) * 5, torch.rand(b, h, generator=gen), 1 + torch.rand(b, h)
    expected = A.sharpen(A.shift(A.interpolate(A.content_weighting(memory, key, beta), previous, gate), shift), gamma)
    assert torch.equal(A.address(memory, previous, key, beta, gate, shift, gamma), expected)


# ---------------------------------------------------------------- properties

floats = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, width=32)


@st.composite
def addressing_inputs(draw):
    b, h = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    n = draw(st.integers(3, 12))
    m = draw(st.integers(1, 5))
    s = draw(st.sampled_from([k for k in (3, 5, 7) if k <= n]))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    scale = draw(st.sampled_from([0.0, 1e-6, 1.0, 1e3]))  # 0: all-zero memory
    memory = torch.randn(b, n, m, generator=gen) * scale
    key = torch.randn(b, h, m, generator=gen) * draw(st.sampled_from([0.0, 1.0, 1e3]))
    previous = torch.softmax(torch.randn(b, h, n, generator=gen) * draw(st.sampled_from([1.0, 100.0])), -1)
    beta = torch.full((b, h), draw(st.sampled_from([0.0, 0.5, 10.0, 1e4])))
    gate = torch.full((b, h), draw(st.floats(0.0, 1.0)))
    shift = torch.softmax(torch.randn(b, h, s, generator=gen) * draw(st.sampled_from([1.0, 100.0])), -1)
    gamma = torch.full((b, h), draw(st.sampled_from([1.0, 1.5, 20.0, 1e4])))
    return memory, previous, key, beta, gate, shift, gamma


def assert_distribution(w: torch.Tensor) -> None:
    assert bool(torch.isfinite(w).all())
    assert bool((w >= 0).all())
    torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]), rtol=0, atol=1e-5)


@settings(max_examples=60, deadline=None)
@given(addressing_inputs())
def test_every_stage_gives_a_distribution(inputs) -> None:
    memory, previous, key, beta, gate, shift, gamma = inputs
    content = A.content_weighting(memory, key, beta)
    gated = A.interpolate(content, previous, gate)
    shifted = A.shift(gated, shift)
    for w in (content, gated, shifted, A.sharpen(shifted, gamma)):
        assert_distribution(w)


@settings(max_examples=40, deadline=None)
@given(st.lists(floats.map(abs), min_size=2, max_size=10), st.floats(1.0, 1e4))
def test_sharpen_keeps_order_and_is_a_distribution(raw: list[float], gamma: float) -> None:
    w = torch.tensor(raw) + 1e-3
    w = (w / w.sum())[None, None]
    out = A.sharpen(w, t([[gamma]]))
    assert_distribution(out)
    assert int(out.argmax()) in set(torch.nonzero(w[0, 0] == w.max()).flatten().tolist())


# ---------------------------------------------------------------- gradients


EXTREMES = [(0.0, 1.0), (0.0, 1e30), (1e30, 1.0), (1e6, 1e6), (1e12, 1e12)]


@pytest.mark.parametrize(("beta", "gamma"), EXTREMES)
@pytest.mark.parametrize("zero", [True, False])
def test_gradients_finite_at_extremes(beta: float, gamma: float, zero: bool) -> None:
    """All-zero memory and key, beta 0 or huge, gamma 1 or huge, one-hot weightings and shifts, gate 0 or 1.

    Left out: zero memory *and* beta * gamma > ~1e30, where the true gradient, about beta * gamma / delta
    with delta = 1e-8, is itself beyond float32 (see the next test and docs/training.md, Numerics).
    """
    b, h, n, m = 2, 2, 6, 3
    memory = torch.zeros(b, n, m) if zero else torch.randn(b, n, m)
    key = torch.zeros(b, h, m) if zero else torch.randn(b, h, m)
    previous = torch.zeros(b, h, n)
    previous[..., 0] = 1.0  # one-hot
    shift_logits = torch.tensor([-1e4, 1e4, -1e4]).expand(b, h, 3).clone()  # softmax -> one-hot
    gate_logits = torch.tensor([[-1e4, 1e4]]).expand(b, h).clone()  # sigmoid -> exactly 0 and 1
    leaves = [x.requires_grad_(True) for x in (memory, key, previous, shift_logits, gate_logits)]
    beta_t = torch.full((b, h), beta, requires_grad=True)
    gamma_t = torch.full((b, h), gamma, requires_grad=True)
    w = A.address(memory, previous, key, beta_t, torch.sigmoid(gate_logits), torch.softmax(shift_logits, -1),
                  gamma_t)
    assert_distribution(w.detach())
    (w * torch.randn_like(w)).sum().backward()
    for x in [*leaves, beta_t, gamma_t]:
        assert x.grad is not None and bool(torch.isfinite(x.grad).all())


def test_gradcheck_each_stage() -> None:
    """Analytic gradients agree with finite differences (float64, moderate values)."""
    gen = torch.Generator().manual_seed(4)
    b, h, n, m, s = 1, 2, 5, 3, 3
    d = torch.float64

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=d).requires_grad_(True)

    memory, key, beta = rand(b, n, m), rand(b, h, m), (torch.rand(b, h, dtype=d) * 3).requires_grad_(True)
    weights = torch.softmax(torch.randn(b, h, n, generator=gen, dtype=d), -1).requires_grad_(True)
    shift = torch.softmax(torch.randn(b, h, s, generator=gen, dtype=d), -1).requires_grad_(True)
    gamma = (1 + torch.rand(b, h, dtype=d)).requires_grad_(True)
    gate = torch.rand(b, h, dtype=d).requires_grad_(True)
    assert torch.autograd.gradcheck(A.content_weighting, (memory, key, beta))
    assert torch.autograd.gradcheck(A.interpolate, (weights, weights.detach().flip(-1).requires_grad_(), gate))
    assert torch.autograd.gradcheck(A.shift, (weights, shift))
    assert torch.autograd.gradcheck(A.sharpen, (weights, gamma))


def test_beyond_the_gradient_limit_the_forward_pass_stays_finite() -> None:
    """beta = gamma = 1e30: the weighting is still a distribution on zero memory, and gradients stay
    finite on non-zero memory. (A model cannot reach this: beta and gamma are softplus of a linear map of
    a controller output in (-1, 1).)"""
    previous = torch.softmax(torch.randn(2, 1, 6), -1)
    shift = torch.softmax(torch.randn(2, 1, 3), -1)
    huge = torch.full((2, 1), 1e30)
    w = A.address(torch.zeros(2, 6, 3), previous, torch.zeros(2, 1, 3), huge, torch.full((2, 1), 0.5), shift, huge)
    assert_distribution(w)
    memory = torch.randn(2, 6, 3, requires_grad=True)
    key = torch.randn(2, 1, 3, requires_grad=True)
    w = A.address(memory, previous, key, huge, torch.full((2, 1), 0.5), shift, huge)
    (w * torch.randn_like(w)).sum().backward()
    assert bool(torch.isfinite(memory.grad).all()) and bool(torch.isfinite(key.grad).all())
