"""The batch every task generator returns (its own module so task modules can share it without import cycles)."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class Batch(NamedTuple):
    inputs: Tensor  # (T, B, I)
    targets: Tensor  # (T_out, B, O)
