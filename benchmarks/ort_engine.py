"""Step runners for the benchmarks, on the CPU or the CUDA provider, over sessions of ntm_serve/runtime/ort_session.py.

Three ways to drive the exported NTM, from the plainest to the leanest:
- `RunStep`: `session.run` with numpy in and out (what a first server would write);
- `BoundStep`: the server's own stepping (`ntm_serve.runtime.stepping.PingPong`): IOBinding over two preallocated
  state sets, A -> B then B -> A, so no step allocates or copies the state (on CUDA the state never leaves
  the device);
- `BucketStep`: the server's CUDA-graph path (`ntm_serve.runtime.cuda_graphs.BucketSteps`): the same, in the fixed
  buffers of the batch's bucket (ntm_serve/runtime/buckets.py), each direction a captured graph;
- `SequenceRun`: the sequence graph, T steps per call.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from ntm_serve.contract import GRAPH_FILES, NEXT_STATE, STATE_NAMES
from ntm_serve.runtime.buckets import bucket_rows, padded
from ntm_serve.runtime.cuda_graphs import BucketSteps, open_graph_session
from ntm_serve.runtime.ort_session import ORT_DEFAULTS, ProviderUnavailable, SessionSettings, open_session
from ntm_serve.runtime.stepping import PingPong

# The engine table's settings: onnxruntime's defaults at one thread. The sweep in engine.py (docs/performance.md)
# found nothing that beats them on this model reliably (flush-to-zero changes nothing: the state holds no
# denormals); the speed-up of the IOBinding rows comes from IOBinding.
DEFAULT = ORT_DEFAULTS


def make_session(path: Path | bytes, settings: SessionSettings = DEFAULT, device: str = "cpu",
                 options: ort.SessionOptions | None = None) -> ort.InferenceSession:
    """A session on `device`; raises when CUDA was asked for and did not really load."""
    try:
        return open_session(path, device, settings, options=options)
    except ProviderUnavailable as err:
        raise RuntimeError(str(err)) from err


def initial_state(folder: Path, batch: int) -> list[np.ndarray]:
    """The model's initial state (from initial_state.onnx) repeated to `batch` rows, contiguous float32."""
    sess = make_session(folder / GRAPH_FILES["initial_state"])
    names = [o.name for o in sess.get_outputs()]
    if tuple(names) != STATE_NAMES:
        raise RuntimeError(f"{GRAPH_FILES['initial_state']} outputs {names}, expected {STATE_NAMES}")
    return [np.ascontiguousarray(np.repeat(a, batch, axis=0), dtype=np.float32) for a in sess.run(None, {})]


def copy_task_inputs(rng: np.random.Generator, steps: int, batch: int, input_size: int) -> np.ndarray:
    """Random copy-task-like inputs (T, B, I): 0/1 bits on the data channels, delimiter channel 0."""
    x = (rng.random((steps, batch, input_size)) < 0.5).astype(np.float32)
    x[..., -1] = 0.0
    return x


class RunStep:
    """`session.run` with numpy arrays; the returned next state feeds the next call."""

    def __init__(self, sess: ort.InferenceSession, state: list[np.ndarray], inputs: np.ndarray) -> None:
        self.sess, self.state, self.inputs, self.t = sess, list(state), inputs, 0

    def __call__(self) -> None:
        x = self.inputs[self.t % len(self.inputs)]
        self.t += 1
        out = self.sess.run(None, {"input": x, **dict(zip(STATE_NAMES, self.state, strict=True))})
        self.state = out[1:]


