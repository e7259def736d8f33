"""The requests of one step call, laid out so that a step costs a few numpy operations, not a loop over sessions.

Continuous batching keeps the same requests together for many steps (a 20-step message stays in the batch
for 20 calls), while a few others finish and join around them. A `BatchFrame` holds every request's inputs and
outputs in flat arenas, each request's rows contiguous, and where each request stands as vectors: a step
gathers the batch's inputs with one fancy index, scatters its outputs with one more, and finds the finished
requests with one comparison. Requests leave by a mask over those vectors and join by appending rows, so a
join or a leave costs work for that request only; rows are never rewritten (a finished request's outputs,
handed to its caller, are a view of them), and a full arena is replaced by a fresh one holding only the
requests in progress (docs/service.md, "Continuous batching").

A request has one row per step for each of its sessions: one for a session's own request, E for a packed message
of E sessions (StreamPackedSteps), whose sessions step side by side and finish together. The per-row vectors
(offsets, t, lengths, slots) have one entry per session in the batch; `first` and `spans` say which of them
belong to which request, so a packed message joins, steps and leaves with numpy operations over its E rows.
"""

from __future__ import annotations

import numpy as np

from ntm_serve.server.jobs import Progress, RowJob

_EMPTY = np.empty(0, dtype=np.int64)


