"""The trained PyTorch model stepped directly: eager and torch.compile, the baselines for onnxruntime."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ntm_serve.training.model import NTM
from ntm_serve.training.state import NTMState


def torch_state(model: NTM, batch: int) -> NTMState:
    """The initial state as tensors of their own (expand() views would alias across rows)."""
    with torch.no_grad():
        return model.initial_state(batch).owned()


class TorchStep:
    """`step(x, state)` under no_grad on the next row of `inputs` (T, B, I); the state carries over."""

    def __init__(self, step: Callable[..., Any], state: NTMState, inputs: np.ndarray) -> None:
        self.step, self.state, self.t = step, state, 0
        self.inputs = torch.from_numpy(inputs)

    def __call__(self) -> None:
        x = self.inputs[self.t % len(self.inputs)]
        self.t += 1
        with torch.no_grad():
            _, self.state = self.step(x, self.state)


def threads_setter(threads: int) -> Callable[[], None]:
    def set_threads() -> None:
        torch.set_num_threads(threads)

    return set_threads


def compile_step(model: NTM, batch: int, inputs: np.ndarray, threads: int) -> tuple[Callable[..., Any], float]:
    """torch.compile (inductor, static shapes) of `model.step`, compiled and warmed up for one batch size.

    Returns the compiled step and the seconds the first calls took (compilation). Raises whatever the
    compiler raises.
    """
    # Dynamo caches compiled code on `step`'s code object, at most 8 variants: with two per batch size (the
    # first state is a fresh tensor, later ones come from compiled code) five batch sizes would pass the
    # limit and silently fall back to eager. Earlier batch sizes are done with by now: start afresh.
    torch.compiler.reset()
    torch.set_num_threads(threads)
    step = torch.compile(model.step, dynamic=False)
    runner = TorchStep(step, torch_state(model, batch), inputs)
    start = time.perf_counter()
    for _ in range(3):  # the first calls compile; later states come from compiled code (recompiles if guards differ)
        runner()
    return step, time.perf_counter() - start
