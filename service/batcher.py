"""Continuous batching: one thread per model applies the queued requests of all its sessions.

Every session has a FIFO of jobs: step requests and control actions (create, read, delete). Jobs of one
session run strictly in order; a session is in at most one place at a time (waiting, or in the batch).

With batching on, each onnxruntime call steps every session in the batch by one time step. A request
of T steps keeps its session in the batch for T calls; sessions join (new requests) and leave (finished
requests) between calls; sessions in the middle of a request always keep their place, so at most
`max_batch` requests are in progress. A new batch (nothing in progress) waits up to `max_wait` for
more sessions: until the batch is full, or every session of the previous batch is back.

With batching off, each request runs alone: T = 1 through `step.onnx`, T > 1 in one `sequence.onnx`
call. That is the baseline the benchmarks compare against.

A request may name the step count it expects its session to stand at (`expect_steps`); it is checked when
the request's turn comes, and a mismatch refuses it (FAILED_PRECONDITION) without touching the session.

Atomicity: a request is applied whole or not at all. Once started it runs to its end even if its
caller has gone (cancel, deadline, disconnect). If onnxruntime fails in the middle of a multi-step
request, the session's row is restored from a copy taken before its first step ("lanes": `max_batch`
device rows, one per request in progress), and every request of that batch fails with INTERNAL.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np

from service.errors import ServiceError, exhausted, internal, unavailable

if TYPE_CHECKING:
    from service.engine import Engine
    from service.metrics import Metrics
    from service.sessions import SessionRecord

log = logging.getLogger(__name__)

Done = Callable[[Any], None]  # called once, on the batcher thread, with a result or a ServiceError

_thread_state = threading.local()


def defer_wakeup(wake: Callable[[], None]) -> bool:
    """For the owner of `Done` callbacks: on a batcher thread, queue `wake` (e.g. waking an event loop) to run
    at the batcher's next hand-off point instead of now, and return True; elsewhere return False (wake now).

    Why: waking the event loop hands it the GIL, and the batcher then waits for the GIL while the loop
    answers. The batcher wakes its callers right before it enters onnxruntime (which releases the GIL) or
    before it waits for work, so the loop answers while the model computes."""
    pending = getattr(_thread_state, "wakeups", None)
    if pending is None:
        return False
    pending.append(wake)
    return True


@dataclass(eq=False)
class StepJob:
    """A request: inputs (T, I) for one session."""

    session: SessionRecord
    inputs: np.ndarray  # (T, I) float32
    attention: bool
    done: Done
    expect_steps: int | None = None  # apply only if the session stands at exactly this many steps
    submitted: float = field(default_factory=time.perf_counter)
    t: int = 0  # steps applied so far
    lane: int | None = None
    outputs: np.ndarray | None = None  # (T, O)
    read_weights: np.ndarray | None = None  # (T, R, N)
    write_weights: np.ndarray | None = None  # (T, W, N)


@dataclass(eq=False)
class ControlJob:
    """Anything else that touches a session's row (create, read, free), run in the session's order."""

    session: SessionRecord
    action: Callable[[Engine, SessionRecord], Any]
    done: Done


@dataclass(frozen=True)
class StepOutcome:
    outputs: np.ndarray  # (T, O)
    steps: int  # the session's total after this request
    read_weights: np.ndarray | None
    write_weights: np.ndarray | None


Job = StepJob | ControlJob


def _no_row(engine: Engine, session: SessionRecord) -> None:
    raise internal(f"session {session.id} has no state row")


def _stale(expected: int) -> Callable[[Engine, SessionRecord], None]:
    def refuse(engine: Engine, session: SessionRecord) -> None:
        raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION,
                           f"session {session.id} stands at {session.steps} steps, the request expects {expected}: "
                           "nothing was applied (GetSession says where it stands)")

    return refuse


class Batcher:
    def __init__(self, engine: Engine, metrics: Metrics, *, batching: bool = True, max_batch: int = 64,
                 max_wait_s: float = 0.001, max_queue: int = 10_000) -> None:
        self.engine = engine
        self.model = engine.spec.name
        self.metrics = metrics
        # This model's metric children, looked up once: labels() costs microseconds on every message.
        self._queue_depth = metrics.queue_depth.labels(self.model)
        self._engine_seconds = metrics.engine_seconds.labels(self.model)
        self._batch_size = metrics.batch_size.labels(self.model)
        self._steps = metrics.steps.labels(self.model)
        self.batching = batching
        self.max_batch = max_batch if batching else 1
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self._cond = threading.Condition()
        self._ready: deque[SessionRecord] = deque()  # sessions with a job waiting, in arrival order
        self._active: list[SessionRecord] = []  # sessions in the middle of a step request
        self._queued = 0  # jobs waiting or running
        self._previous: set[str] = set()  # session ids of the last batch
        self._returned = 0  # how many of them are in _ready again
        self._free_lanes = list(range(max_batch - 1, -1, -1))
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{self.model}", daemon=True)

    # --- called from other threads --------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

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
            session = job.session
            session.jobs.append(job)
            if not session.scheduled:
                session.scheduled = True
                self._ready.append(session)
                if session.id in self._previous:
                    self._returned += 1
                self._cond.notify()
        self._queue_depth.set(self._queued)

    def stop(self, timeout: float | None = None) -> None:
        """Finish every queued job, then end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout)

    @property
    def queued(self) -> int:
        return self._queued

    # --- the batcher thread ---------------------------------------------------------------------------

    def _wake_callers(self) -> None:
        """Run the wake-ups the deliveries since the last hand-off deferred (defer_wakeup)."""
        pending = _thread_state.wakeups
        while pending:
            wake = pending.pop(0)
            try:
                wake()
            except Exception:  # a caller's wake-up must never stop the model's thread
                log.exception("model %s: waking a caller failed", self.model)

    def _loop(self) -> None:
        _thread_state.wakeups = []
        while True:
            if not self._active:  # about to wait or to start a new batch: answer first (else: before the step)
                self._wake_callers()
            with self._cond:
                while not self._ready and not self._active:
                    if self._stopping:
                        return
                    self._cond.wait()
                if self.batching and not self._active:
                    self._wait_for_batch()
                controls, batch = self._take()
            for job in controls:
                self._run_control(job)
            if batch:
                if self.batching:
                    self._iterate(batch)
                else:
                    self._run_alone(batch[0])

    def _wait_for_batch(self) -> None:
        """Let a new batch fill: until full, every session of the last batch is back, or max_wait."""
        deadline = time.monotonic() + self.max_wait_s
        while not self._stopping and len(self._ready) < self.max_batch:
            if self._previous and self._returned >= len(self._previous):
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._cond.wait(remaining)

    def _take(self) -> tuple[list[ControlJob], list[SessionRecord]]:
        """Under the lock: control jobs to run now, and the sessions of the next step call."""
        controls: list[ControlJob] = []
        batch = list(self._active)
        while self._ready and len(batch) < self.max_batch:
            session = self._ready.popleft()
            job = session.jobs[0]
            if isinstance(job, ControlJob):
                controls.append(job)  # the session comes back to _ready after it, if it has more jobs
            elif session.slot < 0:  # no row (never happens: ids are handed out after the row exists)
                controls.append(ControlJob(session, _no_row, job.done))
            elif job.expect_steps is not None and job.expect_steps != session.steps:  # checked when its turn comes
                controls.append(ControlJob(session, _stale(job.expect_steps), job.done))
            else:
                batch.append(session)
        if batch:
            self._previous = {s.id for s in batch}
            self._returned = 0  # none of them is in _ready now: a session is in one place at a time
        return controls, batch

    def _finish(self, session: SessionRecord, count: int = 1) -> None:
        """A session's head job is done: back to _ready if it has more (at the end: fairness)."""
        with self._cond:
            session.jobs.popleft()
            self._queued -= count
            if session.jobs:
                self._ready.append(session)
                if session.id in self._previous:
                    self._returned += 1
            else:
                session.scheduled = False
        self._queue_depth.set(self._queued)

    def _run_control(self, job: ControlJob) -> None:
        try:
            result: Any = job.action(self.engine, job.session)
        except ServiceError as err:
            result = err
        except Exception as err:
            log.exception("model %s: control action failed", self.model)
            result = internal(f"engine failure: {err}")
        self._finish(job.session)
        self._deliver(job, result)

    def _start(self, job: StepJob) -> None:
        t, out = len(job.inputs), self.engine.spec.output_size
        job.outputs = np.empty((t, out), dtype=np.float32)  # (T, O)
        if job.attention:
            shapes = self.engine.spec.state_shapes
            job.read_weights = np.empty((t, *shapes["read_weights"]), dtype=np.float32)  # (T, R, N)
            job.write_weights = np.empty((t, *shapes["write_weights"]), dtype=np.float32)  # (T, W, N)

    def _iterate(self, batch: list[SessionRecord]) -> None:
        """One onnxruntime step for every session in the batch."""
        jobs: list[StepJob] = [s.jobs[0] for s in batch]  # type: ignore[misc]
        starting = [j for j in jobs if j.t == 0]
        for job in starting:
            self._start(job)
        saving = [j for j in starting if len(j.inputs) > 1]
        slots = np.fromiter((s.slot for s in batch), dtype=np.int64, count=len(batch))  # (B,)
        x = np.stack([j.inputs[j.t] for j in jobs])  # (B, I)
        attention = any(j.attention for j in jobs)
        self._wake_callers()  # the event loop answers the finished requests while onnxruntime runs
        began = time.perf_counter()
        try:
            if saving:
                for job in saving:
                    job.lane = self._free_lanes.pop()
                self.engine.save_rows([j.session.slot for j in saving], [j.lane for j in saving])  # type: ignore[misc]
            result = self.engine.step(slots, x, attention)
        except Exception as err:
            log.exception("model %s: step of %d sessions failed", self.model, len(batch))
            self._fail_batch(jobs, err)
            return
        self._engine_seconds.observe(time.perf_counter() - began)
        self._batch_size.observe(len(batch))
        self._steps.inc(len(batch))
        for b, job in enumerate(jobs):
            job.outputs[job.t] = result.outputs[b]  # type: ignore[index]
            if job.attention:
                job.read_weights[job.t] = result.read_weights[b]  # type: ignore[index]
                job.write_weights[job.t] = result.write_weights[b]  # type: ignore[index]
            job.t += 1
        with self._cond:
            self._active = [j.session for j in jobs if j.t < len(j.inputs)]
        for job in jobs:
            if job.t == len(job.inputs):
                self._complete(job)

    def _run_alone(self, session: SessionRecord) -> None:
        """Batching off: the whole request in one call."""
        job: StepJob = session.jobs[0]  # type: ignore[assignment]
        self._start(job)
        self._wake_callers()
        began = time.perf_counter()
        try:
            if len(job.inputs) == 1:
                r = self.engine.step(np.array([session.slot], dtype=np.int64), job.inputs, job.attention)
            else:
                r = self.engine.sequence(session.slot, job.inputs, job.attention)  # type: ignore[assignment]
        except Exception as err:
            log.exception("model %s: request of session %s failed", self.model, session.id)
            self._fail_batch([job], err)
            return
        self._engine_seconds.observe(time.perf_counter() - began)
        self._batch_size.observe(1)
        self._steps.inc(len(job.inputs))
        job.outputs, job.read_weights, job.write_weights = r.outputs, r.read_weights, r.write_weights
        job.t = len(job.inputs)
        self._complete(job)

    def _complete(self, job: StepJob) -> None:
        session = job.session
        session.steps += len(job.inputs)
        if job.lane is not None:
            self._free_lanes.append(job.lane)
            job.lane = None
        outcome = StepOutcome(job.outputs, session.steps, job.read_weights, job.write_weights)  # type: ignore[arg-type]
        self._finish(session)
        self._deliver(job, outcome)

    def _fail_batch(self, jobs: list[StepJob], err: Exception) -> None:
        """Undo the steps already applied by the batch's requests, then fail them all."""
        undo = [j for j in jobs if j.t > 0 and j.lane is not None]
        if undo:
            try:
                self.engine.restore_rows([j.lane for j in undo], [j.session.slot for j in undo])  # type: ignore[misc]
            except Exception:
                log.exception("model %s: could not restore %d sessions after a failed step", self.model, len(undo))
        with self._cond:
            self._active = []
        error = internal(f"engine failure, request not applied: {err}")
        for job in jobs:
            if job.lane is not None:
                self._free_lanes.append(job.lane)
                job.lane = None
            job.t = 0
            self._finish(job.session)
            self._deliver(job, error)

    def _deliver(self, job: Job, result: Any) -> None:
        try:
            job.done(result)
        except Exception:  # a caller's callback must never stop the model's thread
            log.exception("model %s: delivering a result failed", self.model)
