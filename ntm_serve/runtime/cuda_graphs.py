"""The step graph under CUDA graphs: one fixed buffer set per batch bucket, each direction its own captured graph.

onnxruntime's CUDA provider with `enable_cuda_graph` records a step's kernel launches once and replays them with
one launch afterwards, but a captured graph always reads and writes the addresses it was captured on. So each
bucket (ntm_serve/runtime/buckets.py) gets a `PingPong` of its own (two state sets, input and output tensors, allocated
once and never freed), and each of its two directions (A -> B, B -> A) is a graph of its own, chosen with the
`gpu_graph_id` run option. Every graph is captured when the model loads (`capture`), so a refusal is a load
error with the bucket in it, not a failure in the middle of serving.

With `capture=False` (the CPU provider) the very same buffers run without graphs and without run options: CI
tests the server's bucket handling that way, and the GPU benchmark's dry run uses it. Why: docs/service.md
("CUDA graphs").
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _state

from ntm_serve.runtime.ort_session import ProviderUnavailable, SessionSettings, open_session
from ntm_serve.runtime.stepping import PingPong


class CudaGraphError(RuntimeError):
    """onnxruntime refused CUDA graphs for this step graph (session options, or the capture of a bucket)."""


def open_graph_session(model: str | bytes, device_id: int = 0, settings: SessionSettings | None = None,
                       options: ort.SessionOptions | None = None) -> ort.InferenceSession:
    """The step graph on the CUDA provider with `enable_cuda_graph`; any refusal is a CudaGraphError saying why
    (onnxruntime refuses at session creation when a compute node would not run on CUDA)."""
    try:
        return open_session(model, "cuda", settings or SessionSettings(), device_id, cuda_graph=True, options=options)
    except (ProviderUnavailable, _state.Fail, _state.RuntimeException, _state.EPFail) as err:  # not a corrupt file
        raise CudaGraphError(f"onnxruntime refused CUDA graphs for the step graph: {err}") from err


def graph_ids(index: int) -> tuple[int, int]:
    """The `gpu_graph_id`s of bucket number `index` (A -> B, B -> A): 1, 2 for the first, 3, 4 for the next ...
    (0 is onnxruntime's default id, reserved; -1 means 'no graph')."""
    return 2 * index + 1, 2 * index + 2


def _run_options(graph_id: int) -> ort.RunOptions:
    options = ort.RunOptions()
    options.add_run_config_entry("gpu_graph_id", str(graph_id))
    return options


class BucketSteps:
    """One `PingPong` per bucket over `session`, made and (under CUDA graphs) captured by `capture()`."""

    def __init__(self, session: ort.InferenceSession, buckets: tuple[int, ...],
                 allocate: Callable[[int], list[ort.OrtValue]], device: str = "cpu", device_id: int = 0,
                 cuda_graph: bool = False) -> None:
        self.session = session
        self.buckets = buckets  # sorted, distinct (ntm_serve.runtime.buckets.check_buckets)
        self.cuda_graph = cuda_graph
        self._allocate = allocate  # rows -> six uninitialised (rows, ...) state tensors on the device
        self._device, self._device_id = device, device_id
        self._sets: dict[int, PingPong] = {}

    def capture(self) -> None:
        """Make every bucket's buffers and run each direction twice (capture, then replay) on what they hold, so
        every graph exists before the first request. The state buffers are the engine's to fill afterwards."""
        for index, rows in enumerate(self.buckets):
            ids = graph_ids(index)
            options = (_run_options(ids[0]), _run_options(ids[1])) if self.cuda_graph else (None, None)
            try:
                buffers = PingPong(self.session, self._allocate(rows), self._allocate(rows), self._device,
                                   self._device_id, run_options=options)
                zeros = np.zeros((rows, buffers.input.shape()[1]), dtype=np.float32)  # (P, I)
                for _ in range(4):  # A -> B, B -> A, twice: each direction captured once and replayed once
                    buffers.step(zeros)
            except Exception as err:
                what = "CUDA graph capture or replay" if self.cuda_graph else "step"
                raise CudaGraphError(f"{what} failed for batch bucket {rows} (gpu_graph_id {ids[0]}/{ids[1]}): "
                                     f"{type(err).__name__}: {err}") from err
            self._sets[rows] = buffers

    def buffers(self, rows: int) -> PingPong:
        """The fixed buffers of bucket `rows` (a bucket; `capture()` made them)."""
        return self._sets[rows]
