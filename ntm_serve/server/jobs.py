"""What the servicer hands a model's batcher: step requests and control actions, and what comes back.

A job is a request, immutable once queued; what changes while a step request runs (how far it got, its
outputs so far, its backup lanes) lives in its `Progress`, which only the batcher thread holds. A step request
is one session's (`StepJob`) or several sessions' run as one unit (`PackJob`, StreamPackedSteps): both give the
batch frame `rows` rows of `steps` steps each, their inputs entry-major.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ntm_serve.server.sessions import Done, SessionRecord

if TYPE_CHECKING:
    from ntm_serve.runtime.engine import Engine


@dataclass(frozen=True, eq=False)
class StepJob:
    """A step request: inputs (T, I) for one session."""

    session: SessionRecord
    inputs: np.ndarray  # (T, I) float32
    attention: bool
    done: Done
    expect_steps: int | None = None  # apply only if the session stands at exactly this many steps

    @property
    def steps(self) -> int:
        return len(self.inputs)

    @property
    def rows(self) -> int:
        return 1

    @property
    def sessions(self) -> tuple[SessionRecord, ...]:
        return (self.session,)


@dataclass(frozen=True, eq=False)
class PackJob:
    """Steps of several sessions as one unit: inputs (E, T, I), entry e for sessions[e]. It is queued behind each
    session's earlier jobs, runs once it heads all E queues, joins one batch whole, and is applied whole or not
    at all (ntm_serve/server/scheduler.py, ntm_serve/server/batcher.py)."""

    sessions: tuple[SessionRecord, ...]  # E distinct sessions of one model version
    inputs: np.ndarray  # (E, T, I) float32, C-contiguous
    attention: bool
    done: Done
    expect_steps: tuple[int | None, ...]  # per entry: apply only if every session stands where its entry expects

    @property
    def steps(self) -> int:
        return int(self.inputs.shape[1])

    @property
    def rows(self) -> int:
        return len(self.sessions)


@dataclass(frozen=True, eq=False)
class ControlJob:
    """Anything else that touches a session's row (create, read, free), run in the session's order."""

    session: SessionRecord
    action: Callable[[Engine, SessionRecord], Any]
    done: Done


Job = StepJob | PackJob | ControlJob
RowJob = StepJob | PackJob  # what the batch frame steps


@dataclass(eq=False)
class Progress:
    """A step request the batcher has started: its outputs so far and where it stands. While it is in the batch,
    its arrays are views of its rows in the batch frame (ntm_serve/server/batch_frame.py), which also keeps its `t`.
    Arrays are entry-major, E = job.rows entries of T = job.steps rows each (E = 1 for a StepJob)."""

    job: RowJob
    outputs: np.ndarray  # (E * T, O)
    read_weights: np.ndarray | None  # (E * T, R, N) when asked
    write_weights: np.ndarray | None  # (E * T, W, N) when asked
    t: int = 0  # steps applied so far (the same for every entry)
    lanes: list[int] | None = None  # backup lanes holding the sessions' rows from before step 1 (T > 1)

    @classmethod
    def start(cls, job: RowJob, output_size: int, state_shapes: dict[str, tuple[int, ...]]) -> Progress:
        rows = job.rows * job.steps
        attention = {name: np.empty((rows, *state_shapes[name]), dtype=np.float32) if job.attention else None
                     for name in ("read_weights", "write_weights")}  # (E * T, R|W, N)
        return cls(job, np.empty((rows, output_size), dtype=np.float32), attention["read_weights"],
                   attention["write_weights"])

    @property
    def finished(self) -> bool:
        return self.t == self.job.steps


@dataclass(frozen=True)
class StepOutcome:
    outputs: np.ndarray  # (T, O)
    steps: int  # the session's total after this request
    read_weights: np.ndarray | None
    write_weights: np.ndarray | None


@dataclass(frozen=True)
class PackOutcome:
    outputs: np.ndarray  # (E, T, O)
    steps: list[int]  # each session's total after this message
    read_weights: np.ndarray | None  # (E, T, R, N) when asked
    write_weights: np.ndarray | None  # (E, T, W, N) when asked
