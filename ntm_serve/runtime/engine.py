"""One served model: its three ONNX graphs in onnxruntime on one provider, and its sessions' device states.

A step of a batch touches only device tensors (the pool, the resident batch's buffers) and brings just the
inputs in and the outputs out. Why every call runs on a multiple of `ROW_MULTIPLE` rows, and how the
resident batch moves sessions in and out: docs/service.md ("State on the device", "Batch invariance").
An `Engine` is used by one thread only (its model's batcher); it is not thread-safe.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from ntm_serve.contract import (
    ATTENTION,
    ATTENTION_OF,
    GRAPH_FILES,
    INITIAL_STATE_OUTPUTS,
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
    next_name,
)
from ntm_serve.runtime.buckets import (  # ROW_MULTIPLE: the row layout, also imported from here
    ROW_MULTIPLE,
    bucket_rows,
    keeps,
)
from ntm_serve.runtime.cuda_graphs import BucketSteps, open_graph_session
from ntm_serve.runtime.ort_session import ProviderUnavailable, SessionSettings, open_session, provider_name
from ntm_serve.runtime.state_pool import Device, PoolGraphs, StatePool
from ntm_serve.runtime.stepping import PingPong

log = logging.getLogger(__name__)


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
    output_activation: str = "sigmoid"  # "softmax": the outputs are a distribution over labels (classification)
    task_metadata: str = ""  # JSON, e.g. one_shot's class split; empty when none

    @property
    def input_size(self) -> int:
        return int(self.config["input_size"])

    @property
    def output_size(self) -> int:
        return int(self.config["output_size"])

    @functools.cached_property
    def _attention_values(self) -> int:
        """Every head's weighting (H, N) of one session-step, read and write: worked out once, not per request."""
        return sum(math.prod(self.state_shapes[state]) for state in ATTENTION_OF.values())

    def answer_values(self, attention: bool) -> int:
        """Values per session-step in an answer: the outputs, and with attention every head's weighting (H, N)."""
        return self.output_size + (self._attention_values if attention else 0)


@dataclass
class _Resident:
    """The sessions of the last step calls, held in two batch-contiguous buffer sets instead of the pool."""

    where: dict[int, int]  # pool row -> its position in the buffers
    free: list[int]  # positions holding no session (padding)
    buffers: PingPong  # P rows, P a multiple of ROW_MULTIPLE (a bucket with buckets); `buffers.state` is current

    @property
    def size(self) -> int:
        return len(self.where) + len(self.free)


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


def read_spec(name: str, props: dict[str, str]) -> ModelSpec:
    config = json.loads(props[META_CONFIG])
    state = json.loads(props[META_STATE])
    names = tuple(entry["name"] for entry in state)
    if names != STATE_NAMES:
        raise ModelLoadError(f"model {name}: state tensors {names}, the contract says {STATE_NAMES}")
    shapes = {entry["name"]: tuple(int(d) for d in entry["shape"][1:]) for entry in state}
    return ModelSpec(
        name=name,
        task=props[META_TASK],
        config=config,
        encoding=props.get(META_ENCODING, ""),
        checkpoint_sha256=props[META_CHECKPOINT],
        state_shapes=shapes,
        output_activation=props.get(META_OUTPUT_ACTIVATION, "sigmoid"),
        task_metadata=props.get(META_TASK_METADATA, ""),
    )