class BoundStep:
    """The server's `PingPong` over two state sets on `device`, the input rows of `inputs` (T, B, I) cycled.

    The input rows are copied into the bound input tensor (a host-to-device copy on CUDA, of B x I floats);
    nothing else moves.
    """

    def __init__(self, sess: ort.InferenceSession, state: list[np.ndarray], inputs: np.ndarray,
                 device: str = "cpu") -> None:
        self.inputs, self.t = inputs, 0
        self.fetch = device == "cuda"  # a server must bring the (B, O) outputs to the host every step
        self.buffers = PingPong(sess, [device_value(a, device) for a in state],
                                [device_value(np.zeros_like(a), device) for a in state], device)

    def __call__(self) -> None:
        output = self.buffers.step(self.inputs[self.t % len(self.inputs)])
        self.t += 1
        if self.fetch:
            output.numpy()  # device -> host copy of the outputs (synchronises)

    @property
    def output(self) -> ort.OrtValue:
        """The last step's outputs (B, O), on the runner's device."""
        return self.buffers.output

    def state(self) -> list[np.ndarray]:
        """The current state, copied to host numpy arrays."""
        return [np.array(v.numpy()) for v in self.buffers.state]  # copies: a CPU OrtValue's numpy() is a view


def device_value(array: np.ndarray, device: str) -> ort.OrtValue:
    """A float32 copy of `array` on `device` (always a buffer of its own: a CPU OrtValue would share numpy's)."""
    return ort.OrtValue.ortvalue_from_numpy(np.array(array, dtype=np.float32, order="C"), device, 0)


def bucket_steps(folder: Path, buckets: tuple[int, ...], device: str = "cuda", cuda_graph: bool = True,
                 options: ort.SessionOptions | None = None) -> BucketSteps:
    """The server's per-bucket buffers over the step graph of `folder`, made and captured (`BucketSteps.capture`),
    every row starting from the initial state. `cuda_graph=False`: the same without graphs (the CPU's dry run)."""
    path = folder / GRAPH_FILES["step"]
    sess = (open_graph_session(str(path), 0, DEFAULT, options=options) if cuda_graph
            else make_session(path, DEFAULT, device, options=options))
    initial = initial_state(folder, 1)

    def allocate(rows: int) -> list[ort.OrtValue]:
        return [device_value(np.repeat(a, rows, axis=0), device) for a in initial]

    steps = BucketSteps(sess, buckets, allocate, device, cuda_graph=cuda_graph)
    steps.capture()  # steps every bucket: back to the initial state afterwards
    for rows in buckets:
        for value, a in zip(steps.buffers(rows).state, initial, strict=True):
            value.update_inplace(np.ascontiguousarray(np.repeat(a, rows, axis=0)))
    return steps


class BucketStep:
    """B sessions stepped the way the server steps them under CUDA graphs: in the fixed buffers of the smallest
    bucket holding B (the padding rows step on zeros), the inputs (T, B, I) cycled, the (B, O) outputs fetched."""

    def __init__(self, steps: BucketSteps, inputs: np.ndarray, device: str = "cuda") -> None:
        rows = bucket_rows(padded(inputs.shape[1]), steps.buckets)
        self.inputs = np.zeros((len(inputs), rows, inputs.shape[2]), dtype=np.float32)  # (T, bucket, I)
        self.inputs[:, : inputs.shape[1]] = inputs
        self.batch, self.t = inputs.shape[1], 0
        self.buffers = steps.buffers(rows)
        self.fetch = device == "cuda"

    def __call__(self) -> None:
        output = self.buffers.step(self.inputs[self.t % len(self.inputs)])
        self.t += 1
        if self.fetch:
            output.numpy()[: self.batch]  # device -> host copy of the outputs (the replay synchronised already)


class SequenceRun:
    """The sequence graph: T steps per call from the state the previous call ended in."""

    def __init__(self, sess: ort.InferenceSession, state: list[np.ndarray], inputs: np.ndarray) -> None:
        self.sess, self.state, self.inputs = sess, list(state), inputs  # inputs (T, B, I)
        names = [o.name for o in sess.get_outputs()]
        self.first_state = names.index(NEXT_STATE[0])

    def __call__(self) -> None:
        out = self.sess.run(None, {"inputs": self.inputs, **dict(zip(STATE_NAMES, self.state, strict=True))})
        self.state = out[self.first_state :]
