"""Continuous batching, the doing half: one thread per model runs the scheduler's plans on the engine and
delivers the results. What runs next is decided in ntm_serve/server/scheduler.py; the design (batching on and off,
atomicity, backup lanes, deferred wake-ups) is in docs/service.md ("Continuous batching"). Each plan is of one memory
size N: its step call runs on that N's group of the engine, with that size's batch frame and backup lanes
(docs/memory-size.md).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ntm_serve.api.errors import ServiceError, internal
from ntm_serve.runtime.engine import SequenceResult, StepResult
from ntm_serve.server.batch_frame import BatchFrame
from ntm_serve.server.jobs import ControlJob, Job, PackJob, PackOutcome, Progress, RowJob, StepJob, StepOutcome
from ntm_serve.server.scheduler import Plan, Scheduler, batch_cap
from ntm_serve.server.sessions import Action, Done, SessionRecord
from ntm_serve.server.watch import Tap

if TYPE_CHECKING:
    from ntm_serve.runtime.engine import Engine
    from ntm_serve.server.metrics import Metrics

log = logging.getLogger(__name__)

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
class SizeRun:
    """What the batcher thread keeps for one memory size N between its step calls."""

    rows: int  # N (a session's memory_rows; 0: the trained N)
    frame: BatchFrame  # the requests of its step calls (batching on): ntm_serve/server/batch_frame.py
    free_lanes: list[int] = field(default_factory=list)  # backup rows, one per session row in progress


class Batcher:
    """A model's thread: runs plans (control jobs, one step call of a batch) and answers every job once."""

    def __init__(self, engine: Engine, metrics: Metrics, *, batching: bool = True, max_batch: int = 64,
                 max_wait_s: float = 0.001, max_queue: int = 10_000, inline_rows: int = 0,
                 batch_kib: int = 0) -> None:
        """`inline_rows`: one-step batches of at most this many rows may run on the thread that queued them
        (`run_now`, CPU engines only); 0: only on the model's thread. `batch_kib`: most session state per step call
        of a CPU engine, in KiB (sessions of a large memory N are batched fewer at a time; 0: max_batch always)."""
        self.engine = engine
        self.model = engine.spec.name
        # This model's metric children, looked up once: labels() costs microseconds on every message.
        self._engine_seconds = metrics.engine_seconds.labels(self.model)
        self._batch_size = metrics.batch_size.labels(self.model)
        self._steps = metrics.steps.labels(self.model)
        self.batching = batching
        budget = 1024 * batch_kib if engine.device.type == "cpu" else 0  # a GPU wants its batches whole
        self.scheduler = Scheduler(self.model, batching=batching, max_batch=max_batch if batching else 1,
                                   max_wait_s=max_wait_s, max_queue=max_queue,
                                   on_depth=metrics.queue_depth.labels(self.model).set,
                                   cap=lambda rows: batch_cap(max_batch, budget, engine.spec.state_bytes(rows)))
        self._progress: dict[RowJob, Progress] = {}  # requests started and not finished (batching on; packs)
        self._max_batch = max_batch
        self._sizes: dict[int, SizeRun] = {}  # per memory size N: its frame and backup lanes
        self.tap = Tap()  # the watched sessions: frames after each step call (ntm_serve/server/watch.py)
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{self.model}", daemon=True)
        # On CUDA, onnxruntime's provider keeps per-thread state (its CUDA-graph captures among it): the model's
        # steps stay on one thread there; the saving was measured on the CPU only.
        self.inline_rows = inline_rows if engine.device.type == "cpu" else 0
        # Held by the thread running a plan: the model's thread, or a caller's in run_now. The engine, the frame
        # and the progress records are used under it only (one plan at a time; the scheduler orders them).
        self._turn = threading.Lock()
        self._running = False  # started: run_now may run plans (before, the engine is the loader's: snapshots)

    # --- called from other threads --------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()
        self._running = True

    def submit(self, job: Job, force: bool = False, wake: bool = True) -> None:
        """Queue a job behind the session's earlier ones (see Scheduler.submit). `wake` False: the caller calls
        `run_now` next, which runs it here or wakes the model's thread."""
        self.scheduler.submit(job, force, wake)

    def run_now(self) -> None:
        """On the caller's thread (the event loop, right after it queued a job): run the next plan here if it is a
        small one-step batch that the model's thread would start at once (`Scheduler.plan_now`) and that thread is
        not running a plan. Saves two thread switches per tick: the model's thread would be woken to run it, and
        would wake the loop to answer (docs/service.md, "Continuous batching"). Otherwise the model's thread runs
        it, as always."""
        if self.inline_rows > 0 and self._running and self._turn.acquire(blocking=False):
            try:
                plan = self.scheduler.plan_now(self.inline_rows)
                if plan is not None:
                    self._run(plan)
            except Exception:  # the jobs are queued already: a bug here must not fail the caller's request twice
                log.exception("model %s: running a plan on the caller's thread failed", self.model)
            finally:
                self._turn.release()
        self.scheduler.wake()  # what is left is the model's thread's

    def submit_control(self, session: SessionRecord, action: Action, done: Done, force: bool = False) -> None:
        self.scheduler.submit(ControlJob(session, action, done), force)

    def stop(self, timeout: float | None = None) -> None:
        """Finish every queued job, then end the thread."""
        self.scheduler.stop()  # from now on run_now finds no plan to run (Scheduler.plan_now)
        self._thread.join(timeout)
        if self._turn.acquire(timeout=-1 if timeout is None else timeout):  # a plan run_now began has ended too
            self._turn.release()

    @property
    def queued(self) -> int:
        return self.scheduler.queued

    # --- the batcher thread ---------------------------------------------------------------------------

    def _wake_callers(self) -> None:
        """Run the wake-ups the deliveries since the last hand-off deferred (defer_wakeup)."""
        pending = getattr(_thread_state, "wakeups", None)  # None on a thread that runs plans in run_now
        while pending:
            wake = pending.pop(0)
            try:
                wake()
            except Exception:  # a caller's wake-up must never stop the model's thread
                log.exception("model %s: waking a caller failed", self.model)

    def _loop(self) -> None:
        _thread_state.wakeups = []
        while True:
            if not self._progress:  # about to wait or to start a new batch: answer first (else: before the step)
                self._wake_callers()
            plan = self.scheduler.next_plan()
            if plan is None:
                return
            with self._turn:
                self._run(plan)

    def _size(self, rows: int) -> SizeRun:
        """The batcher's record of memory size `rows`, made on first use."""
        size = self._sizes.get(rows)
        if size is None:
            frame = BatchFrame(self.engine.spec.input_size, self.engine.spec.output_size)
            size = self._sizes[rows] = SizeRun(rows, frame, list(range(self._max_batch - 1, -1, -1)))
        return size

    def _run(self, plan: Plan) -> None:
        """Run one plan (of one memory size); the caller holds the turn."""
        for job in plan.controls:
            self._run_control(job)
        if plan.controls and not self.engine.holds(plan.rows):  # its last session ended: the size goes too
            self._sizes.pop(plan.rows, None)
            self.scheduler.forget(plan.rows)
        for pack, err in plan.refused:
            self.scheduler.finish(*pack.sessions)
            self._deliver(pack, err)
        if plan.batch:
            size = self._size(plan.rows)
            if not (self.batching or isinstance(plan.batch[0], PackJob)):  # batching off: a pack is one unit
                self._run_alone(plan.batch[0], plan.rows)
            elif plan.one_step and not len(size.frame):
                self._tick(plan.batch, plan.rows)
            else:
                self._iterate(plan.batch, size)

    def _run_control(self, job: ControlJob) -> None:
        try:
            result: Any = job.action(self.engine, job.session)
        except ServiceError as err:
            result = err
        except Exception as err:
            log.exception("model %s: control action failed", self.model)
            result = internal(f"engine failure: {err}")
        self.scheduler.finish(job.session)
        self._deliver(job, result)

    def _started(self, job: RowJob, rows: int) -> Progress:
        progress = self._progress.get(job)
        if progress is None:
            progress = Progress.start(job, self.engine.spec.output_size, self.engine.spec.shapes_at(rows))
            self._progress[job] = progress
        return progress

    def _iterate(self, batch: list[RowJob], size: SizeRun) -> None:
        """One onnxruntime step for every session of every request in the batch (all of one memory size)."""
        frame = size.frame
        if not frame.holds(batch):  # never after a normal step: the batch is the frame's requests, then joiners
            frame.clear()
        saving = []
        if len(batch) > len(frame):
            joining = [self._started(job, size.rows) for job in batch[len(frame):]]
            frame.add(joining)
            saving = [p for p in joining if p.t == 0 and p.job.steps > 1]  # rows to backup lanes before step 1
        x = frame.inputs_now()  # (B, I)
        self._wake_callers()  # the event loop answers the finished requests while onnxruntime runs
        began = time.perf_counter()
        try:
            if saving:
                lanes = size.free_lanes
                for p in saving:
                    p.lanes = lanes[-p.job.rows:]
                    del lanes[-p.job.rows:]
                self.engine.save_rows([s.slot for p in saving for s in p.job.sessions],
                                      [lane for p in saving for lane in p.lanes or ()], size.rows)
            result = self.engine.step(frame.slots, x, frame.attention, size.rows)
        except Exception as err:
            log.exception("model %s: step of %d sessions failed", self.model, frame.rows)
            frame.clear()
            self._fail(batch, err, size)
            return
        self._observe(began, frame.rows, frame.rows)
        finished = frame.record(result.outputs, result.read_weights, result.write_weights)
        if self.tap.watched:
            self.tap.after_step(self.engine, size.rows, frame.slots, x, result.outputs, frame.t)
        leaving = frame.remove(finished) if len(finished) else []
        self.scheduler.carry(frame.jobs, size.rows)
        for p in leaving:
            self._release(p, size)
            if isinstance(p.job, PackJob):
                self._complete_pack(p.job, p.outputs, p.read_weights, p.write_weights)
            else:
                self._complete(p.job, p.outputs, p.read_weights, p.write_weights)

    def _tick(self, batch: list[RowJob], rows: int) -> None:
        """A batch that finishes in one step call (every request takes one step, none is in progress): the
        requests' inputs go to the engine and its outputs to their answers directly, without the batch frame,
        progress records or backup lanes (a failed call applies nothing: there is nothing to undo)."""
        width = self.engine.spec.input_size
        if len(batch) == 1:  # e.g. one packed message per tick: its inputs (E, 1, I) are the step's (B, I) as they are
            job = batch[0]
            slots = np.fromiter((s.slot for s in job.sessions), dtype=np.int64, count=job.rows)  # (B,)
            x = np.ascontiguousarray(job.inputs.reshape(job.rows, width))  # (B, I)
        else:
            slots = np.fromiter((s.slot for job in batch for s in job.sessions), dtype=np.int64)
            x = np.concatenate([job.inputs.reshape(job.rows, width) for job in batch])
        attention = any(job.attention for job in batch)
        self._wake_callers()  # the event loop answers the finished requests while onnxruntime runs
        began = time.perf_counter()
        try:
            result = self.engine.step(slots, x, attention, rows)
        except Exception as err:
            log.exception("model %s: step of %d sessions failed", self.model, len(slots))
            self._fail(batch, err, self._size(rows))
            return
        self._observe(began, len(slots), len(slots))
        if self.tap.watched:
            self.tap.after_step(self.engine, rows, slots, x, result.outputs, 1)
        reads, writes = result.read_weights, result.write_weights
        end = 0
        for job in batch:  # the result's rows are fresh arrays: each answer is a view of its rows
            rows = slice(end, end + job.rows)
            end = rows.stop
            weights = (reads[rows], writes[rows]) if job.attention and reads is not None and writes is not None \
                else (None, None)
            if isinstance(job, PackJob):
                self._complete_pack(job, result.outputs[rows], *weights)
            else:
                self._complete(job, result.outputs[rows], *weights)

    def _run_alone(self, job: StepJob, rows: int) -> None:
        """Batching off: the whole request in one call."""
        self._wake_callers()
        began = time.perf_counter()
        slot = job.session.slot
        watched = job.session in self.tap.watched
        try:
            result: StepResult | SequenceResult
            if job.steps == 1:
                result = self.engine.step(np.array([slot], dtype=np.int64), job.inputs, job.attention, rows)
            else:
                result = self.engine.sequence(slot, job.inputs, job.attention or watched, rows)
        except Exception as err:
            log.exception("model %s: request of session %s failed", self.model, job.session.id)
            self._fail([job], err, self._size(rows))
            return
        self._observe(began, 1, job.steps)
        if watched:
            self.tap.after_sequence(self.engine, job.session, job.inputs, result.outputs, result.read_weights,
                                    result.write_weights)
        reads, writes = (result.read_weights, result.write_weights) if job.attention else (None, None)  # watch's
        self._complete(job, result.outputs, reads, writes)

    def _observe(self, began: float, batch: int, steps: int) -> None:
        self._engine_seconds.observe(time.perf_counter() - began)
        self._batch_size.observe(batch)
        self._steps.inc(steps)

    def _release(self, progress: Progress, size: SizeRun) -> None:
        """Forget a request's progress and give its backup lanes back (to its size's)."""
        del self._progress[progress.job]
        if progress.lanes is not None:
            size.free_lanes.extend(progress.lanes)
            progress.lanes = None

    def _complete(self, job: StepJob, outputs: np.ndarray, read_weights: np.ndarray | None,
                  write_weights: np.ndarray | None) -> None:
        session = job.session
        session.steps += job.steps
        outcome = StepOutcome(outputs, session.steps, read_weights, write_weights)
        self.scheduler.finish(session)
        self._deliver(job, outcome)

    def _complete_pack(self, job: PackJob, outputs: np.ndarray, reads: np.ndarray | None,
                       writes: np.ndarray | None) -> None:
        """Every session of a pack has taken its T steps: one answer for all of them. Arrays entry-major:
        outputs (E * T, O), the heads' weightings (E * T, R|W, N) when asked."""
        shape = (job.rows, job.steps)
        steps = []
        for session in job.sessions:
            session.steps += shape[1]
            steps.append(session.steps)
        outcome = PackOutcome(outputs.reshape(*shape, -1), steps,  # (E, T, O)
                              None if reads is None else reads.reshape(*shape, *reads.shape[1:]),  # (E, T, R, N)
                              None if writes is None else writes.reshape(*shape, *writes.shape[1:]))
        self.scheduler.finish(*job.sessions)
        self._deliver(job, outcome)

    def _fail(self, jobs: list[RowJob], err: Exception, size: SizeRun) -> None:
        """Undo the steps already applied by the batch's requests (all of `size`), then fail them all."""
        started = [p for job in jobs if (p := self._progress.get(job)) is not None]
        undo = [p for p in started if p.t > 0 and p.lanes is not None]
        if undo:
            try:
                self.engine.restore_rows([lane for p in undo for lane in p.lanes or ()],
                                         [s.slot for p in undo for s in p.job.sessions], size.rows)
            except Exception:
                log.exception("model %s: could not restore %d sessions after a failed step", self.model, len(undo))
        for p in started:
            self._release(p, size)
        self.scheduler.carry([], size.rows)
        error = internal(f"engine failure, request not applied: {err}")
        for job in jobs:
            self.scheduler.finish(*job.sessions)
            self._deliver(job, error)

    def _deliver(self, job: Job, result: Any) -> None:
        try:
            job.done(result)
        except Exception:  # a caller's callback must never stop the model's thread
            log.exception("model %s: delivering a result failed", self.model)