class Engine:
    """A model's onnxruntime sessions and the device-resident states of its sessions."""

    def __init__(self, folder: Path, provider: str, device_id: int = 0, threads: int = 1,
                 initial_capacity: int = 64, lanes: int = 64, name: str | None = None,
                 buckets: tuple[int, ...] = (), cuda_graph: bool = False) -> None:
        """`buckets` (sorted, multiples of ROW_MULTIPLE): step calls run only at these sizes, in fixed buffers;
        `cuda_graph` (CUDA only, needs buckets): each bucket's step under captured CUDA graphs (docs/service.md)."""
        if cuda_graph and (provider != "cuda" or not buckets):
            raise ModelLoadError(f"CUDA graphs need the CUDA provider and batch buckets (provider {provider!r}, "
                                 f"buckets {buckets})")
        self.folder = folder  # `name`: the model's name when the folder is a version folder (models/<name>/<version>)
        self.provider = provider  # "cpu" or "cuda", as asked
        self.execution_provider = provider_name(provider)  # onnxruntime's name for it (what ListModels reports)
        self.device = Device(provider, device_id)
        paths = {graph: folder / file for graph, file in GRAPH_FILES.items()}
        for path in paths.values():
            if not path.is_file():
                raise ModelLoadError(f"{folder}: {path.name} missing")
        # Read each file once: a re-export (atomic renames) between two reads could mix checkpoints.
        data = {graph: path.read_bytes() for graph, path in paths.items()}
        self._step = (open_graph_session(data["step"], device_id, SessionSettings(threads=threads)) if cuda_graph
                      else _open(data["step"], provider, device_id, threads))
        self._sequence = _open(data["sequence"], provider, device_id, threads)
        initial = _open(data["initial_state"], provider, device_id, threads)
        _check_names(self._step, paths["step"], STEP_INPUTS, STEP_OUTPUTS)
        _check_names(self._sequence, paths["sequence"], SEQUENCE_INPUTS, SEQUENCE_OUTPUTS)
        _check_names(initial, paths["initial_state"], (), INITIAL_STATE_OUTPUTS)
        props = {graph: _metadata(s, paths[graph]) for graph, s in
                 (("step", self._step), ("sequence", self._sequence), ("initial_state", initial))}
        hashes = {p[META_CHECKPOINT] for p in props.values()}
        if len(hashes) != 1:
            raise ModelLoadError(f"{folder}: the three graphs come from different checkpoints (re-export it)")
        self.spec = read_spec(name or folder.name, props["step"])
        # The initial state, kept on the host: a new session's row is written from it once.
        values = initial.run(None, {})
        self.initial_state = {s: np.ascontiguousarray(v[0]) for s, v in zip(STATE_NAMES, values, strict=True)}
        for s, shape in self.spec.state_shapes.items():
            if self.initial_state[s].shape != shape:
                got = self.initial_state[s].shape
                raise ModelLoadError(f"{folder}: initial {s} has shape {got}, metadata says {shape}")
        graphs = PoolGraphs(lambda model: _open(model, provider, device_id, 1))
        self.pool = StatePool(self.spec.state_shapes, self.device, graphs, initial_capacity)
        self.backup = StatePool(self.spec.state_shapes, self.device, graphs, lanes, growable=False)
        # Rows that pad a batch to a multiple of ROW_MULTIPLE: they run blank steps, their results unused.
        self._resident: _Resident | None = None
        self._buffers: PingPong | None = None  # reused while the padded batch size is unchanged
        # The last placement: (the slots' bytes, resident, positions (B,), dense); see _positions.
        self._placed: tuple[bytes, _Resident, np.ndarray, bool] | None = None
        self._scratch = np.array([self.new_row() for _ in range(ROW_MULTIPLE - 1)], dtype=np.int64)
        self._buckets = buckets
        self._fixed: BucketSteps | None = None  # with buckets: every bucket's buffers, made (and captured) now
        if buckets:
            self._fixed = BucketSteps(self._step, buckets, self.pool.buffers, self.device.type, device_id, cuda_graph)
            self._fixed.capture()

    # --- sessions' rows -------------------------------------------------------------------------------

    def new_row(self, state: dict[str, np.ndarray] | None = None) -> int:
        """A pool row holding `state` (per-session shapes) or the model's initial state."""
        self.flush()
        slot = self.pool.allocate()
        self.pool.write([slot], state or self.initial_state)
        return slot

    def free_row(self, slot: int) -> None:
        self.flush()
        self.pool.release(slot)

    def read_row(self, slot: int) -> dict[str, np.ndarray]:
        """One session's state on the host (a copy), per-session shapes."""
        self.flush()
        return self.pool.read(slot)

    def peek_rows(self, slots: list[int], names: tuple[str, ...] = STATE_NAMES) -> dict[str, np.ndarray]:
        """The current state `names` of `slots` on the host (copies), (K, ...) each, moving nothing: what a watcher
        sees after a step (ntm_serve/server/watch.py). A session of the resident batch is read from its position
        there (its pool row is stale); the batch stays resident, unlike `read_row`."""
        resident = self._resident
        where = resident.where if resident is not None else {}
        held = [k for k, s in enumerate(slots) if s in where]
        rest = [k for k, s in enumerate(slots) if s not in where]
        out = {name: np.empty((len(slots), *self.spec.state_shapes[name]), dtype=np.float32) for name in names}
        if held and resident is not None:
            self.pool.read_rows(resident.buffers.state, [where[slots[k]] for k in held], names, out, held)
        if rest:
            self.pool.read_rows(self.pool.tensors, [slots[k] for k in rest], names, out, rest)
        return out

    def save_rows(self, slots: list[int], lanes: list[int]) -> None:
        """Copy rows to backup lanes (device to device), so a multi-step request can be undone. A session
        of the resident batch is copied from its position there (its pool row is stale)."""
        resident = self._resident
        where = resident.where if resident is not None else {}
        held = [(where[s], lane) for s, lane in zip(slots, lanes, strict=True) if s in where]
        rest = [(s, lane) for s, lane in zip(slots, lanes, strict=True) if s not in where]
        if held and resident is not None:
            self.pool.copy_rows(resident.buffers.state, self.backup.tensors, [p for p, _ in held],
                                [lane for _, lane in held])
        if rest:
            self.backup.copy_rows_from(self.pool, [s for s, _ in rest], [lane for _, lane in rest])

    def restore_rows(self, lanes: list[int], slots: list[int]) -> None:
        self.flush()
        self.pool.copy_rows_from(self.backup, lanes, slots)

    def flush(self) -> None:
        """Write the resident sessions' state back to their pool rows; the pool is then the whole truth."""
        resident, self._resident = self._resident, None
        self._placed = None
        if resident is not None and resident.where:
            self.pool.copy_rows(resident.buffers.state, self.pool.tensors, list(resident.where.values()),
                                list(resident.where))

    # --- running --------------------------------------------------------------------------------------

    def _pad(self, slots: np.ndarray) -> np.ndarray:
        """slots (B,) -> (B + pad,): scratch rows up to a multiple of ROW_MULTIPLE."""
        pad = -len(slots) % ROW_MULTIPLE
        return np.concatenate([slots, self._scratch[:pad]]).astype(np.int64) if pad else slots

    def _rebuild(self, slots: list[int]) -> _Resident:
        """Write the old resident batch back and gather `slots` into positions 0..B-1 of (reused) buffers
        of B padded to ROW_MULTIPLE rows (or to its bucket); the padding positions start from scratch rows."""
        self.flush()
        size = bucket_rows(len(slots) + (-len(slots) % ROW_MULTIPLE), self._buckets)
        if self._buffers is None or self._buffers.rows != size:
            self._buffers = (self._fixed.buffers(size) if self._fixed is not None else
                             PingPong(self._step, self.pool.buffers(size), self.pool.buffers(size),
                                      self.device.type, self.device.id))
        pad = np.resize(self._scratch, size - len(slots))  # the scratch rows, repeated when a bucket needs more
        rows = np.concatenate([np.asarray(slots, dtype=np.int64), pad])
        self.pool.gather(rows, out=self._buffers.state)
        self._placed = None
        self._resident = _Resident(dict(zip(slots, range(len(slots)), strict=True)),
                                   list(range(size - 1, len(slots) - 1, -1)), self._buffers)
        return self._resident

    def _place(self, slots: list[int]) -> _Resident:
        """A resident batch holding exactly `slots`: the current one with leavers copied back to the pool
        and joiners copied in, or a rebuilt one when they do not fit or would leave it too empty (`keeps`)."""
        resident = self._resident
        need = len(slots) + (-len(slots) % ROW_MULTIPLE)
        if resident is None or not keeps(resident.size, need, self._buckets):
            return self._rebuild(slots)
        self._placed = None  # positions move below
        members = set(slots)
        leaving = [s for s in resident.where if s not in members]
        if leaving:
            positions = [resident.where.pop(s) for s in leaving]
            self.pool.copy_rows(resident.buffers.state, self.pool.tensors, positions, leaving)
            resident.free.extend(positions)  # the stale rows stay there as padding
        joining = [s for s in slots if s not in resident.where]
        if joining:
            positions = [resident.free.pop() for _ in joining]
            self.pool.copy_rows(self.pool.tensors, resident.buffers.state, joining, positions)
            resident.where.update(zip(joining, positions, strict=True))
        return resident

    def _positions(self, slots: np.ndarray) -> tuple[_Resident, np.ndarray, bool]:
        """The resident batch holding `slots`, their positions in it (B,), and whether those are exactly
        0..B-1 of B rows (no holes: the inputs go in as they are). The same slots as last time, with nothing
        moved since, are not placed again: the batcher steps one frame many times, and a client that packs the
        same sessions into every message sends the same slots every tick (compared by their bytes)."""
        key = slots.tobytes()
        cached = self._placed
        if cached is not None and cached[0] == key and cached[1] is self._resident:
            return cached[1], cached[2], cached[3]
        rows = slots.tolist()
        resident = self._place(rows)
        where = resident.where
        positions = np.fromiter((where[s] for s in rows), dtype=np.int64, count=len(rows))  # (B,)
        dense = resident.size == len(rows) and bool((positions == np.arange(len(rows))).all())
        self._placed = (key, resident, positions, dense)
        return resident, positions, dense

    def step(self, slots: np.ndarray, x: np.ndarray, attention: bool = False) -> StepResult:
        """One time step of B sessions: slots (B,) int64 (distinct), x (B, I) float32. Advances their state."""
        resident, positions, dense = self._positions(slots)
        if dense:
            padded = x  # (P, I) = (B, I)
        else:
            padded = np.zeros((resident.size, x.shape[1]), dtype=np.float32)  # (P, I): holes step on zeros
            padded[positions] = x
        buffers = resident.buffers
        outputs = buffers.step(padded)  # on failure the current state is untouched: nothing was applied
        # Fancy indexing copies: the buffers are overwritten by later steps.
        return StepResult(
            outputs.numpy()[positions],  # (B, O)
            buffers.tensor("read_weights").numpy()[positions] if attention else None,  # (B, R, N)
            buffers.tensor("write_weights").numpy()[positions] if attention else None,  # (B, W, N)
        )

    def sequence(self, slot: int, xs: np.ndarray, attention: bool = False) -> SequenceResult:
        """T steps of one session in one call (`sequence.onnx`): xs (T, I). Updates its row in place."""
        self.flush()
        slots = self._pad(np.array([slot], dtype=np.int64))
        state = self.pool.gather(slots)
        inputs = np.zeros((len(xs), len(slots), xs.shape[1]), dtype=np.float32)  # (T, B', I): row 0 is the session
        inputs[:, 0] = xs
        io = self._sequence.io_binding()
        io.bind_cpu_input("inputs", inputs)
        for name, value in zip(STATE_NAMES, state, strict=True):
            io.bind_ortvalue_input(name, value)
        io.bind_output("outputs", "cpu")
        for name in ATTENTION:
            if attention:
                io.bind_output(name, "cpu")
            else:
                io.bind_output(name, self.device.type, self.device.id)
        for name in STATE_NAMES:
            io.bind_output(next_name(name), self.device.type, self.device.id)
        self._sequence.run_with_iobinding(io)
        outputs, reads, writes, *next_state = io.get_outputs()
        result = SequenceResult(
            outputs.numpy()[:, 0],  # (T, O)
            reads.numpy()[:, 0] if attention else None,  # (T, R, N)
            writes.numpy()[:, 0] if attention else None,  # (T, W, N)
        )
        self.pool.scatter(slots, next_state)
        return result
