"""Memory read and erase/add write (Graves et al. 2014, sections 3.1-3.2, equations (2)-(4)), pure functions."""

from __future__ import annotations

from torch import Tensor


def read(memory: Tensor, weights: Tensor) -> Tensor:
    """r = w^T M for every read head (eq. 2).

    memory (B, N, M), weights (B, R, N) -> (B, R, M)
    """
    return weights @ memory  # (B, R, M)


def write(memory: Tensor, weights: Tensor, erase: Tensor, add: Tensor) -> Tensor:
    """M <- M * prod_h(1 - w_h e_h^T) + sum_h w_h a_h^T (erase, eq. 3, then add, eq. 4).

    With several write heads the erases multiply and the adds sum, so the result does not depend
    on the order of the heads.
    memory (B, N, M), weights (B, W, N), erase (B, W, M), add (B, W, M) -> (B, N, M)
    """
    erase_outer = weights.unsqueeze(-1) * erase.unsqueeze(-2)  # (B, W, N, M)
    keep = (1.0 - erase_outer).prod(dim=1)  # (B, N, M)
    added = weights.transpose(1, 2) @ add  # (B, N, M)
    return memory * keep + added
