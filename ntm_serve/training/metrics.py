"""Loss and the metric used everywhere: bit errors per sequence."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def sequence_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Binary cross-entropy on the last T_out steps. logits (T, B, O), targets (T_out, B, O) -> scalar."""
    return F.binary_cross_entropy_with_logits(logits[-targets.shape[0] :], targets)


def bit_errors(logits: Tensor, targets: Tensor) -> Tensor:
    """Target bits where round(sigmoid(logit)) != target, per sequence. -> (B,)"""
    predicted = (logits[-targets.shape[0] :] > 0).float()  # round(sigmoid(x)) == (x > 0)
    return (predicted != targets).float().sum(dim=(0, 2))
