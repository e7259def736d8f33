"""Head parameter projection: controller output -> (key, beta, gate, shift, gamma[, erase, add]) per head.

All heads of one kind come from one linear layer and are split by slicing, so there is no
Python loop over heads and the exported graph stays small.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class HeadParams(NamedTuple):
    key: Tensor  # (B, H, M)
    beta: Tensor  # (B, H)   key strength, softplus -> [0, inf)
    gate: Tensor  # (B, H)   interpolation gate, sigmoid -> (0, 1)
    shift: Tensor  # (B, H, S) shift distribution, softmax
    gamma: Tensor  # (B, H)   sharpening, 1 + softplus -> [1, inf)
    erase: Tensor | None  # (B, H, M) sigmoid, write heads only
    add: Tensor | None  # (B, H, M) write heads only


GATE_FLOOR = -80.0  # exp(80) is finite in float32, so the gate's gradient stays finite below it


def exact_sigmoid(x: Tensor) -> Tensor:
    """1 / (1 + exp(-x)), accurate relative to the value far into the negative range, also after export.

    onnxruntime's CPU Sigmoid is accurate in absolute terms only (17 % off at -15, 0 from -18), while its Exp keeps
    relative accuracy. An LRU write gate far below 0 scales the small writes every row receives, and the cosine
    of a near-empty row turns their rounding into read-weight differences of 1e-4 (docs/training.md).
    """
    return 1.0 / (1.0 + torch.exp(-torch.clamp(x, min=GATE_FLOOR)))


class HeadProjection(nn.Module):
    """Linear map from the controller output to the parameters of `heads` heads."""

    def __init__(self, hidden_size: int, heads: int, width: int, shift_range: int, write: bool,
                 input_size: int = 0, exact_gate: bool = False) -> None:
        super().__init__()
        self.heads, self.width, self.shift_range, self.write = heads, width, shift_range, write
        self.exact_gate = exact_gate  # the gate through exact_sigmoid (LRU write heads)
        self.per_head = width + 3 + shift_range + (2 * width if write else 0)
        self.linear = nn.Linear(hidden_size, heads * self.per_head)
        # input_size > 0: a skip from the step's raw input, zero at init so a warm start begins as its source model.
        self.skip = nn.Linear(input_size, heads * self.per_head, bias=False) if input_size else None
        if self.skip is not None:
            nn.init.zeros_(self.skip.weight)

    def forward(self, h: Tensor, x: Tensor | None = None) -> HeadParams:
        """h (B, hidden), x (B, I) the raw input (used with a skip only) -> HeadParams with (B, heads, ...) tensors."""
        m, s = self.width, self.shift_range
        flat = self.linear(h) if self.skip is None or x is None else self.linear(h) + self.skip(x)  # (B, H*P)
        raw = flat.reshape(h.shape[0], self.heads, self.per_head)  # (B, H, P)
        key = raw[..., :m]  # (B, H, M)
        beta = F.softplus(raw[..., m])  # (B, H)
        gate = exact_sigmoid(raw[..., m + 1]) if self.exact_gate else torch.sigmoid(raw[..., m + 1])  # (B, H)
        gamma = 1.0 + F.softplus(raw[..., m + 2])  # (B, H)
        shift = torch.softmax(raw[..., m + 3 : m + 3 + s], dim=-1)  # (B, H, S)
        if not self.write:
            return HeadParams(key, beta, gate, shift, gamma, None, None)
        erase = torch.sigmoid(raw[..., m + 3 + s : 2 * m + 3 + s])  # (B, H, M)
        add = raw[..., 2 * m + 3 + s :]  # (B, H, M)
        return HeadParams(key, beta, gate, shift, gamma, erase, add)