class BatchFrame:
    """The batch's requests, in batch order, over flat (rows, ...) arenas. Used by the batcher thread only."""

    def __init__(self, input_size: int, output_size: int, rows: int = 4096) -> None:
        self.input_size, self.output_size = input_size, output_size
        self.progress: list[Progress] = []
        self.jobs: list[RowJob] = []
        self.offsets = self.t = self.lengths = _EMPTY  # (B,) per session row: first arena row, steps applied, in all
        self.slots = _EMPTY  # (B,) the sessions' pool rows
        self.first = self.spans = _EMPTY  # (J,) per request: its first position in the (B,) vectors, its sessions
        self.attention = False  # whether any request asked for the heads' weightings
        self._inputs = np.empty((rows, input_size), dtype=np.float32)  # arena (rows, I)
        self._outputs = np.empty((rows, output_size), dtype=np.float32)  # arena (rows, O)
        self._reads: np.ndarray | None = None  # arenas (rows, R|W, N), once a request asks for attention
        self._writes: np.ndarray | None = None
        self._used = 0  # arena rows handed out

    def __len__(self) -> int:
        return len(self.jobs)

    @property
    def rows(self) -> int:
        """Sessions stepped per call (B)."""
        return len(self.slots)

    # --- membership ----------------------------------------------------------------------------------

    def add(self, joining: list[Progress]) -> None:
        """Append requests to the batch; each gets its rows (its results so far copied there)."""
        need = sum(p.job.rows * p.job.steps for p in joining)
        if self._used + need > len(self._inputs):
            self._renew(need)
        offsets: list[int] = []
        t: list[int] = []
        lengths: list[int] = []
        slots: list[int] = []
        for p in joining:
            job = p.job
            steps, count = job.steps, job.rows
            rows = slice(self._used, self._used + count * steps)  # entry-major: entry e's steps are contiguous
            self._used = rows.stop
            offsets.extend(range(rows.start, rows.stop, steps))
            t.extend([p.t] * count)
            lengths.extend([steps] * count)
            slots.extend([s.slot for s in job.sessions])
            self._inputs[rows] = job.inputs.reshape(count * steps, self.input_size)
            p.outputs = _carry(self._outputs[rows], p.outputs, count, p.t)
            if p.read_weights is not None and p.write_weights is not None:
                reads, writes = self._attention_arenas(p.read_weights.shape[1:], p.write_weights.shape[1:])
                p.read_weights = _carry(reads[rows], p.read_weights, count, p.t)
                p.write_weights = _carry(writes[rows], p.write_weights, count, p.t)
                self.attention = True
        spans = np.fromiter((p.job.rows for p in joining), dtype=np.int64, count=len(joining))
        self.progress = self.progress + joining
        self.jobs = self.jobs + [p.job for p in joining]
        self.first = np.concatenate([self.first, len(self.slots) + np.cumsum(spans) - spans])
        self.spans = np.concatenate([self.spans, spans])
        self.offsets = np.concatenate([self.offsets, np.asarray(offsets, dtype=np.int64)])
        self.t = np.concatenate([self.t, np.asarray(t, dtype=np.int64)])
        self.lengths = np.concatenate([self.lengths, np.asarray(lengths, dtype=np.int64)])
        self.slots = np.concatenate([self.slots, np.asarray(slots, dtype=np.int64)])

    def remove(self, positions: np.ndarray) -> list[Progress]:
        """Take the requests at `positions` (of `jobs`) out (their Progress gets its final step count); returns
        them."""
        keep = np.ones(len(self.jobs), dtype=bool)
        keep[positions] = False
        leaving = []
        for j, t in zip(positions.tolist(), self.t[self.first[positions]].tolist(), strict=True):
            self.progress[j].t = t
            leaving.append(self.progress[j])
        kept = keep.tolist()
        self.progress = [p for p, k in zip(self.progress, kept, strict=True) if k]
        self.jobs = [p.job for p in self.progress]
        rows = np.repeat(keep, self.spans)  # (B,)
        self.offsets, self.t, self.lengths = self.offsets[rows], self.t[rows], self.lengths[rows]
        self.slots = self.slots[rows]
        self.spans = self.spans[keep]
        self.first = np.cumsum(self.spans) - self.spans
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
        live = sum(p.job.rows * p.job.steps for p in progress)
        size = max(len(self._inputs), 2 * (live + need))
        self._inputs = np.empty((size, self.input_size), dtype=np.float32)
        self._outputs = np.empty((size, self.output_size), dtype=np.float32)
        self._reads = self._writes = None
        self._used = 0
        self.progress, self.jobs = [], []
        self.offsets = self.t = self.lengths = self.first = self.spans = _EMPTY
        self.slots = _EMPTY
        self.attention = False
        if progress:
            self.add(progress)

    # --- stepping ------------------------------------------------------------------------------------

    def holds(self, batch: list[RowJob]) -> bool:
        """Whether `batch` starts with exactly this frame's requests, in order (the rest are joining)."""
        return batch[: len(self.jobs)] == self.jobs  # jobs compare by identity: a C loop over two lists

    def inputs_now(self) -> np.ndarray:
        """(B, I): every session's input for its next step."""
        return self._inputs[self.offsets + self.t]

    def record(self, outputs: np.ndarray, reads: np.ndarray | None, writes: np.ndarray | None) -> np.ndarray:
        """Store one step's results (outputs (B, O); the heads' weightings (B, R|W, N) when asked), advance
        every session by a step, and return the positions (of `jobs`) of the requests that are now finished."""
        rows = self.offsets + self.t  # (B,)
        self._outputs[rows] = outputs
        if self._reads is not None and self._writes is not None and reads is not None and writes is not None:
            self._reads[rows] = reads
            self._writes[rows] = writes
        self.t = self.t + 1
        return np.flatnonzero((self.t == self.lengths)[self.first])  # a request's sessions finish together

    def sync(self) -> None:
        """Write each request's step count back to its Progress."""
        for p, t in zip(self.progress, self.t[self.first].tolist(), strict=True):
            p.t = t


def _carry(rows: np.ndarray, before: np.ndarray, entries: int, t: int) -> np.ndarray:
    """A request's new arena rows (E * T, ...), holding the first `t` steps of each entry from `before`."""
    if t:
        steps = len(rows) // entries
        rows.reshape(entries, steps, *rows.shape[1:])[:, :t] = before.reshape(entries, steps, *rows.shape[1:])[:, :t]
    return rows
