"""The requests of one step call, laid out so that a step costs a few numpy operations, not a loop over sessions.

Continuous batching keeps the same requests together for many steps (a 20-step message stays in the batch
for 20 calls). A `BatchFrame` holds their inputs and outputs in two flat buffers, every request's rows
contiguous, and where each request stands as a vector: a step gathers the batch's inputs with one fancy
index, scatters its outputs with one more, and finds the finished requests with one comparison. The frame
is rebuilt only when a request joins or leaves (docs/service.md, "Continuous batching").
"""

from __future__ import annotations

import numpy as np

from service.jobs import Progress, StepJob


class BatchFrame:
    """The batch's requests, in batch order, over flat (sum T, ...) buffers. Used by the batcher thread only."""

    def __init__(self, progress: list[Progress], output_size: int) -> None:
        self.progress = progress
        self.jobs = [p.job for p in progress]
        lengths = np.fromiter((p.job.steps for p in progress), dtype=np.int64, count=len(progress))  # (B,)
        self.lengths = lengths
        self.offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)  # (B,)
        self.t = np.fromiter((p.t for p in progress), dtype=np.int64, count=len(progress))  # (B,) steps applied
        slots = np.fromiter((p.job.session.slot for p in progress), dtype=np.int64, count=len(progress))
        slots.flags.writeable = False  # the engine may key a cached placement on this very array
        self.slots = slots  # (B,)
        self.inputs = np.concatenate([p.job.inputs for p in progress])  # (sum T, I)
        total = int(lengths.sum())
        self.outputs = np.empty((total, output_size), dtype=np.float32)  # (sum T, O)
        self.attention = any(p.job.attention for p in progress)
        self.reads: np.ndarray | None = None
        self.writes: np.ndarray | None = None
        asked = next((p for p in progress if p.read_weights is not None and p.write_weights is not None), None)
        if asked is not None and asked.read_weights is not None and asked.write_weights is not None:
            self.reads = np.zeros((total, *asked.read_weights.shape[1:]), dtype=np.float32)  # (sum T, R, N)
            self.writes = np.zeros((total, *asked.write_weights.shape[1:]), dtype=np.float32)  # (sum T, W, N)
        # Each request's results so far move into the frame; its Progress then points at its rows here.
        for b, p in enumerate(progress):
            rows = slice(int(self.offsets[b]), int(self.offsets[b] + lengths[b]))
            self.outputs[rows][: p.t] = p.outputs[: p.t]
            p.outputs = self.outputs[rows]
            if (self.reads is not None and self.writes is not None and p.read_weights is not None
                    and p.write_weights is not None):
                self.reads[rows][: p.t] = p.read_weights[: p.t]
                self.writes[rows][: p.t] = p.write_weights[: p.t]
                p.read_weights, p.write_weights = self.reads[rows], self.writes[rows]

    def holds(self, batch: list[StepJob]) -> bool:
        """Whether `batch` is exactly this frame's requests, in the same order."""
        return batch == self.jobs  # StepJob compares by identity: a C loop over the two lists

    def inputs_now(self) -> np.ndarray:
        """(B, I): every request's input for its next step."""
        return self.inputs[self.offsets + self.t]

    def record(self, outputs: np.ndarray, reads: np.ndarray | None, writes: np.ndarray | None) -> np.ndarray:
        """Store one step's results (outputs (B, O); the heads' weightings (B, R|W, N) when asked), advance
        every request by a step, and return the batch positions of the requests that are now finished."""
        rows = self.offsets + self.t  # (B,)
        self.outputs[rows] = outputs
        if self.reads is not None and reads is not None and self.writes is not None and writes is not None:
            self.reads[rows] = reads
            self.writes[rows] = writes
        self.t += 1
        return np.flatnonzero(self.t == self.lengths)

    def sync(self) -> None:
        """Write each request's step count back to its Progress (before the frame is dropped or rebuilt)."""
        for p, t in zip(self.progress, self.t.tolist(), strict=True):
            p.t = t
