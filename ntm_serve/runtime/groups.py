"""The sessions of one memory size N on one model: their state pool, backup lanes and resident batch.

One onnxruntime call steps sessions of one N (the state is (B, N, M) and (B, H, N)), so an `Engine` keeps one
`MemoryGroup` per N in use: the trained N's, made when the model loads (with its batch buckets and CUDA graphs when
asked), and one per other N, made by its first session and dropped with its last (docs/memory-size.md).
A step of a batch touches only device tensors (the pool, the resident batch's buffers) and brings just
the inputs in and the outputs out. Why every call runs on a multiple of `ROW_MULTIPLE` rows, and how the resident
batch moves sessions in and out: docs/service.md ("State on the device", "Batch invariance"). Used by one thread
only (its model's batcher); not thread-safe.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from ntm_serve.contract import ATTENTION, STATE_NAMES, next_name
from ntm_serve.runtime.buckets import ROW_MULTIPLE, bucket_rows, keeps
from ntm_serve.runtime.cuda_graphs import BucketSteps
from ntm_serve.runtime.state_pool import Device, PoolGraphs, StatePool
from ntm_serve.runtime.stepping import PingPong


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


class MemoryGroup:
    """The device-resident states of one model's sessions of memory size `rows`."""

    def __init__(self, rows: int, shapes: Mapping[str, tuple[int, ...]], initial_state: Mapping[str, np.ndarray],
                 device: Device, graphs: PoolGraphs, step: ort.InferenceSession, sequence: ort.InferenceSession,
                 capacity: int, lanes: int, buckets: tuple[int, ...] = (), cuda_graph: bool = False) -> None:
        """`shapes`: per-session state shapes at N = `rows`; `initial_state`: a new session's state at that N;
        `buckets`, `cuda_graph`: step calls only at these sizes, in fixed buffers, under captured CUDA graphs
        (ntm_serve/runtime/cuda_graphs.py; `step` must then be a CUDA-graph session)."""
        self.rows = rows
        self.shapes = dict(shapes)
        self.initial_state = dict(initial_state)
        self.device = device
        self._step = step
        self._sequence = sequence
        self.pool = StatePool(self.shapes, device, graphs, capacity)
        self.backup = StatePool(self.shapes, device, graphs, lanes, growable=False)
        # Rows that pad a batch to a multiple of ROW_MULTIPLE: they run blank steps, their results unused.
        self._resident: _Resident | None = None
        self._buffers: PingPong | None = None  # reused while the padded batch size is unchanged
        # The last placement: (the slots' bytes, resident, positions (B,), dense); see _positions.
        self._placed: tuple[bytes, _Resident, np.ndarray, bool] | None = None
        self._scratch = np.array([self.new_row() for _ in range(ROW_MULTIPLE - 1)], dtype=np.int64)
        self._buckets = buckets
        self._fixed: BucketSteps | None = None  # with buckets: every bucket's buffers, made (and captured) now
        if buckets:
            self._fixed = BucketSteps(step, buckets, self.pool.buffers, device.type, device.id, cuda_graph)
            self._fixed.capture()

    @property
    def resident_size(self) -> int:
        """Rows of the resident batch's buffers (0: none resident): what the last step calls ran on."""
        return self._resident.size if self._resident is not None else 0

    @property
    def fixed(self) -> BucketSteps | None:
        """The batch buckets' fixed buffers (and CUDA graphs), when this group has them."""
        return self._fixed

    @property
    def sessions(self) -> int:
        """Rows held by sessions (the scratch rows not counted)."""
        return self.pool.used - len(self._scratch)

    # --- sessions' rows -------------------------------------------------------------------------------

    def new_row(self, state: Mapping[str, np.ndarray] | None = None) -> int:
        """A pool row holding `state` (per-session shapes) or the initial state."""
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
        out = {name: np.empty((len(slots), *self.shapes[name]), dtype=np.float32) for name in names}
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
