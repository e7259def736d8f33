"""One served model: its three ONNX graphs in onnxruntime on one provider, and its sessions' device states, one
`MemoryGroup` per memory size N in use (ntm_serve/runtime/groups.py: the pool, the resident batch, the step calls).

The graphs run on any N in the range their export declares (issue 24); every row method takes the session's N as
`rows` (0: the trained N). An `Engine` is used by one thread only (its model's batcher); it is not thread-safe,
except `initial_state_at`, which any thread may call.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from ntm_serve.contract import (
    ATTENTION_OF,
    GRAPH_FILES,
    INITIAL_STATE_OUTPUTS,
    MEMORY_ROWS,
    META_CHECKPOINT,
    META_CONFIG,
    META_ENCODING,
    META_OUTPUT_ACTIVATION,
    META_STATE,
    META_TASK,
    META_TASK_METADATA,
    SEQUENCE_INPUTS,
    SEQUENCE_OUTPUTS,
    SERVED_KEYS,
    STATE_NAMES,
    STEP_INPUTS,
    STEP_OUTPUTS,
)
from ntm_serve.runtime.buckets import ROW_MULTIPLE  # the row layout, also imported from here
from ntm_serve.runtime.cuda_graphs import BucketSteps, open_graph_session
from ntm_serve.runtime.groups import MemoryGroup, SequenceResult, StepResult
from ntm_serve.runtime.memory_rows import declared_range, rows_axes, rows_in, shapes_at
from ntm_serve.runtime.ort_session import ProviderUnavailable, SessionSettings, open_session, provider_name
from ntm_serve.runtime.state_pool import Device, PoolGraphs, StatePool

__all__ = ["ROW_MULTIPLE", "Engine", "ModelLoadError", "ModelSpec", "SequenceResult", "StepResult",
           "resolve_provider"]

log = logging.getLogger(__name__)

SMALL_GROUP_ROWS = 2 * ROW_MULTIPLE  # the first pool size of a memory group made at run time (it doubles as needed)


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
    state_shapes: dict[str, tuple[int, ...]]  # per session at the trained N, no batch dimension, STATE_NAMES order
    output_activation: str = "sigmoid"  # "softmax": the outputs are a distribution over labels (classification)
    task_metadata: str = ""  # JSON, e.g. one_shot's class split; empty when none
    rows_range: tuple[int, int] = (0, 0)  # the memory sizes N the graphs run on; (0, 0): the trained N only
    rows_axes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)  # per state tensor, its axes of length N

    @property
    def input_size(self) -> int:
        return int(self.config["input_size"])

    @property
    def output_size(self) -> int:
        return int(self.config["output_size"])

    @property
    def trained_rows(self) -> int:
        """The memory size N the model was trained at: a session's default."""
        return int(self.config["memory_rows"])

    @property
    def memory_rows(self) -> tuple[int, int]:
        """[min, max] N the graphs run on: (trained, trained) for graphs exported before N was free."""
        return self.rows_range if self.rows_range != (0, 0) else (self.trained_rows, self.trained_rows)

    def runs_on(self, rows: int) -> bool:
        low, high = self.memory_rows
        return low <= rows <= high

    def shapes_at(self, rows: int) -> dict[str, tuple[int, ...]]:
        """The per-session state shapes at N = `rows` (0: the trained N)."""
        if not rows or rows == self.trained_rows:
            return self.state_shapes
        return shapes_at(self.state_shapes, self.rows_axes, rows)

    def state_bytes(self, rows: int = 0) -> int:
        """Bytes of one session's state (float32) at N = `rows` (0: the trained N)."""
        return 4 * sum(math.prod(shape) for shape in self.shapes_at(rows).values())

    def rows_of(self, shapes: Mapping[str, tuple[int, ...]]) -> int | None:
        """The N a state of these shapes has (its memory's rows), or None when its tensors disagree on it. A model
        of one fixed N: its trained N (whether the shapes fit is for the caller to check)."""
        if not self.rows_axes:
            return self.trained_rows
        found = rows_in(shapes, self.rows_axes)
        return found.pop() if len(found) == 1 else None

    @functools.cached_property
    def _attention_values(self) -> int:
        """Every head's weighting (H, N) of one session-step, read and write: worked out once, not per request."""
        return sum(math.prod(self.state_shapes[state]) for state in ATTENTION_OF.values())

    def answer_values(self, attention: bool, rows: int = 0) -> int:
        """Values per session-step in an answer: the outputs, and with attention every head's weighting (H, N) at
        N = `rows` (0: the trained N)."""
        if not attention:
            return self.output_size
        if not rows or rows == self.trained_rows:
            return self.output_size + self._attention_values
        shapes = self.shapes_at(rows)
        return self.output_size + sum(math.prod(shapes[state]) for state in ATTENTION_OF.values())


