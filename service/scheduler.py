"""Deciding what a model's batcher runs next: the queues of one model, and the policy over them.

The `Scheduler` is the one owner of the queue state (each session's FIFO of jobs, the sessions ready to
run, the requests in progress); callers on any thread submit, the batcher thread asks for a `Plan`.
`take` is the policy: given the queues, which control jobs run now and which requests share the next
step call. Nothing here touches onnxruntime; service/batcher.py runs the plans.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from service.errors import ServiceError, exhausted, internal, unavailable
from service.jobs import ControlJob, Job, StepJob
from service.sessions import SessionRecord


@dataclass(frozen=True)
class Plan:
    """What the batcher runs next: control jobs first (in order), then one step call of `batch` (may be
    empty). Requests in progress come first in `batch`, in the order they joined."""

    controls: list[ControlJob]
    batch: list[StepJob]


def _no_row(engine: object, session: SessionRecord) -> None:
    raise internal(f"session {session.id} has no state row")


def _stale(expected: int) -> Callable[[object, SessionRecord], None]:
    def refuse(engine: object, session: SessionRecord) -> None:
        raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION,
                           f"session {session.id} stands at {session.steps} steps, the request expects {expected}: "
                           "nothing was applied (GetSession says where it stands)")

    return refuse


def take(ready: deque[SessionRecord], queues: dict[SessionRecord, deque[Job]], active: list[StepJob],
         max_batch: int) -> Plan:
    """The policy. Pops ready sessions (in arrival order) until the batch holds `max_batch` requests: a head
    control job runs now; a head step request joins the batch, unless it cannot run (no row, or not at the
    step count it expects: then a control job refuses it, in its turn)."""
    controls: list[ControlJob] = []
    batch = list(active)
    while ready and len(batch) < max_batch:
        session = ready.popleft()
        job = queues[session][0]
        if isinstance(job, ControlJob):
            controls.append(job)  # the session comes back to ready after it, if it has more jobs
        elif session.slot < 0:  # no row (never happens: ids are handed out after the row exists)
            controls.append(ControlJob(session, _no_row, job.done))
        elif job.expect_steps is not None and job.expect_steps != session.steps:  # checked when its turn comes
            controls.append(ControlJob(session, _stale(job.expect_steps), job.done))
        else:
            batch.append(job)
    return Plan(controls, batch)


class Scheduler:
    """The queues of one model. Thread-safe; `next_plan`, `carry` and `finish` are for the batcher thread.

    A session is in one place at a time: waiting in `ready`, or in the batch. A new batch (nothing in
    progress) waits up to `max_wait_s` for more sessions: until it is full, or every session of the
    previous batch is back."""

    def __init__(self, model: str, *, batching: bool, max_batch: int, max_wait_s: float, max_queue: int,
                 on_depth: Callable[[int], None] = lambda depth: None) -> None:
        self.model = model
        self.batching = batching
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self._on_depth = on_depth  # told the number of queued jobs after every change (a metric)
        self._cond = threading.Condition()
        self._queues: dict[SessionRecord, deque[Job]] = {}  # sessions with jobs waiting or running, FIFO each
        self._ready: deque[SessionRecord] = deque()  # sessions whose head job waits, in arrival order
        self._active: list[StepJob] = []  # requests in the middle of their steps (they keep their place)
        self._queued = 0  # jobs waiting or running
        self._previous: set[str] = set()  # session ids of the last batch
        self._previous_batch: list[StepJob] = []  # the last batch itself (its ids are recomputed when it changes)
        self._returned = 0  # how many of them are in _ready again
        self._stopping = False

    @property
    def queued(self) -> int:
        return self._queued

    def submit(self, job: Job, force: bool = False) -> None:
        """Queue a job behind the session's earlier ones. RESOURCE_EXHAUSTED when the queue is full
        and UNAVAILABLE once stopping; `force` skips both (jobs that free resources, snapshot reads)."""
        with self._cond:
            if self._stopping and not force:
                raise unavailable("server is shutting down")
            if self._queued >= self.max_queue and not force:
                raise exhausted(f"model {self.model}: {self._queued} requests queued (limit {self.max_queue}); "
                                "retry later")
            self._queued += 1
            queue = self._queues.get(job.session)
            if queue is not None:
                queue.append(job)
            else:
                self._queues[job.session] = deque([job])
                self._make_ready(job.session)
                self._cond.notify()
        self._on_depth(self._queued)

    def stop(self) -> None:
        """No new jobs from now on (except forced ones); `next_plan` returns None once all are done."""
        with self._cond:
            self._stopping = True
            self._cond.notify()

    def next_plan(self) -> Plan | None:
        """Block until there is work; None when stopping and nothing is left."""
        with self._cond:
            while not self._ready and not self._active:
                if self._stopping:
                    return None
                self._cond.wait()
            if self.batching and not self._active:
                self._wait_for_batch()
            plan = take(self._ready, self._queues, self._active, self.max_batch)
            if plan.batch:
                if plan.batch != self._previous_batch:  # StepJobs compare by identity: a C loop, no Python per job
                    self._previous_batch = plan.batch
                    self._previous = {job.session.id for job in plan.batch}
                self._returned = 0  # none of them is in _ready now: a session is in one place at a time
            return plan

    def carry(self, in_progress: list[StepJob]) -> None:
        """After a step call: the requests that have steps left (they open the next plan's batch)."""
        with self._cond:
            self._active = in_progress

    def finish(self, session: SessionRecord) -> None:
        """The session's head job is done: the session goes back to ready if it has more (at the end: fairness)."""
        with self._cond:
            queue = self._queues[session]
            queue.popleft()
            self._queued -= 1
            if queue:
                self._make_ready(session)
            else:
                del self._queues[session]
        self._on_depth(self._queued)

    def _make_ready(self, session: SessionRecord) -> None:
        """Under the lock."""
        self._ready.append(session)
        if session.id in self._previous:
            self._returned += 1

    def _wait_for_batch(self) -> None:
        """Under the lock: let a new batch fill, until full, every session of the last batch is back, or max_wait."""
        deadline = time.monotonic() + self.max_wait_s
        while not self._stopping and len(self._ready) < self.max_batch:
            if self._previous and self._returned >= len(self._previous):
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._cond.wait(remaining)
