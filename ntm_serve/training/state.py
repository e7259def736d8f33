"""The explicit recurrent state of an NTM. Nothing about a sequence lives in the module itself."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

from ntm_serve.contract import STATE_NAMES  # the field order below; the order of the graphs' state inputs and outputs

__all__ = ["STATE_NAMES", "NTMState"]


class NTMState(NamedTuple):
    """All tensors carried from one time step to the next, batch first."""

    controller_h: Tensor  # (B, H)
    controller_c: Tensor  # (B, H)  (unused, carried through, by the feed-forward controller)
    read_vectors: Tensor  # (B, R, M)
    memory: Tensor  # (B, N, M)
    read_weights: Tensor  # (B, R, N)
    write_weights: Tensor  # (B, W, N)

    def detach(self) -> NTMState:
        return NTMState(*(t.detach() for t in self))

    def owned(self) -> NTMState:
        """Detached contiguous copies: `NTM.initial_state` returns expand() views, which alias across rows
        and cannot be traced as graph inputs."""
        return NTMState(*(t.detach().clone().contiguous() for t in self))
