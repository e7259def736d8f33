"""The explicit recurrent state of an NTM. Nothing about a sequence lives in the module itself."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

# Order matters: it is the order of the state inputs and outputs of the exported graphs.
STATE_NAMES: tuple[str, ...] = (
    "controller_h",
    "controller_c",
    "read_vectors",
    "memory",
    "read_weights",
    "write_weights",
)


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
