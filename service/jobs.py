"""What the servicer hands a model's batcher: step requests and control actions, and what comes back.

A job is a request, immutable once queued; what changes while a step request runs (how far it got, its
outputs so far, its backup lane) lives in its `Progress`, which only the batcher thread holds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from service.sessions import Done, SessionRecord

if TYPE_CHECKING:
    from service.engine import Engine


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


@dataclass(frozen=True, eq=False)
class ControlJob:
    """Anything else that touches a session's row (create, read, free), run in the session's order."""

    session: SessionRecord
    action: Callable[[Engine, SessionRecord], Any]
    done: Done


Job = StepJob | ControlJob


@dataclass(eq=False)
class Progress:
    """A step request the batcher has started: its outputs so far and where it stands. While it is in the batch,
    its arrays are views of its rows in the batch frame (service/batch_frame.py), which also keeps its `t`."""

    job: StepJob
    outputs: np.ndarray  # (T, O)
    read_weights: np.ndarray | None  # (T, R, N) when asked
    write_weights: np.ndarray | None  # (T, W, N) when asked
    t: int = 0  # steps applied so far
    lane: int | None = None  # backup lane holding the session's row from before step 1 (multi-step requests)

    @classmethod
    def start(cls, job: StepJob, output_size: int, state_shapes: dict[str, tuple[int, ...]]) -> Progress:
        t = job.steps
        attention = {name: np.empty((t, *state_shapes[name]), dtype=np.float32) if job.attention else None
                     for name in ("read_weights", "write_weights")}  # (T, R|W, N)
        return cls(job, np.empty((t, output_size), dtype=np.float32), attention["read_weights"],
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
