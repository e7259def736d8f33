"""One served model: its three ONNX graphs in onnxruntime, on one execution provider, over IOBinding.

The state of every session lives in the model's `StatePool` (device tensors, see service/state_pool.py).
A step of a batch of sessions is three onnxruntime calls on the same provider and never copies state to
the host: gather the sessions' rows, run `step.onnx` on them, scatter the next state back in place. Only
the inputs (B, I) go in and the outputs (B, O) (and, when asked, the head weightings) come out.

Batch invariance: every call runs on a multiple of `ROW_MULTIPLE` rows, padding with scratch rows of
the pool. onnxruntime's CPU Softplus and Log kernels (Eigen, 4-float SSE packets) round an element
differently in the vector body and in the scalar tail of a tensor, so without padding a session's
numbers would depend on how many sessions share its call (a tail row differs by ~1 ulp per step, which
a trained NTM amplifies to 1e-4 within a few hundred steps on random inputs). With the batch a multiple
of 4 every row takes the vector path: a session's outputs are bit-for-bit the same in any batch, at any
row, batched or not (tests/test_service_batching.py).

An `Engine` is used by one thread only (its model's batcher); it is not thread-safe.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from service.graphs import STATE_NAMES
from service.state_pool import Device, PoolGraphs, StatePool

log = logging.getLogger(__name__)

GRAPH_FILES = {"step": "step.onnx", "sequence": "sequence.onnx", "initial_state": "initial_state.onnx"}
STEP_INPUTS = ("input", *STATE_NAMES)
STEP_OUTPUTS = ("output", *(f"next_{s}" for s in STATE_NAMES))
SEQUENCE_INPUTS = ("inputs", *STATE_NAMES)
SEQUENCE_OUTPUTS = ("outputs", "read_attention", "write_attention", *(f"next_{s}" for s in STATE_NAMES))
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
ROW_MULTIPLE = 4  # every onnxruntime call runs on a multiple of this many rows (see the module docstring)


class ModelLoadError(RuntimeError):
    """A model folder that cannot be served (missing graph, contract mismatch, mixed exports)."""


@dataclass(frozen=True)
class ModelSpec:
    """What a client needs to know about a model, from the graphs' `metadata_props`."""

    name: str
    task: str
    config: dict[str, Any]
    encoding: str
    checkpoint_sha256: str
    state_shapes: dict[str, tuple[int, ...]]  # per session, no batch dimension, in STATE_NAMES order

    @property
    def input_size(self) -> int:
        return int(self.config["input_size"])

    @property
    def output_size(self) -> int:
        return int(self.config["output_size"])


@dataclass(frozen=True)
class StepResult:
    outputs: np.ndarray  # (B, O) probabilities
    read_weights: np.ndarray | None  # (B, R, N) when asked
    write_weights: np.ndarray | None  # (B, W, N) when asked


@dataclass(frozen=True)
class SequenceResult:
    outputs: np.ndarray  # (T, O)
    read_weights: np.ndarray | None  # (T, R, N) when asked
    write_weights: np.ndarray | None  # (T, W, N) when asked


def provider_options(provider: str, device_id: int) -> list[Any]:
    """onnxruntime's provider list for a request: CUDA with TF32 off (exact float32 matmuls), or CPU."""
    if provider == "cpu":
        return [CPU]
    return [(CUDA, {"device_id": str(device_id), "use_tf32": "0"}), CPU]


def session_options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # don't burn idle cores
    options.log_severity_level = 3
    return options


def open_session(model: str | bytes, provider: str, device_id: int, threads: int) -> ort.InferenceSession:
    """An InferenceSession on exactly the provider asked for; CUDA is checked to have really loaded.

    onnxruntime-gpu lists CUDA as available even when its libraries are missing and then silently runs
    on CPU, so the session's own `get_providers()` is the truth.
    """
    if provider == "cuda" and CUDA not in ort.get_available_providers():
        raise ModelLoadError("provider cuda asked for, but this onnxruntime build has no CUDAExecutionProvider")
    session = ort.InferenceSession(model, session_options(threads), providers=provider_options(provider, device_id))
    got = session.get_providers()
    if provider == "cuda" and got[0] != CUDA:
        raise ModelLoadError(f"provider cuda asked for, but CUDAExecutionProvider did not load (running {got})")
    return session


