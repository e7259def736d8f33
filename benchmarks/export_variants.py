"""Cheaper expressions of the same NTM math, for the export-shape experiment (benchmarks/shapes.py).

Each function computes exactly what its namesake in training/ computes (same formula, same clamps),
written so the traced ONNX graph has fewer or cheaper onnxruntime kernels. They are proposals: the
benchmark swaps them in while exporting, measures, and checks the graphs agree with the shipped
expression. Adopting one means replacing the body in training/ (training and export must trace the
same function).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ntm_serve.training import addressing


def write_per_head(memory: Tensor, weights: Tensor, erase: Tensor, add: Tensor) -> Tensor:
    """ntm_serve.training.memory.write with the write heads unrolled (W is a fixed size of the model).

    The shipped form builds (B, W, N, M) and reduces it with ReduceProd over W (the exporter now rewrites
    that to Squeeze when W = 1) and forms the add term as a K = 1 MatMul; here each head is two broadcast
    products.
    memory (B, N, M), weights (B, W, N), erase (B, W, M), add (B, W, M) -> (B, N, M)
    """
    keep: Tensor | None = None
    added: Tensor | None = None
    for h in range(weights.shape[1]):
        w = weights[:, h].unsqueeze(-1)  # (B, N, 1)
        keep_h = 1.0 - w * erase[:, h].unsqueeze(-2)  # (B, N, M)
        add_h = w * add[:, h].unsqueeze(-2)  # (B, N, M)
        keep = keep_h if keep is None else keep * keep_h
        added = add_h if added is None else added + add_h
    assert keep is not None and added is not None
    return memory * keep + added


def shift_roll(weights: Tensor, shift: Tensor, index: Tensor) -> Tensor:
    """ntm_serve.training.addressing.shift as the sum of S rotated copies: out = sum_j s_j roll(w, j - S//2).

    The same circular convolution as the gather form (idx[i, j] = (i - (j - c)) mod N means
    out[i] = sum_j w[i - (j - c)] s_j, i.e. w rolled by j - c); each roll exports as Slice + Concat on a
    (B, H, N) tensor instead of Transpose + GatherND + Transpose and a (B, H, N, S) product.
    weights (B, H, N), shift (B, H, S), index (N, S) (unused: the rolls encode it) -> (B, H, N)
    """
    size = shift.shape[-1]
    centre = size // 2
    out: Tensor | None = None
    for j in range(size):
        term = torch.roll(weights, j - centre, dims=-1) * shift[..., j : j + 1]  # (B, H, N)
        out = term if out is None else out + term
    assert out is not None
    return out


def sharpen_exp_log(weights: Tensor, gamma: Tensor) -> Tensor:
    """ntm_serve.training.addressing.sharpen with w^γ computed as exp(γ log w) (w is clamped to >= 1e-30 first).

    onnxruntime's Pow calls powf per element; Log, Mul and Exp are vectorised kernels.
    weights (B, H, N), gamma (B, H) -> (B, H, N)
    """
    peak = weights.amax(dim=-1, keepdim=True)  # (B, H, 1)
    scaled = torch.clamp(weights / (peak + addressing.SHARPEN_FLOOR), min=addressing.SHARPEN_FLOOR)
    powered = torch.exp(gamma.unsqueeze(-1) * torch.log(scaled))  # (B, H, N)
    return powered / (powered.sum(dim=-1, keepdim=True) + addressing.SHARPEN_FLOOR)


def content_sum_squares(memory: Tensor, key: Tensor, beta: Tensor) -> Tensor:
    """ntm_serve.training.addressing.content_weighting with norms as sqrt(sum(x * x)) instead of ReduceL2.

    memory (B, N, M), key (B, H, M), beta (B, H) -> (B, H, N)
    """
    dot = torch.matmul(key, memory.transpose(1, 2))  # (B, H, N)
    key_norm = torch.sqrt((key * key).sum(dim=-1, keepdim=True))  # (B, H, 1)
    row_norm = torch.sqrt((memory * memory).sum(dim=-1)).unsqueeze(1)  # (B, 1, N)
    similarity = dot / (key_norm * row_norm + addressing.COSINE_EPS)  # (B, H, N)
    return torch.softmax(beta.unsqueeze(-1) * similarity, dim=-1)


WRITE = "ntm_serve.training.memory.write"
SHIFT = "ntm_serve.training.addressing.shift"
SHARPEN = "ntm_serve.training.addressing.sharpen"
CONTENT = "ntm_serve.training.addressing.content_weighting"

# name -> {dotted function path in training/: replacement}
VARIANTS: dict[str, dict[str, object]] = {
    "shipped (training/ as is)": {},
    "write: heads unrolled": {WRITE: write_per_head},
    "shift: sum of rolls": {SHIFT: shift_roll},
    "sharpen: exp(γ log w)": {SHARPEN: sharpen_exp_log},
    "content: sqrt(sum x²) norms": {CONTENT: content_sum_squares},
    "shift (rolls) + sharpen + content": {SHIFT: shift_roll, SHARPEN: sharpen_exp_log, CONTENT: content_sum_squares},
    "shift (shipped) + sharpen + content": {SHARPEN: sharpen_exp_log, CONTENT: content_sum_squares},
}
QUICK_VARIANTS = ("shipped (training/ as is)", "shift (rolls) + sharpen + content")
