"""Least-recently-used access (Santoro et al. 2016, "One-shot learning with memory-augmented neural networks").

A head option of the NTM (`NTMConfig.heads = "lru"`), pure functions like `ntm_serve.training.addressing`. Reads are
content-based only. The write goes, by a learned gate, either to the rows read at the previous step (to
update what was just recalled) or to the least-used row, which is erased first (to store something new):

    w^w_t = sigmoid(alpha) * w^r_{t-1} + (1 - sigmoid(alpha)) * w^lu_{t-1}
    w^u_t = gamma * w^u_{t-1} + w^r_t + w^w_t            (usage, decay gamma)
    w^lu_t = 1 on the n rows of least usage (n = `lru_rows`, default the read heads), 0 elsewhere

With `write_follows`, write heads 2.. instead write where head 1 wrote at the previous step (`follow_first`):
a one-shot label arrives a step after its sample, and this puts it in the sample's row. With `read_skips_new`, the
read heads skip the rows renewed this step (`addressing.content_weighting`'s `skip`): the sample just written is
the best match for a key made from it, and holds no label yet.

Each row's usage travels with the row: it is one extra memory column (the session state keeps its six
tensors; the `memory` tensor is (N, M + 1) for an LRU model). Ties go to the first row, so a fresh memory
fills from row 0.
"""

from __future__ import annotations

import torch
from torch import Tensor


def least_used(usage: Tensor, count: int) -> Tensor:
    """1 on the `count` rows of least usage, 0 elsewhere; ties go to the first row. usage (B, N) -> (B, N)

    `count` arg-mins (a model constant, a few), not TopK: ArgMin breaks ties by first index in torch and in
    ONNX alike, while TopK's choice among equal values differs between implementations (and a fresh memory is
    all ties).
    """
    index = torch.arange(usage.shape[-1], device=usage.device)  # (N,)
    least = torch.zeros_like(usage)  # (B, N)
    for _ in range(count):
        masked = torch.where(least > 0, torch.full_like(usage, float("inf")), usage)  # (B, N)
        least = least + (index == masked.argmin(dim=-1, keepdim=True)).to(usage.dtype)
    return least

def write_weights(previous_read: Tensor, least: Tensor, gate: Tensor) -> Tensor:
    """The write weighting of every write head: previous read rows (mean over read heads) or the least-used rows.

    previous_read (B, R, N), least (B, N) 0/1, gate (B, W) -> (B, W, N)
    """
    last_read = previous_read.mean(dim=1, keepdim=True)  # (B, 1, N)
    least = least / least.sum(dim=-1, keepdim=True)  # (B, N): one unit of weight over the n least-used rows
    g = gate.unsqueeze(-1)  # (B, W, 1)
    return g * last_read + (1.0 - g) * least.unsqueeze(1)  # (B, W, N)


def follow_first(write: Tensor, previous_write: Tensor) -> Tensor:
    """Write heads 2.. take head 1's weights of the previous step (`write_follows`): where the last sample went.

    write (B, W, N) this step's weights, previous_write (B, W, N) the last step's -> (B, W, N)
    """
    return torch.cat([write[:, :1], previous_write[:, :1].expand(-1, write.shape[1] - 1, -1)], dim=1)


def erase_least_used(memory: Tensor, least: Tensor) -> Tensor:
    """Zero the least-used rows before writing. memory (B, N, M), least (B, N) -> (B, N, M)"""
    return memory * (1.0 - least).unsqueeze(-1)


def usage(previous: Tensor, read: Tensor, write: Tensor, decay: float) -> Tensor:
    """Decayed usage plus this step's read and write weights. previous (B, N), read (B, R, N), write (B, W, N)"""
    return decay * previous + read.sum(dim=1) + write.sum(dim=1)  # (B, N)
