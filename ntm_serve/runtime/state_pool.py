"""Per-model state pool: one device tensor per state name, one row (`slot`) per session, and the device-side
row moves (gather, scatter, copy) as onnxruntime calls of the committed helper graphs (ntm_serve/runtime/graphs).
Why a pool, and how it grows: docs/service.md ("State on the device"). Used by one thread only (its model's
batcher).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from ntm_serve.contract import STATE_NAMES
from ntm_serve.runtime.graphs import graph_bytes


@dataclass(frozen=True)
class Device:
    type: str  # "cpu" or "cuda"
    id: int = 0


class PoolGraphs:
    """The three helper graphs, opened with the model's provider."""

    def __init__(self, open_session: Callable[[bytes], ort.InferenceSession]) -> None:
        self.gather = open_session(graph_bytes("gather"))
        self.scatter = open_session(graph_bytes("scatter"))
        self.copy_rows = open_session(graph_bytes("copy_rows"))


def _rows(values: Sequence[int] | np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(values, dtype=np.int64)


class StatePool:
    def __init__(self, shapes: Mapping[str, tuple[int, ...]], device: Device, graphs: PoolGraphs,
                 capacity: int, growable: bool = True) -> None:
        if tuple(shapes) != STATE_NAMES:
            raise ValueError(f"state shapes must be given in the order {STATE_NAMES}")
        self.shapes = dict(shapes)
        self.device = device
        self.graphs = graphs
        self.growable = growable
        self.capacity = capacity
        self.tensors = self._allocate(capacity)
        self._free = list(range(capacity - 1, -1, -1))  # a stack: low rows are used first
        self._used: set[int] = set()

    @property
    def bytes_per_row(self) -> int:
        return 4 * sum(int(np.prod(shape)) for shape in self.shapes.values())

    @property
    def used(self) -> int:
        return len(self._used)

    def _allocate(self, rows: int) -> list[ort.OrtValue]:
        return [ort.OrtValue.ortvalue_from_shape_and_type([rows, *self.shapes[s]], np.float32,
                                                          self.device.type, self.device.id)
                for s in STATE_NAMES]

    def allocate(self) -> int:
        if not self._free:
            if not self.growable:
                raise RuntimeError("state pool is full")
            self._grow(2 * self.capacity)
        slot = self._free.pop()
        self._used.add(slot)
        return slot

    def release(self, slot: int) -> None:
        if slot not in self._used:
            raise ValueError(f"row {slot} is not in use")
        self._used.remove(slot)
        self._free.append(slot)

    def _grow(self, capacity: int) -> None:
        old, old_capacity = self.tensors, self.capacity
        self.tensors = self._allocate(capacity)
        rows = _rows(range(old_capacity))
        self.copy_rows(old, self.tensors, rows, rows)
        self.capacity = capacity
        self._free = list(range(capacity - 1, old_capacity - 1, -1)) + self._free

    # --- device-side moves ----------------------------------------------------------------------------

    def buffers(self, batch: int) -> list[ort.OrtValue]:
        """Six new (batch, ...) device tensors, one per state name (uninitialised)."""
        return self._allocate(batch)

    def gather(self, slots: np.ndarray, out: Sequence[ort.OrtValue] | None = None) -> list[ort.OrtValue]:
        """The rows `slots` (B,) as six (B, ...) device tensors: new ones, or written into `out`."""
        io = self.graphs.gather.io_binding()
        io.bind_cpu_input("slots", _rows(slots))
        for i, (s, pool) in enumerate(zip(STATE_NAMES, self.tensors, strict=True)):
            io.bind_ortvalue_input(f"pool_{s}", pool)
            if out is None:
                io.bind_output(s, self.device.type, self.device.id)
            else:
                io.bind_ortvalue_output(s, out[i])
        self.graphs.gather.run_with_iobinding(io)
        return list(io.get_outputs()) if out is None else list(out)

    def scatter(self, slots: np.ndarray, updates: Sequence[ort.OrtValue] | Mapping[str, np.ndarray]) -> None:
        """Write (B, ...) `updates` (device tensors, or host arrays by name) into rows `slots`, in place."""
        io = self.graphs.scatter.io_binding()
        io.bind_cpu_input("slots", _rows(slots))
        for i, (s, pool) in enumerate(zip(STATE_NAMES, self.tensors, strict=True)):
            io.bind_ortvalue_input(f"pool_{s}", pool)
            if isinstance(updates, Mapping):
                io.bind_cpu_input(f"update_{s}", np.ascontiguousarray(updates[s], dtype=np.float32))
            else:
                io.bind_ortvalue_input(f"update_{s}", updates[i])
            io.bind_ortvalue_output(f"pool_out_{s}", pool)  # the pool itself: ScatterND updates in place
        self.graphs.scatter.run_with_iobinding(io)

    def copy_rows(self, src: Sequence[ort.OrtValue], dst: Sequence[ort.OrtValue], src_rows: Sequence[int] | np.ndarray,
                  dst_rows: Sequence[int] | np.ndarray) -> None:
        """dst[dst_rows] := src[src_rows] for the six state tensors, in place, on the device. Any two tensor
        sets of this pool's row shapes: the pool, its buffers, another pool's tensors.

        On the CPU a tensor's `numpy()` is a view of its memory, and six fancy-index copies cost a third of
        binding twenty names for one onnxruntime call; sessions join and leave the resident batch all the time."""
        if self.device.type == "cpu":
            src_index, dst_index = _rows(src_rows), _rows(dst_rows)
            for a, b in zip(src, dst, strict=True):
                b.numpy()[dst_index] = a.numpy()[src_index]
            return
        io = self.graphs.copy_rows.io_binding()
        io.bind_cpu_input("src_rows", _rows(src_rows))
        io.bind_cpu_input("dst_rows", _rows(dst_rows))
        for s, a, b in zip(STATE_NAMES, src, dst, strict=True):
            io.bind_ortvalue_input(f"src_{s}", a)
            io.bind_ortvalue_input(f"dst_{s}", b)
            io.bind_ortvalue_output(f"dst_out_{s}", b)
        self.graphs.copy_rows.run_with_iobinding(io)

    def copy_rows_from(self, source: StatePool, src_rows: Sequence[int], dst_rows: Sequence[int]) -> None:
        """This pool's rows `dst_rows` := `source`'s rows `src_rows`, device to device."""
        self.copy_rows(source.tensors, self.tensors, src_rows, dst_rows)

    # --- host I/O (session create, import, export: not per step) --------------------------------------

    def write(self, slots: Sequence[int], state: Mapping[str, np.ndarray]) -> None:
        """Rows `slots` := `state` (per-session shapes, broadcast over the rows)."""
        batch = {s: np.broadcast_to(state[s], (len(slots), *self.shapes[s])) for s in STATE_NAMES}
        self.scatter(_rows(slots), batch)

    def read_rows(self, src: Sequence[ort.OrtValue], rows: Sequence[int], names: Sequence[str],
                  out: Mapping[str, np.ndarray], at: Sequence[int]) -> None:
        """out[name][at] := src[name][rows] on the host, for `names` of a tensor set of this pool's row shapes (the
        pool, its buffers). Only those K rows leave the device (one gather call); on the CPU, numpy copies."""
        if self.device.type == "cpu":
            index = _rows(rows)
            for name in names:
                out[name][list(at)] = src[STATE_NAMES.index(name)].numpy()[index]
            return
        io = self.graphs.gather.io_binding()
        io.bind_cpu_input("slots", _rows(rows))
        for s, tensor in zip(STATE_NAMES, src, strict=True):
            io.bind_ortvalue_input(f"pool_{s}", tensor)
            io.bind_output(s, "cpu")
        self.graphs.gather.run_with_iobinding(io)
        values = dict(zip(STATE_NAMES, io.get_outputs(), strict=True))
        for name in names:
            out[name][list(at)] = values[name].numpy()

    def read(self, slot: int) -> dict[str, np.ndarray]:
        """Row `slot` copied to the host, per-session shapes."""
        io = self.graphs.gather.io_binding()
        io.bind_cpu_input("slots", _rows([slot]))
        for s, pool in zip(STATE_NAMES, self.tensors, strict=True):
            io.bind_ortvalue_input(f"pool_{s}", pool)
            io.bind_output(s, "cpu")
        self.graphs.gather.run_with_iobinding(io)
        return {s: value.numpy()[0] for s, value in zip(STATE_NAMES, io.get_outputs(), strict=True)}
