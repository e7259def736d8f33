"""The requests of one step call, laid out so that a step costs a few numpy operations, not a loop over sessions.

Continuous batching keeps the same requests together for many steps (a 20-step message stays in the batch
for 20 calls), while a few others finish and join around them. A `BatchFrame` holds every request's inputs and
outputs in flat arenas, each request's rows contiguous, and where each request stands as vectors: a step
gathers the batch's inputs with one fancy index, scatters its outputs with one more, and finds the finished
requests with one comparison. Requests leave by a mask over those vectors and join by appending rows, so a
join or a leave costs work for that request only; rows are never rewritten (a finished request's outputs,
handed to its caller, are a view of them), and a full arena is replaced by a fresh one holding only the
requests in progress (docs/service.md, "Continuous batching").
"""

from __future__ import annotations

import numpy as np

from service.jobs import Progress, StepJob

_EMPTY = np.empty(0, dtype=np.int64)


def _frozen(values: np.ndarray) -> np.ndarray:
    values.flags.writeable = False  # the engine keys a cached placement on this very array
    return values


class BatchFrame:
    """The batch's requests, in batch order, over flat (rows, ...) arenas. Used by the batcher thread only."""

    def __init__(self, input_size: int, output_size: int, rows: int = 4096) -> None:
        self.input_size, self.output_size = input_size, output_size
        self.progress: list[Progress] = []
        self.jobs: list[StepJob] = []
        self.offsets = self.t = self.lengths = _EMPTY  # (B,) each: first row, steps applied, steps in all
        self.slots = _frozen(_EMPTY.copy())  # (B,) the sessions' pool rows
        self.attention = False  # whether any request asked for the heads' weightings
        self._inputs = np.empty((rows, input_size), dtype=np.float32)  # arena (rows, I)
        self._outputs = np.empty((rows, output_size), dtype=np.float32)  # arena (rows, O)
        self._reads: np.ndarray | None = None  # arenas (rows, R|W, N), once a request asks for attention
        self._writes: np.ndarray | None = None
        self._used = 0  # arena rows handed out

    def __len__(self) -> int:
        return len(self.jobs)

    # --- membership ----------------------------------------------------------------------------------

    def add(self, joining: list[Progress]) -> None:
        """Append requests to the batch; each gets its rows (its results so far copied there)."""
        need = sum(p.job.steps for p in joining)
        if self._used + need > len(self._inputs):
            self._renew(need)
        starts = []
        for p in joining:
            rows = slice(self._used, self._used + p.job.steps)
            self._used += p.job.steps
            starts.append(rows.start)
            self._inputs[rows] = p.job.inputs
            self._outputs[rows][: p.t] = p.outputs[: p.t]
            p.outputs = self._outputs[rows]
            if p.read_weights is not None and p.write_weights is not None:
                reads, writes = self._attention_arenas(p.read_weights.shape[1:], p.write_weights.shape[1:])
                reads[rows][: p.t] = p.read_weights[: p.t]
                writes[rows][: p.t] = p.write_weights[: p.t]
                p.read_weights, p.write_weights = reads[rows], writes[rows]
                self.attention = True
        count = len(joining)
        self.progress = self.progress + joining
        self.jobs = self.jobs + [p.job for p in joining]
        self.offsets = np.concatenate([self.offsets, np.asarray(starts, dtype=np.int64)])
        self.t = np.concatenate([self.t, np.fromiter((p.t for p in joining), dtype=np.int64, count=count)])
        self.lengths = np.concatenate([self.lengths,
                                       np.fromiter((p.job.steps for p in joining), dtype=np.int64, count=count)])
        self.slots = _frozen(np.concatenate(
            [self.slots, np.fromiter((p.job.session.slot for p in joining), dtype=np.int64, count=count)]))

    def remove(self, positions: np.ndarray) -> list[Progress]:
        """Take the requests at batch `positions` out (their Progress gets its final step count); returns them."""
        keep = np.ones(len(self.jobs), dtype=bool)
        keep[positions] = False
        leaving = []
        for b, t in zip(positions.tolist(), self.t[positions].tolist(), strict=True):
            self.progress[b].t = t
            leaving.append(self.progress[b])
        kept = keep.tolist()
        self.progress = [p for p, k in zip(self.progress, kept, strict=True) if k]
        self.jobs = [p.job for p in self.progress]
        self.offsets, self.t, self.lengths = self.offsets[keep], self.t[keep], self.lengths[keep]
        self.slots = _frozen(self.slots[keep])
        self.attention = any(p.read_weights is not None for p in self.progress)
        return leaving

    def clear(self) -> None:
        """Forget every request (after a failed step: the batcher has settled them)."""
        self.remove(np.arange(len(self.jobs)))

    def _attention_arenas(self, read_shape: tuple[int, ...], write_shape: tuple[int, ...]
                          ) -> tuple[np.ndarray, np.ndarray]:
        if self._reads is None or self._writes is None:
            self._reads = np.zeros((len(self._inputs), *read_shape), dtype=np.float32)
            self._writes = np.zeros((len(self._inputs), *write_shape), dtype=np.float32)
        return self._reads, self._writes

    def _renew(self, need: int) -> None:
        """Fresh arenas holding only the requests in progress, with room for `need` more rows."""
        self.sync()
        progress = self.progress
        live = int(self.lengths.sum())
        size = max(len(self._inputs), 2 * (live + need))
        self._inputs = np.empty((size, self.input_size), dtype=np.float32)
        self._outputs = np.empty((size, self.output_size), dtype=np.float32)
        self._reads = self._writes = None
        self._used = 0
        self.progress, self.jobs = [], []
        self.offsets = self.t = self.lengths = _EMPTY
        self.slots = _frozen(_EMPTY.copy())
        self.attention = False
        if progress:
            self.add(progress)

    # --- stepping ------------------------------------------------------------------------------------

    def holds(self, batch: list[StepJob]) -> bool:
        """Whether `batch` starts with exactly this frame's requests, in order (the rest are joining)."""
        return batch[: len(self.jobs)] == self.jobs  # StepJob compares by identity: a C loop over two lists

    def inputs_now(self) -> np.ndarray:
        """(B, I): every request's input for its next step."""
        return self._inputs[self.offsets + self.t]

    def record(self, outputs: np.ndarray, reads: np.ndarray | None, writes: np.ndarray | None) -> np.ndarray:
        """Store one step's results (outputs (B, O); the heads' weightings (B, R|W, N) when asked), advance
        every request by a step, and return the batch positions of the requests that are now finished."""
        rows = self.offsets + self.t  # (B,)
        self._outputs[rows] = outputs
        if self._reads is not None and self._writes is not None and reads is not None and writes is not None:
            self._reads[rows] = reads
            self._writes[rows] = writes
        self.t = self.t + 1
        return np.flatnonzero(self.t == self.lengths)

    def sync(self) -> None:
        """Write each request's step count back to its Progress."""
        for p, t in zip(self.progress, self.t.tolist(), strict=True):
            p.t = t