def resolve_provider(choice: str, device_id: int, probe: Path) -> str:
    """'auto' -> 'cuda' when a real CUDA session loads `probe`, else 'cpu'; 'cuda' fails loudly; 'cpu' is cpu."""
    if choice != "auto":
        if choice == "cuda":
            open_session(str(probe), "cuda", device_id, 1)
        return choice
    if CUDA not in ort.get_available_providers():
        log.info("provider auto: this onnxruntime has no CUDA provider; using CPU")
        return "cpu"
    try:
        open_session(str(probe), "cuda", device_id, 1)
    except Exception as err:  # any failure to bring CUDA up means: run on CPU
        log.warning("provider auto: CUDA did not load (%s); using CPU", err)
        return "cpu"
    return "cuda"


def _metadata(session: ort.InferenceSession, path: Path) -> dict[str, str]:
    props = dict(session.get_modelmeta().custom_metadata_map)
    for key in ("ntm.task", "ntm.config", "ntm.state", "ntm.graph", "ntm.checkpoint_sha256"):
        if key not in props:
            raise ModelLoadError(f"{path}: metadata key {key!r} missing (docs/onnx-contract.md)")
    return props


def _check_names(session: ort.InferenceSession, path: Path, inputs: tuple[str, ...], outputs: tuple[str, ...]) -> None:
    got_in = tuple(i.name for i in session.get_inputs())
    got_out = tuple(o.name for o in session.get_outputs())
    if got_in != inputs or got_out != outputs:
        raise ModelLoadError(f"{path}: inputs {got_in} and outputs {got_out}, the contract says {inputs} {outputs}")


def read_spec(name: str, props: dict[str, str]) -> ModelSpec:
    config = json.loads(props["ntm.config"])
    state = json.loads(props["ntm.state"])
    names = tuple(entry["name"] for entry in state)
    if names != STATE_NAMES:
        raise ModelLoadError(f"model {name}: state tensors {names}, the contract says {STATE_NAMES}")
    shapes = {entry["name"]: tuple(int(d) for d in entry["shape"][1:]) for entry in state}
    return ModelSpec(
        name=name,
        task=props["ntm.task"],
        config=config,
        encoding=props.get("ntm.encoding", ""),
        checkpoint_sha256=props["ntm.checkpoint_sha256"],
        state_shapes=shapes,
    )


