"""onnxruntime sessions and step runners for the benchmarks, on the CPU or the CUDA provider.

Three ways to drive the exported NTM, from the plainest to the leanest:
- `RunStep`: `session.run` with numpy in and out (what a first server would write);
- `BoundStep`: IOBinding with preallocated state buffers in two sets, A -> B then B -> A, so no
  step allocates or copies the state (on CUDA the state never leaves the device); optionally under
  CUDA graphs, one captured graph per direction;
- `SequenceRun`: the sequence graph, T steps per call.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.graphs import STATE_NAMES  # docs/onnx-contract.md order

LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


@dataclass(frozen=True)
class Options:
    """The session settings the benchmarks vary. Defaults are onnxruntime's own defaults, 1 thread."""

    threads: int = 1  # intra-op threads
    level: str = "all"  # graph optimisation level, a key of LEVELS
    spinning: bool = True  # session.intra_op.allow_spinning (busy-wait of idle pool threads)
    denormal_as_zero: bool = False  # session.set_denormal_as_zero (flush-to-zero)
    parallel: bool = False  # ORT_PARALLEL execution mode (inter-op threads = 2) instead of sequential
    arena: bool = True  # CPU memory arena
    mem_pattern: bool = True  # memory pattern planning
    extra: Mapping[str, str] = field(default_factory=dict)  # more session config entries

    def label(self) -> str:
        return f"{self.threads} thread{'s' if self.threads > 1 else ''}"

    def with_threads(self, threads: int) -> Options:
        return replace(self, threads=threads)

    def session_options(self) -> ort.SessionOptions:
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 2 if self.parallel else 1
        so.execution_mode = ort.ExecutionMode.ORT_PARALLEL if self.parallel else ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = LEVELS[self.level]
        so.enable_cpu_mem_arena = self.arena
        so.enable_mem_pattern = self.mem_pattern
        so.log_severity_level = 3
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spinning else "0")
        so.add_session_config_entry("session.set_denormal_as_zero", "1" if self.denormal_as_zero else "0")
        for key, value in self.extra.items():
            so.add_session_config_entry(key, value)
        return so


DEFAULT = Options()
# The session settings of the engine table's IOBinding rows. The sweep in engine.py (docs/performance.md)
# found nothing that beats onnxruntime's defaults on this model reliably (flush-to-zero changes nothing: the
# state holds no denormals), so they are the defaults; the speed-up of those rows comes from IOBinding.
TUNED = Options()


def providers_for(device: str, cuda_graph: bool = False) -> list:
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        cuda = {"use_tf32": "0", "enable_cuda_graph": "1" if cuda_graph else "0"}
        return [("CUDAExecutionProvider", cuda), "CPUExecutionProvider"]
    raise ValueError(f"device must be cpu or cuda, got {device!r}")


def make_session(path: Path | bytes, options: Options = DEFAULT, device: str = "cpu",
                 cuda_graph: bool = False) -> ort.InferenceSession:
    """A session on `device`; raises when CUDA was asked for and did not really load."""
    source = path if isinstance(path, bytes) else str(path)
    sess = ort.InferenceSession(source, options.session_options(), providers=providers_for(device, cuda_graph))
    if device == "cuda" and "CUDAExecutionProvider" not in sess.get_providers():
        raise RuntimeError(f"CUDAExecutionProvider did not load (session got {sess.get_providers()})")
    return sess


def initial_state(folder: Path, batch: int) -> list[np.ndarray]:
    """The model's initial state (from initial_state.onnx) repeated to `batch` rows, contiguous float32."""
    sess = ort.InferenceSession(str(folder / "initial_state.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    if tuple(names) != STATE_NAMES:
        raise RuntimeError(f"initial_state.onnx outputs {names}, expected {STATE_NAMES}")
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
    """IOBinding over two preallocated state sets on `device`; each call steps A -> B or B -> A.

    The input rows are written in place into one bound buffer (a host-to-device copy on CUDA, of
    B x I floats); nothing else moves. With CUDA graphs each direction is its own captured graph
    (run option gpu_graph_id), since a captured graph always reads and writes the same addresses.
    """

    def __init__(self, sess: ort.InferenceSession, state: list[np.ndarray], inputs: np.ndarray,
                 device: str = "cpu", graph_ids: tuple[int, int] | None = None) -> None:
        self.sess, self.inputs, self.t = sess, inputs, 0
        self.fetch = device == "cuda"  # a server must bring the (B, O) outputs to the host every step
        batch = state[0].shape[0]
        out_size = sess.get_outputs()[0].shape[-1]
        ort_device = "cuda" if device == "cuda" else "cpu"

        def value(array: np.ndarray) -> ort.OrtValue:  # always a buffer of its own (a CPU OrtValue shares numpy's)
            return ort.OrtValue.ortvalue_from_numpy(np.array(array, dtype=np.float32, order="C"), ort_device, 0)

        self.x = value(inputs[0])
        sets = [[value(a) for a in state], [value(np.zeros_like(a)) for a in state]]
        self.output = value(np.zeros((batch, out_size), np.float32))
        self.bindings = []
        for src, dst in ((0, 1), (1, 0)):
            io = sess.io_binding()
            io.bind_ortvalue_input("input", self.x)
            for name, v in zip(STATE_NAMES, sets[src], strict=True):
                io.bind_ortvalue_input(name, v)
            io.bind_ortvalue_output("output", self.output)
            for name, v in zip(STATE_NAMES, sets[dst], strict=True):
                io.bind_ortvalue_output(f"next_{name}", v)
            self.bindings.append(io)
        self.sets = sets
        # No RunOptions unless needed: onnxruntime 1.31's Python wrapper looks up gpu_graph_id in any RunOptions
        # given, and a missing entry raises and catches a C++ exception: ~20 µs per call (measured here).
        self.run_options: list[ort.RunOptions | None] = [None, None]
        if graph_ids is not None:
            for k, gid in enumerate(graph_ids):
                self.run_options[k] = ort.RunOptions()
                self.run_options[k].add_run_config_entry("gpu_graph_id", str(gid))

    def __call__(self) -> None:
        self.x.update_inplace(self.inputs[self.t % len(self.inputs)])
        k = self.t % 2
        self.t += 1
        self.sess.run_with_iobinding(self.bindings[k], self.run_options[k])
        if self.fetch:
            self.output.numpy()  # device -> host copy of the outputs (synchronises)

    def state(self) -> list[np.ndarray]:
        """The current state, copied to host numpy arrays."""
        return [np.array(v.numpy()) for v in self.sets[self.t % 2]]  # copies: a CPU OrtValue's numpy() is a view


class SequenceRun:
    """The sequence graph: T steps per call from the state the previous call ended in."""

    def __init__(self, sess: ort.InferenceSession, state: list[np.ndarray], inputs: np.ndarray) -> None:
        self.sess, self.state, self.inputs = sess, list(state), inputs  # inputs (T, B, I)
        names = [o.name for o in sess.get_outputs()]
        self.first_state = names.index("next_controller_h")

    def __call__(self) -> None:
        out = self.sess.run(None, {"inputs": self.inputs, **dict(zip(STATE_NAMES, self.state, strict=True))})
        self.state = out[self.first_state :]
