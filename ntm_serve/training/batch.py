"""The batch every task generator returns (its own module so task modules can share it without import cycles)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class Batch(NamedTuple):
    """Targets are compared with the outputs of the last T_out steps. A `mask` (data sets: T_out == T) marks the
    steps whose targets count; None: every target counts."""

    inputs: Tensor  # (T, B, I)
    targets: Tensor  # (T_out, B, O)
    mask: Tensor | None = None  # (T_out, B), 1.0 where a target counts

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.inputs.to(device), self.targets.to(device),
                     None if self.mask is None else self.mask.to(device))