class Engine:
    """A model's onnxruntime sessions and the device-resident states of its sessions."""

    def __init__(self, folder: Path, provider: str, device_id: int = 0, threads: int = 1,
                 initial_capacity: int = 64, lanes: int = 64) -> None:
        self.folder = folder
        self.provider = CUDA if provider == "cuda" else CPU
        self.device = Device("cuda" if provider == "cuda" else "cpu", device_id)
        paths = {graph: folder / file for graph, file in GRAPH_FILES.items()}
        for path in paths.values():
            if not path.is_file():
                raise ModelLoadError(f"{folder}: {path.name} missing")
        # Read each file once: a re-export (atomic renames) between two reads could mix checkpoints.
        data = {graph: path.read_bytes() for graph, path in paths.items()}
        self._step = open_session(data["step"], provider, device_id, threads)
        self._sequence = open_session(data["sequence"], provider, device_id, threads)
        initial = open_session(data["initial_state"], provider, device_id, threads)
        _check_names(self._step, paths["step"], STEP_INPUTS, STEP_OUTPUTS)
        _check_names(self._sequence, paths["sequence"], SEQUENCE_INPUTS, SEQUENCE_OUTPUTS)
        _check_names(initial, paths["initial_state"], (), STATE_NAMES)
        props = {graph: _metadata(s, paths[graph]) for graph, s in
                 (("step", self._step), ("sequence", self._sequence), ("initial_state", initial))}
        hashes = {p["ntm.checkpoint_sha256"] for p in props.values()}
        if len(hashes) != 1:
            raise ModelLoadError(f"{folder}: the three graphs come from different checkpoints (re-export it)")
        self.spec = read_spec(folder.name, props["step"])
        # The initial state, kept on the host: a new session's row is written from it once.
        values = initial.run(None, {})
        self.initial_state = {s: np.ascontiguousarray(v[0]) for s, v in zip(STATE_NAMES, values, strict=True)}
        for s, shape in self.spec.state_shapes.items():
            if self.initial_state[s].shape != shape:
                got = self.initial_state[s].shape
                raise ModelLoadError(f"{folder}: initial {s} has shape {got}, metadata says {shape}")
        graphs = PoolGraphs(lambda model: open_session(model, provider, device_id, 1))
        self.pool = StatePool(self.spec.state_shapes, self.device, graphs, initial_capacity)
        self.backup = StatePool(self.spec.state_shapes, self.device, graphs, lanes, growable=False)
        # Rows that pad a batch to a multiple of ROW_MULTIPLE: they run blank steps, their results unused.
        self._scratch = np.array([self.new_row() for _ in range(ROW_MULTIPLE - 1)], dtype=np.int64)

    # --- sessions' rows -------------------------------------------------------------------------------

    def new_row(self, state: dict[str, np.ndarray] | None = None) -> int:
        """A pool row holding `state` (per-session shapes) or the model's initial state."""
        slot = self.pool.allocate()
        self.pool.write([slot], state or self.initial_state)
        return slot

    def free_row(self, slot: int) -> None:
        self.pool.release(slot)

    def read_row(self, slot: int) -> dict[str, np.ndarray]:
        """One session's state on the host (a copy), per-session shapes."""
        return self.pool.read(slot)

    def save_rows(self, slots: list[int], lanes: list[int]) -> None:
        """Copy rows to backup lanes (device to device), so a multi-step request can be undone."""
        self.backup.copy_rows_from(self.pool, slots, lanes)

    def restore_rows(self, lanes: list[int], slots: list[int]) -> None:
        self.pool.copy_rows_from(self.backup, lanes, slots)

    # --- running --------------------------------------------------------------------------------------

    def _pad(self, slots: np.ndarray) -> np.ndarray:
        """slots (B,) -> (B + pad,): scratch rows up to a multiple of ROW_MULTIPLE."""
        pad = -len(slots) % ROW_MULTIPLE
        return np.concatenate([slots, self._scratch[:pad]]).astype(np.int64) if pad else slots

    def step(self, slots: np.ndarray, x: np.ndarray, attention: bool = False) -> StepResult:
        """One time step of B sessions: slots (B,) int64, x (B, I) float32. Updates their rows in place."""
        batch = len(slots)
        slots = self._pad(slots)
        if len(slots) > batch:
            x = np.concatenate([x, np.zeros((len(slots) - batch, x.shape[1]), dtype=np.float32)])
        state = self.pool.gather(slots)  # six (B', ...) device tensors, B' = B padded
        io = self._step.io_binding()
        io.bind_cpu_input("input", np.ascontiguousarray(x, dtype=np.float32))
        for name, value in zip(STATE_NAMES, state, strict=True):
            io.bind_ortvalue_input(name, value)
        io.bind_output("output", "cpu")
        for name in STATE_NAMES:
            io.bind_output(f"next_{name}", self.device.type, self.device.id)
        self._step.run_with_iobinding(io)
        outputs, *next_state = io.get_outputs()
        result = StepResult(
            outputs.numpy()[:batch],  # (B, O)
            next_state[4].numpy()[:batch] if attention else None,  # (B, R, N)
            next_state[5].numpy()[:batch] if attention else None,  # (B, W, N)
        )
        self.pool.scatter(slots, next_state)
        return result

    def sequence(self, slot: int, xs: np.ndarray, attention: bool = False) -> SequenceResult:
        """T steps of one session in one call (`sequence.onnx`): xs (T, I). Updates its row in place."""
        slots = self._pad(np.array([slot], dtype=np.int64))
        state = self.pool.gather(slots)
        inputs = np.zeros((len(xs), len(slots), xs.shape[1]), dtype=np.float32)  # (T, B', I): row 0 is the session
        inputs[:, 0] = xs
        io = self._sequence.io_binding()
        io.bind_cpu_input("inputs", inputs)
        for name, value in zip(STATE_NAMES, state, strict=True):
            io.bind_ortvalue_input(name, value)
        io.bind_output("outputs", "cpu")
        for name in ("read_attention", "write_attention"):
            if attention:
                io.bind_output(name, "cpu")
            else:
                io.bind_output(name, self.device.type, self.device.id)
        for name in STATE_NAMES:
            io.bind_output(f"next_{name}", self.device.type, self.device.id)
        self._sequence.run_with_iobinding(io)
        outputs, reads, writes, *next_state = io.get_outputs()
        result = SequenceResult(
            outputs.numpy()[:, 0],  # (T, O)
            reads.numpy()[:, 0] if attention else None,  # (T, R, N)
            writes.numpy()[:, 0] if attention else None,  # (T, W, N)
        )
        self.pool.scatter(slots, next_state)
        return result