def _open(model: str | Path | bytes, provider: str, device_id: int, threads: int) -> ort.InferenceSession:
    """A session with the server's settings; a provider that does not load is a ModelLoadError."""
    try:
        return open_session(model, provider, SessionSettings(threads=threads), device_id)
    except ProviderUnavailable as err:
        raise ModelLoadError(str(err)) from err


def resolve_provider(choice: str, device_id: int, probe: Path) -> str:
    """'auto' -> 'cuda' when a real CUDA session loads `probe`, else 'cpu'; 'cuda' fails loudly; 'cpu' is cpu.
    Logs one line: the provider that runs and why (no onnxruntime error on a machine without a GPU)."""
    if choice == "cpu":
        reason = "--provider cpu"
    elif choice == "cuda":
        _open(probe, "cuda", device_id, 1)  # ModelLoadError with the reason when CUDA does not load
        reason = f"--provider cuda: CUDA loads on device {device_id}"
    else:
        try:
            _open(probe, "cuda", device_id, 1)
        except Exception as err:  # any failure to bring CUDA up means: run on CPU
            why = err.__cause__.why if isinstance(err.__cause__, ProviderUnavailable) else str(err)
            choice, reason = "cpu", f"--provider auto: {why}"
        else:
            choice, reason = "cuda", f"--provider auto: CUDA loads on device {device_id}"
    log.info("execution provider %s", choice, extra={"provider": choice, "reason": reason})
    return choice


def _metadata(session: ort.InferenceSession, path: Path) -> dict[str, str]:
    props = dict(session.get_modelmeta().custom_metadata_map)
    for key in SERVED_KEYS:
        if key not in props:
            raise ModelLoadError(f"{path}: metadata key {key!r} missing (docs/onnx-contract.md)")
    return props


def _check_names(session: ort.InferenceSession, path: Path, inputs: tuple[str, ...], outputs: tuple[str, ...]) -> None:
    got_in = tuple(i.name for i in session.get_inputs())
    got_out = tuple(o.name for o in session.get_outputs())
    if got_in != inputs or got_out != outputs:
        raise ModelLoadError(f"{path}: inputs {got_in} and outputs {got_out}, the contract says {inputs} {outputs}")


def read_spec(name: str, props: dict[str, str], axes: Mapping[str, tuple[int, ...]] | None = None) -> ModelSpec:
    """The spec from a graph's metadata; `axes`: the state's N axes, from the graph's own inputs (rows_axes)."""
    config = json.loads(props[META_CONFIG])
    state = json.loads(props[META_STATE])
    names = tuple(entry["name"] for entry in state)
    if names != STATE_NAMES:
        raise ModelLoadError(f"model {name}: state tensors {names}, the contract says {STATE_NAMES}")
    shapes = {entry["name"]: tuple(int(d) for d in entry["shape"][1:]) for entry in state}
    try:
        low, high = declared_range(props, int(config["memory_rows"]))
    except ValueError as err:
        raise ModelLoadError(f"model {name}: {err}") from err
    if (low, high) != (config["memory_rows"],) * 2 and not axes:
        raise ModelLoadError(f"model {name}: its metadata says it runs on {low} to {high} memory rows, but its graphs "
                             f"have a fixed N (no {'N'!r} dimension in their state inputs): re-export it")
    return ModelSpec(
        name=name,
        task=props[META_TASK],
        config=config,
        encoding=props.get(META_ENCODING, ""),
        checkpoint_sha256=props[META_CHECKPOINT],
        state_shapes=shapes,
        output_activation=props.get(META_OUTPUT_ACTIVATION, "sigmoid"),
        task_metadata=props.get(META_TASK_METADATA, ""),
        rows_range=(low, high),
        rows_axes=dict(axes or {}),
    )


def _graph_axes(session: ort.InferenceSession) -> dict[str, tuple[int, ...]]:
    return rows_axes((i.name, i.shape) for i in session.get_inputs())


