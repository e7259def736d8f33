"""`--compile`: the training forward pass with `NTM.step` compiled (torch.compile, inductor) into a few graphs
that are reused for every sequence, and an optimiser step in one fused kernel.

Eager training of this model is bound by per-op overhead: one step is about a hundred small tensor ops forward
and twice that backward, on tensors of a few thousand elements. Inductor fuses each step's element-wise work
into a few C++ loops, forward and backward, so a step costs a few kernel calls instead of hundreds. The step is
the same function `NTM.step` (same parameters, same math, float noise aside), so checkpoints, export and parity
do not change; evaluation stays eager.

What is left at small batches is the fixed cost of every compiled call (Dynamo's cache lookup, the AOTAutograd
wrapper, one autograd node forward and one backward, the graph's own Python prologue). So steps are run in
chunks: one graph runs `k` steps unrolled, for k in `CHUNKS`, and a sequence of T steps is cut greedily into the
largest chunks that fit (`chunk_plan`). The graphs depend on k and the batch size only, never on T, so every
sequence length reuses them: the first step (whose state is the model's broadcast initial state, its own
graph), then chunks of 4 and 2 and single steps; a copy sequence (T = 2L + 1) needs no single step after the first.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ntm_serve.training.model import NTM
from ntm_serve.training.state import NTMState

CXX_NAMES = ("g++", "c++", "clang++")  # what inductor's CPU backend can build with (or $CXX)
CHUNKS = (4, 2, 1)  # time steps per compiled call, largest first; 1 must be there (any T is a sum of them)
# Dynamo's guards already pin every input's size and stride (dynamic=False); the graph's own re-check of them on
# every call is pure overhead.
INDUCTOR_OPTIONS = {"size_asserts": False}
# Graphs Dynamo may keep for the one chunk function: one per (chunk size, first step or later, batch size, model
# sizes). Its default of 8 is reached by a process that trains three batch sizes (the speed benchmark), after
# which it would silently run the chunks eager.
RECOMPILE_LIMIT = 64
Forward = Callable[..., Tensor]  # (inputs (T, B, I), rows: memory rows or None for the trained N) -> logits (T, B, O)


def eager_forward(model: nn.Module) -> Forward:
    """The model's own forward pass, logits only; `rows` memory rows (an NTM; None: the trained N)."""
    return lambda inputs, rows=None: model(inputs)[0] if rows is None else model(inputs, rows=rows)[0]


def chunk_plan(steps: int, chunks: tuple[int, ...] = CHUNKS) -> list[int]:
    """Chunk sizes, in order, covering `steps` time steps: greedily the largest that fits. -> sizes summing to steps"""
    if 1 not in chunks:
        raise ValueError(f"chunk sizes {chunks} must include 1 to cover every length")
    plan = []
    for k in sorted(chunks, reverse=True):
        count, steps = divmod(steps, k)
        plan += [k] * count
    return plan


def compiled_forward(model: NTM, chunks: tuple[int, ...] = CHUNKS) -> Forward:
    """Logits of a whole sequence from compiled chunks of `model.step`. The first call at each chunk size compiles
    (minutes on the busy 2-core box with a cold cache; inductor caches the result on disk for later runs)."""

    def run_steps(xs: Tensor, state: NTMState) -> tuple[Tensor, NTMState]:
        """xs (k, B, I) -> logits (k, B, O), the state after k steps; unrolled by Dynamo, one graph per k."""
        logits = []
        for x in xs:  # (B, I)
            y, state = model.step(x, state)
            logits.append(y)
        return torch.stack(logits), state

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    compiled = torch.compile(run_steps, dynamic=False, fullgraph=True, options=INDUCTOR_OPTIONS)

    def forward(inputs: Tensor, rows: int | None = None) -> Tensor:
        """Each memory size N compiles graphs of its own (the sizes are static): train on a few N, not a range."""
        first, state = compiled(inputs[:1], model.initial_state(inputs.shape[1], rows))  # (1, B, O)
        logits, t = [first], 1
        for k in chunk_plan(inputs.shape[0] - 1, chunks):
            ys, state = compiled(inputs[t : t + k], state)  # (k, B, O)
            logits.append(ys)
            t += k
        return torch.cat(logits)  # (T, B, O)

    return forward


def warm_up(forward: Forward, model: nn.Module, batch_size: int, chunks: tuple[int, ...] = CHUNKS) -> None:
    """Compile every graph now rather than at the first length that needs it: one zero sequence that runs the first
    step and each chunk size once, forward and backward; the gradients are discarded. (A benchmark calls this, so
    no compile lands in a timed round.)"""
    first = next(model.parameters())
    inputs = first.new_zeros(1 + sum(chunks), batch_size, model.config.input_size)  # (T, B, I)
    forward(inputs).sum().backward()
    model.zero_grad(set_to_none=True)


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


def use_fast_kernels(optimizer: torch.optim.Optimizer, fast: bool) -> None:
    """Adam in one fused kernel (RMSprop, which has none, in foreach kernels) when `fast`, else the per-parameter
    loop. Set on every param group after building and again after `load_state_dict`, which restores the saved
    groups' flags: the implementation is the current run's choice, like --compile, not part of the resume file.
    Fused and looped updates differ by float noise only."""
    fused = fast and isinstance(optimizer, torch.optim.Adam)
    for group in optimizer.param_groups:
        group["fused"] = fused or None
        group["foreach"] = (fast and not fused) or None
