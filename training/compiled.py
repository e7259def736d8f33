"""`--compile`: the training forward pass with `NTM.step` compiled once (torch.compile, inductor) and reused for
every time step.

Eager training of this model is bound by per-op overhead: one step is about a hundred small tensor ops forward
and twice that backward, on tensors of a few thousand elements. Inductor fuses each step's element-wise work
into a few C++ loops, forward and backward, so a step costs a few kernel calls instead of hundreds. The step is
the same function `NTM.step` (same parameters, same math, float noise aside), so checkpoints, export and parity
do not change; evaluation stays eager.

Two graphs serve every sequence length: one for the first step, whose state is the model's initial state
(broadcast views, partly buffers without gradient), and one for every later step.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

import torch
from torch import Tensor, nn

from training.model import NTM

CXX_NAMES = ("g++", "c++", "clang++")  # what inductor's CPU backend can build with (or $CXX)
Forward = Callable[[Tensor], Tensor]  # inputs (T, B, I) -> logits (T, B, O)


def eager_forward(model: nn.Module) -> Forward:
    """The model's own forward pass, logits only."""
    return lambda inputs: model(inputs)[0]


def compiled_forward(model: NTM) -> Forward:
    """Logits of a whole sequence from a compiled `model.step` looped over time. The first call compiles
    (one to three minutes on the busy 2-core box; inductor caches the result on disk for later runs)."""
    step = torch.compile(model.step, dynamic=False, fullgraph=True)

    def forward(inputs: Tensor) -> Tensor:
        state = model.initial_state(inputs.shape[1])
        logits = []
        for x in inputs:  # (B, I) per step
            y, state = step(x, state)
            logits.append(y)
        return torch.stack(logits)  # (T, B, O)

    return forward


def training_forward(model: nn.Module, compile_step: bool) -> Forward:
    """The forward pass the trainer differentiates: compiled for an NTM when asked, else eager."""
    if not compile_step:
        return eager_forward(model)
    if not isinstance(model, NTM):
        raise ValueError("--compile applies to the NTM only (the LSTM baseline is one fused nn.LSTM already)")
    on_cpu = next(model.parameters()).device.type == "cpu"  # on a GPU inductor builds with Triton instead
    if on_cpu and not (os.environ.get("CXX") or any(shutil.which(c) for c in CXX_NAMES)):
        raise ValueError(f"--compile needs a C++ compiler for inductor (none of {CXX_NAMES} on PATH, CXX unset); "
                         "train without --compile")
    return compiled_forward(model)
