"""Stepping a batch whose state stays put: two state buffer sets bound to the step graph in both directions.

A step reads the current set and writes the next state into the spare set (A -> B, then B -> A), so no
step allocates, gathers, scatters or copies the state; on CUDA it never leaves the device. The input and
output tensors are allocated once too (the fixed addresses CUDA graphs need). The server's resident batch
(ntm_serve/runtime/engine.py) and the benchmarks' IOBinding runners (benchmarks/ort_engine.py) both step this way.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnxruntime as ort

from ntm_serve.contract import STATE_NAMES, next_name


class PingPong:
    """A step session over two state sets of one batch size P, stepped in turn. Not thread-safe."""

    def __init__(self, session: ort.InferenceSession, current: list[ort.OrtValue], spare: list[ort.OrtValue],
                 device: str = "cpu", device_id: int = 0,
                 run_options: tuple[ort.RunOptions | None, ort.RunOptions | None] = (None, None)) -> None:
        self.session = session
        self.state, self.spare = current, spare  # six (P, ...) tensors each
        rows = current[0].shape()[0]
        width = session.get_inputs()[0].shape[-1]
        out_width = session.get_outputs()[0].shape[-1]
        self.input = ort.OrtValue.ortvalue_from_shape_and_type([rows, width], np.float32, device, device_id)  # (P, I)
        self.output = ort.OrtValue.ortvalue_from_shape_and_type([rows, out_width], np.float32, device,
                                                                device_id)  # (P, O)
        self._bindings = [self._bind(current, spare), self._bind(spare, current)]
        # No RunOptions unless needed: onnxruntime 1.31's Python wrapper looks up gpu_graph_id in any RunOptions
        # given, and a missing entry raises and catches a C++ exception: ~20 µs per call (measured here).
        self._run_options = list(run_options)
        self._turn = 0  # which binding runs next

    @property
    def rows(self) -> int:
        return self.state[0].shape()[0]

    def _bind(self, now: Sequence[ort.OrtValue], after: Sequence[ort.OrtValue]) -> ort.IOBinding:
        io = self.session.io_binding()
        io.bind_ortvalue_input("input", self.input)
        io.bind_ortvalue_output("output", self.output)
        for name, a, b in zip(STATE_NAMES, now, after, strict=True):
            io.bind_ortvalue_input(name, a)
            io.bind_ortvalue_output(next_name(name), b)
        return io

    def step(self, x: np.ndarray) -> ort.OrtValue:
        """x (P, I) float32 contiguous -> the (P, O) output tensor (valid until the next step). The next state
        becomes `state`. On failure nothing is swapped: `state` still holds the state before the step."""
        self.input.update_inplace(x)
        self.session.run_with_iobinding(self._bindings[self._turn], self._run_options[self._turn])
        self._turn ^= 1
        self.state, self.spare = self.spare, self.state
        return self.output

    def tensor(self, name: str) -> ort.OrtValue:
        """The current state tensor `name` (P, ...)."""
        return self.state[STATE_NAMES.index(name)]
