"""Loss and the metric used everywhere: bit errors per sequence."""

from __future__ import annotations

import zlib

import torch.nn.functional as F
from torch import Tensor


def sequence_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Binary cross-entropy on the last T_out steps. logits (T, B, O), targets (T_out, B, O) -> scalar."""
    return F.binary_cross_entropy_with_logits(logits[-targets.shape[0] :], targets)


def bit_errors(logits: Tensor, targets: Tensor) -> Tensor:
    """Target bits where round(sigmoid(logit)) != target, per sequence. -> (B,)"""
    predicted = (logits[-targets.shape[0] :] > 0).float()  # round(sigmoid(x)) == (x > 0)
    return (predicted != targets).float().sum(dim=(0, 2))


def point_seed(seed: int, name: str) -> int:
    """A per-point seed: independent of the point's position in the list."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63 - 1)


# Masked figures for sequence data sets (ntm_serve/training/dataset.py): targets cover every step of the batch,
# mask (T, B) is 1 where a target counts. The batch builder zeroes targets where the mask is 0, so padding never
# carries a NaN into a sum.


def masked_bce(logits: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """BCE averaged over counted bits. logits (T, B, O), targets (T, B, O), mask (T, B) -> scalar."""
    per_bit = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")  # (T, B, O)
    return (per_bit * mask[..., None]).sum() / (mask.sum() * targets.shape[-1]).clamp(min=1)


def masked_bit_errors(logits: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """Counted target bits where round(sigmoid(logit)) != target, per sequence. -> (B,)"""
    wrong = ((logits > 0).float() != targets).float()  # (T, B, O)
    return (wrong * mask[..., None]).sum(dim=(0, 2))


def masked_cross_entropy(logits: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """Softmax cross-entropy averaged over counted steps. targets one-hot (T, B, C), mask (T, B) -> scalar."""
    per_step = F.cross_entropy(logits.flatten(0, 1), targets.argmax(-1).flatten(), reduction="none")  # (T*B,)
    return (per_step * mask.flatten()).sum() / mask.sum().clamp(min=1)


def masked_misclassified(logits: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """Counted steps whose arg-max label is wrong, per sequence. -> (B,)"""
    return ((logits.argmax(-1) != targets.argmax(-1)).float() * mask).sum(0)


def masked_mse(logits: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """Squared error averaged over counted values (the outputs are the logits themselves). -> scalar"""
    squared = (logits - targets) ** 2  # (T, B, O)
    return (squared * mask[..., None]).sum() / (mask.sum() * targets.shape[-1]).clamp(min=1)


def masked_sequence_mse(logits: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """Each sequence's mean squared error over its counted values. -> (B,)"""
    squared = ((logits - targets) ** 2 * mask[..., None]).sum(dim=(0, 2))  # (B,)
    return squared / (mask.sum(0) * targets.shape[-1]).clamp(min=1)
