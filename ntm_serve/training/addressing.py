"""NTM addressing (Graves et al. 2014, section 3.3, equations (5)-(9)), one pure function per stage.

Every function is vectorised over the batch and over heads, has no state, and uses only ops
that export to ONNX with a dynamic batch size and a dynamic memory size N (no grouped convolution, no index
table of N rows, no Python loops over data-dependent sizes). Heads are a dimension: weightings are ``(B, H, N)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

COSINE_EPS = 1e-8  # delta added to the cosine-similarity denominator
SHARPEN_FLOOR = 1e-30  # keeps log/pow finite at w == 0 in the backward pass


def content_weighting(memory: Tensor, key: Tensor, beta: Tensor, skip: Tensor | None = None) -> Tensor:
    """Softmax over rows of beta * cosine(key, row) (eq. 5, the cosine K[u, v] of eq. 6). beta = 0 gives the
    uniform weighting. Rows where `skip` is 1 get no weight (at least one row must be left).

    memory (B, N, M), key (B, H, M), beta (B, H), skip (B, N) 0/1 or None -> (B, H, N)
    """
    dot = torch.matmul(key, memory.transpose(1, 2))  # (B, H, N)
    key_norm = torch.linalg.vector_norm(key, dim=-1, keepdim=True)  # (B, H, 1)
    row_norm = torch.linalg.vector_norm(memory, dim=-1).unsqueeze(1)  # (B, 1, N)
    similarity = dot / (key_norm * row_norm + COSINE_EPS)  # (B, H, N)
    scores = beta.unsqueeze(-1) * similarity  # (B, H, N)
    if skip is not None:
        scores = scores.masked_fill(skip.unsqueeze(1) > 0, float("-inf"))
    return torch.softmax(scores, dim=-1)


def interpolate(content: Tensor, previous: Tensor, gate: Tensor) -> Tensor:
    """gate * content + (1 - gate) * previous (eq. 7). gate = 0 keeps the previous weighting.

    content (B, H, N), previous (B, H, N), gate (B, H) -> (B, H, N)
    """
    gate = gate.unsqueeze(-1)  # (B, H, 1)
    return gate * content + (1.0 - gate) * previous


def shift_index(rows: int, shift_range: int) -> Tensor:
    """The definition of the circular convolution as an index table: out[i] = sum_j w[idx[i, j]] * s[j].

    s is zero-padded to length N with its centre c = S // 2 moved to index 0, so s[j] moves
    weight by j - c rows (backward shifts wrap to the end): idx[i, j] = (i - (j - c)) mod N.
    `shift` computes exactly `w[..., idx] @ s` without the table (the tests hold it to this). -> (N, S) int64
    """
    centre = shift_range // 2
    i = torch.arange(rows).unsqueeze(1)  # (N, 1)
    j = torch.arange(shift_range).unsqueeze(0)  # (1, S)
    return torch.remainder(i - (j - centre), rows)  # (N, S)


def shift_windows(weights: Tensor, shift_range: int) -> Tensor:
    """The S rolled copies of each weighting side by side: windows[..., i, j] = w[..., (i - (j - c)) mod N].

    The weighting is padded circularly by c = S // 2 rows at each end, and window j is the slice that starts at
    2c - j: slices with constant bounds (the end counted from the end), so N stays a dimension of the exported graph
    (any N >= c), not a constant. Pure data movement: the same elements as gathering with `shift_index`.
    weights (B, H, N) -> (B, H, N, S)
    """
    c = shift_range // 2
    padded = torch.cat([weights[..., -c:], weights, weights[..., :c]], dim=-1).unsqueeze(-1)  # (B, H, N + 2c, 1)
    return torch.cat([padded[..., 2 * c - j : (-j if j else None), :] for j in range(shift_range)], dim=-1)


def shift(weights: Tensor, shift: Tensor) -> Tensor:
    """Circular convolution of each weighting with its shift distribution (eq. 8): rolled copies, weighted sum.

    The rolls are slices and concatenations (`shift_windows`), so the batch and the memory size N stay dynamic
    (a grouped conv1d would bake the batch in, an index table N) and the exported shift is a few copies whatever N
    is; the weighted sum is one batched MatMul, not Mul + ReduceSum.
    weights (B, H, N), shift (B, H, S) -> (B, H, N)
    """
    windows = shift_windows(weights, shift.shape[-1])  # (B, H, N, S)
    return (windows @ shift.unsqueeze(-1)).squeeze(-1)  # (B, H, N)


def sharpen(weights: Tensor, gamma: Tensor) -> Tensor:
    """w^gamma renormalised (eq. 9). gamma = 1 changes nothing; one-hot stays one-hot.

    Dividing by the row maximum first is mathematically a no-op but keeps the largest term at 1,
    so huge gamma cannot underflow every entry to zero.
    weights (B, H, N), gamma (B, H) -> (B, H, N)
    """
    peak = weights.amax(dim=-1, keepdim=True)  # (B, H, 1)
    scaled = torch.clamp(weights / (peak + SHARPEN_FLOOR), min=SHARPEN_FLOOR)  # (B, H, N), in (0, 1]
    powered = scaled ** gamma.unsqueeze(-1)  # (B, H, N); Pow, not exp(gamma log w): onnxruntime's Log drifts more
    return powered / (powered.sum(dim=-1, keepdim=True) + SHARPEN_FLOOR)


def address(
    memory: Tensor,
    previous: Tensor,
    key: Tensor,
    beta: Tensor,
    gate: Tensor,
    shift_weights: Tensor,
    gamma: Tensor,
) -> Tensor:
    """The whole addressing pipeline (Figure 2 of the paper): content (5, 6) -> interpolate (7) -> shift (8)
    -> sharpen (9).

    memory (B, N, M), previous (B, H, N), key (B, H, M), beta/gate/gamma (B, H),
    shift_weights (B, H, S) -> (B, H, N)
    """
    content = content_weighting(memory, key, beta)
    gated = interpolate(content, previous, gate)
    shifted = shift(gated, shift_weights)
    return sharpen(shifted, gamma)