class Engine:
    """A model's onnxruntime sessions and the device-resident states of its sessions, by memory size."""

    def __init__(self, folder: Path, provider: str, device_id: int = 0, threads: int = 1,
                 initial_capacity: int = 64, lanes: int = 64, name: str | None = None,
                 buckets: tuple[int, ...] = (), cuda_graph: bool = False) -> None:
        """`buckets` (sorted, multiples of ROW_MULTIPLE): the trained N's step calls run only at these sizes, in
        fixed buffers; `cuda_graph` (CUDA only, needs buckets): each bucket's step under captured CUDA graphs
        (docs/service.md). Sessions of another N run without either (their groups come and go)."""
        if cuda_graph and (provider != "cuda" or not buckets):
            raise ModelLoadError(f"CUDA graphs need the CUDA provider and batch buckets (provider {provider!r}, "
                                 f"buckets {buckets})")
        self.folder = folder  # `name`: the model's name when the folder is a version folder (models/<name>/<version>)
        self.provider = provider  # "cpu" or "cuda", as asked
        self.execution_provider = provider_name(provider)  # onnxruntime's name for it (what ListModels reports)
        self.device = Device(provider, device_id)
        self._threads = threads
        paths = {graph: folder / file for graph, file in GRAPH_FILES.items()}
        for path in paths.values():
            if not path.is_file():
                raise ModelLoadError(f"{folder}: {path.name} missing")
        # Read each file once: a re-export (atomic renames) between two reads could mix checkpoints.
        data = {graph: path.read_bytes() for graph, path in paths.items()}
        self._step = (open_graph_session(data["step"], device_id, SessionSettings(threads=threads)) if cuda_graph
                      else _open(data["step"], provider, device_id, threads))
        self._step_bytes = data["step"] if cuda_graph else b""  # for a plain session: other N run without graphs
        self._plain_step: ort.InferenceSession | None = None if cuda_graph else self._step
        self._sequence = _open(data["sequence"], provider, device_id, threads)
        self._initial = _open(data["initial_state"], provider, device_id, threads)
        _check_names(self._step, paths["step"], STEP_INPUTS, STEP_OUTPUTS)
        _check_names(self._sequence, paths["sequence"], SEQUENCE_INPUTS, SEQUENCE_OUTPUTS)
        _check_names(self._initial, paths["initial_state"], (), INITIAL_STATE_OUTPUTS)
        props = {graph: _metadata(s, paths[graph]) for graph, s in
                 (("step", self._step), ("sequence", self._sequence), ("initial_state", self._initial))}
        hashes = {p[META_CHECKPOINT] for p in props.values()}
        if len(hashes) != 1:
            raise ModelLoadError(f"{folder}: the three graphs come from different checkpoints (re-export it)")
        axes = _graph_axes(self._step)
        if axes != _graph_axes(self._sequence):
            raise ModelLoadError(f"{folder}: the step and sequence graphs disagree on the memory size's axes")
        self.spec = read_spec(name or folder.name, props["step"], axes)
        low, high = self.spec.memory_rows
        overridable = {i.name for i in self._initial.get_overridable_initializers()}
        if low < high and MEMORY_ROWS not in overridable:
            raise ModelLoadError(f"{folder}: initial_state.onnx takes no {MEMORY_ROWS!r} (the model says it runs on "
                                 f"{low} to {high} memory rows): re-export it")
        self._initials: dict[int, dict[str, np.ndarray]] = {}
        # The initial state, kept on the host: a new session's row is written from it once.
        self.initial_state = self.initial_state_at(self.spec.trained_rows)
        self._graphs = PoolGraphs(lambda model: _open(model, provider, device_id, 1))
        self._lanes = lanes
        trained = self.spec.trained_rows
        self.default = MemoryGroup(trained, self.spec.state_shapes, self.initial_state, self.device, self._graphs,
                                   self._step, self._sequence, initial_capacity, lanes, buckets, cuda_graph)
        self.groups: dict[int, MemoryGroup] = {trained: self.default}  # N -> its sessions' group

    # --- memory sizes ---------------------------------------------------------------------------------

    def initial_state_at(self, rows: int) -> dict[str, np.ndarray]:
        """A new session's state at N = `rows` (0: the trained N), on the host, per-session shapes. Any thread
        (onnxruntime's run is thread-safe; a state is computed at most a few times, then cached)."""
        rows = rows or self.spec.trained_rows
        found = self._initials.get(rows)
        if found is not None:
            return found
        if not self.spec.runs_on(rows):
            low, high = self.spec.memory_rows
            raise ValueError(f"model {self.spec.name} runs on {low} to {high} memory rows, not {rows}")
        feeds = {} if rows == self.spec.trained_rows else {MEMORY_ROWS: np.array(rows, dtype=np.int64)}
        values = self._initial.run(None, feeds)
        state = {s: np.ascontiguousarray(v[0]) for s, v in zip(STATE_NAMES, values, strict=True)}
        for s, shape in self.spec.shapes_at(rows).items():
            if state[s].shape != shape:
                raise ModelLoadError(f"{self.folder}: initial {s} at {rows} memory rows has shape {state[s].shape}, "
                                     f"the metadata says {shape}")
        self._initials[rows] = state
        return state

    def group(self, rows: int = 0) -> MemoryGroup:
        """The sessions of N = `rows` (0: the trained N), made on first use."""
        found = self.groups.get(rows or self.spec.trained_rows)
        return found if found is not None else self._new_group(rows)

    def _new_group(self, rows: int) -> MemoryGroup:
        if self._plain_step is None:  # the CUDA-graph session captures only the trained N's fixed buffers
            self._plain_step = _open(self._step_bytes, self.provider, self.device.id, self._threads)
        group = MemoryGroup(rows, self.spec.shapes_at(rows), self.initial_state_at(rows), self.device, self._graphs,
                            self._plain_step, self._sequence, SMALL_GROUP_ROWS, self._lanes)
        self.groups[rows] = group
        log.info("memory group made", extra={"model": self.spec.name, "memory_rows": rows})
        return group

    def holds(self, rows: int) -> bool:
        """Whether sessions of N = `rows` (0: the trained N) have a group here now."""
        return (rows or self.spec.trained_rows) in self.groups

    # --- sessions' rows (of the group of N = `rows`; 0: the trained N) -------------------------------------

    def new_row(self, state: dict[str, np.ndarray] | None = None, rows: int = 0) -> int:
        """A pool row holding `state` (per-session shapes at that N) or the initial state."""
        return self.group(rows).new_row(state)

    def free_row(self, slot: int, rows: int = 0) -> None:
        """Free a session's row; a group of another N than the trained one goes with its last session."""
        group = self.group(rows)
        group.free_row(slot)
        if group is not self.default and group.sessions == 0:
            del self.groups[group.rows]
            log.info("memory group freed", extra={"model": self.spec.name, "memory_rows": group.rows})

    def read_row(self, slot: int, rows: int = 0) -> dict[str, np.ndarray]:
        return self.group(rows).read_row(slot)

    def peek_rows(self, slots: list[int], names: tuple[str, ...] = STATE_NAMES, rows: int = 0) -> dict[str, np.ndarray]:
        return self.group(rows).peek_rows(slots, names)

    def save_rows(self, slots: list[int], lanes: list[int], rows: int = 0) -> None:
        self.group(rows).save_rows(slots, lanes)

    def restore_rows(self, lanes: list[int], slots: list[int], rows: int = 0) -> None:
        self.group(rows).restore_rows(lanes, slots)

    def flush(self) -> None:
        for group in self.groups.values():
            group.flush()

    def step(self, slots: np.ndarray, x: np.ndarray, attention: bool = False, rows: int = 0) -> StepResult:
        """One time step of B sessions of one N: slots (B,) int64 (distinct), x (B, I) float32."""
        return self.group(rows).step(slots, x, attention)

    def sequence(self, slot: int, xs: np.ndarray, attention: bool = False, rows: int = 0) -> SequenceResult:
        """T steps of one session in one call (`sequence.onnx`): xs (T, I). Updates its row in place."""
        return self.group(rows).sequence(slot, xs, attention)

    # --- the trained N's group, as before groups (tests and benchmarks look at these) -----------------------

    @property
    def pool(self) -> StatePool:
        return self.default.pool

    @property
    def backup(self) -> StatePool:
        return self.default.backup

    @property
    def resident_size(self) -> int:
        return self.default.resident_size

    @property
    def fixed(self) -> BucketSteps | None:
        return self.default.fixed
