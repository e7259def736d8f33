"""Controllers: LSTM (default) and feed-forward, each a stateless step over explicit (h, c)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LSTMController(nn.Module):
    """One LSTM layer written out as a single matmul, so the exported step is plain MatMul/Sigmoid/Tanh."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.gates = nn.Linear(input_size + hidden_size, 4 * hidden_size)
        with torch.no_grad():  # forget-gate bias 1: the usual remedy for early vanishing memory
            self.gates.bias.zero_()
            self.gates.bias[hidden_size : 2 * hidden_size] = 1.0

    def forward(self, x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, X), h (B, H), c (B, H) -> h' (B, H), c' (B, H)"""
        z = self.gates(torch.cat([x, h], dim=-1))  # (B, 4H)
        i, f, g, o = z.chunk(4, dim=-1)  # (B, H) each
        c_next = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h_next = torch.sigmoid(o) * torch.tanh(c_next)
        return h_next, c_next


class FeedForwardController(nn.Module):
    """A one-layer tanh network; (h, c) are carried through so both controllers share one state layout."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.layer = nn.Linear(input_size, hidden_size)

    def forward(self, x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, X), h (B, H), c (B, H) -> h' (B, H), c (B, H) unchanged"""
        return torch.tanh(self.layer(x)), c


def make_controller(kind: str, input_size: int, hidden_size: int) -> nn.Module:
    if kind == "lstm":
        return LSTMController(input_size, hidden_size)
    if kind == "feedforward":
        return FeedForwardController(input_size, hidden_size)
    raise ValueError(f"unknown controller {kind!r}")
