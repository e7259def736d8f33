"""Deciding what a model's batcher runs next: the queues of one model, and the policy over them.

The `Scheduler` is the one owner of the queue state (each session's FIFO of jobs, the sessions ready to
run, the requests in progress); callers on any thread submit, the batcher thread asks for a `Plan`.
`take` is the policy: given the queues, which control jobs run now and which requests share the next
step call. Nothing here touches onnxruntime; ntm_serve/server/batcher.py runs the plans.

A packed message (`PackJob`, E sessions) is queued behind each of its sessions' earlier jobs, all at once under
the lock (so two packs sharing sessions are in the same order in every queue they share: none waits for the
other). Each of its sessions that reaches the head of its queue waits on it (leaves `ready`); when the last one
does, the pack is checked (expect_steps of every entry) and joins the batch whole, E rows. A pack that does not
fit waits, first in line: no new request joins until it does (the batch drains within one request's steps).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from ntm_serve.api.errors import PackError, ServiceError, exhausted, internal, unavailable
from ntm_serve.server.jobs import ControlJob, Job, PackJob, RowJob
from ntm_serve.server.sessions import SessionRecord


@dataclass(frozen=True)
class Plan:
    """What the batcher runs next: control jobs first (in order), packed messages refused at their turn, then one
    step call of `batch` (may be empty). Requests in progress come first in `batch`, in the order they joined."""

    controls: list[ControlJob]
    batch: list[RowJob]
    refused: list[tuple[PackJob, ServiceError]] = field(default_factory=list)
    rows: int = 0  # the memory size N of its sessions (each plan is one size's; 0: the trained N)

    @property
    def one_step(self) -> bool:
        """Whether the step call finishes every request of `batch` (each takes one step; one in progress never
        does, it has more than one): the batcher then needs no record of where they stand."""
        return all(job.steps == 1 for job in self.batch)


def _no_row(engine: object, session: SessionRecord) -> None:
    raise internal(f"session {session.id} has no state row")


def _stale(expected: int) -> Callable[[object, SessionRecord], None]:
    def refuse(engine: object, session: SessionRecord) -> None:
        raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION,
                           f"session {session.id} stands at {session.steps} steps, the request expects {expected}: "
                           "nothing was applied (GetSession says where it stands)")

    return refuse


def _pack_refusal(pack: PackJob) -> PackError | None:
    """Why a pack whose sessions all stand at its turn cannot run (a session without a row, or not at the step
    count its entry expects), entry by entry; None when it can."""
    refused: dict[int, ServiceError] = {}
    for e, (session, expected) in enumerate(zip(pack.sessions, pack.expect_steps, strict=True)):
        if session.slot < 0:
            refused[e] = internal(f"session {session.id} has no state row")
        elif expected is not None and expected != session.steps:
            refused[e] = ServiceError(grpc.StatusCode.FAILED_PRECONDITION,
                                      f"session {session.id} stands at {session.steps} steps, the entry expects "
                                      f"{expected}")
    return PackError(refused, pack.rows) if refused else None


def take(ready: deque[SessionRecord], queues: dict[SessionRecord, deque[Job]], active: list[RowJob],
         max_batch: int, arrived: dict[PackJob, int] | None = None, held: deque[PackJob] | None = None,
         memory_rows: int = 0) -> Plan:
    """The policy. Pops ready sessions (in arrival order) until the batch holds `max_batch` rows: a head
    control job runs now; a head step request joins the batch, unless it cannot run (no row, or not at the
    step count it expects: then a control job refuses it, in its turn). A packed message joins when the last of
    its sessions is popped (`arrived` counts them), whole, if it fits; else it waits in `held`, and while one
    waits nothing else joins. An empty batch takes a pack of any size (the servicer bounds it by max_batch).
    `memory_rows`: the memory size N of every session in `ready` (the plan's)."""
    arrived = {} if arrived is None else arrived
    held = deque() if held is None else held
    controls: list[ControlJob] = []
    refused: list[tuple[PackJob, ServiceError]] = []
    batch = list(active)
    rows = sum(job.rows for job in batch)
    while held and (rows == 0 or rows + held[0].rows <= max_batch):
        pack = held.popleft()
        batch.append(pack)
        rows += pack.rows
    while ready and rows < max_batch and not held:
        session = ready.popleft()
        job = queues[session][0]
        if isinstance(job, ControlJob):
            controls.append(job)  # the session comes back to ready after it, if it has more jobs
        elif isinstance(job, PackJob):
            count = arrived.pop(job, 0) + 1
            if count < job.rows:  # the session waits on the pack's other sessions
                arrived[job] = count
            elif (why := _pack_refusal(job)) is not None:
                refused.append((job, why))
            elif rows and rows + job.rows > max_batch:
                held.append(job)
            else:
                batch.append(job)
                rows += job.rows
        elif session.slot < 0:  # no row (never happens: ids are handed out after the row exists)
            controls.append(ControlJob(session, _no_row, job.done))
        elif job.expect_steps is not None and job.expect_steps != session.steps:  # checked when its turn comes
            controls.append(ControlJob(session, _stale(job.expect_steps), job.done))
        else:
            batch.append(job)
            rows += 1
    return Plan(controls, batch, refused, memory_rows)


def batch_cap(max_batch: int, budget_bytes: int, session_bytes: int) -> int:
    """Most sessions of one memory size per step call: max_batch, or fewer where their state would pass
    `budget_bytes` (0: no budget), never below 1. Why: on the CPU a step call whose state outgrows the cache costs
    up to twice as much per session (docs/memory-size.md, "Batches of large memories")."""
    if budget_bytes <= 0:
        return max_batch
    return max(1, min(max_batch, budget_bytes // max(session_bytes, 1)))


@dataclass(eq=False)
class SizeQueue:
    """The waiting work of one memory size N (sessions of different N never share a step call): its ready
    sessions, its requests in progress, its packs, and what the last batch of this size was."""

    rows: int  # N (a session's memory_rows; 0: the trained N)
    max_batch: int  # most sessions of this size per step call (batch_cap)
    ready: deque[SessionRecord] = field(default_factory=deque)  # sessions whose head job waits, in arrival order
    active: list[RowJob] = field(default_factory=list)  # requests in the middle of their steps (they keep their place)
    arrived: dict[PackJob, int] = field(default_factory=dict)  # packs heading some of their sessions' queues: how many
    held: deque[PackJob] = field(default_factory=deque)  # packs heading all their queues, waiting for room
    previous: set[str] = field(default_factory=set)  # session ids of the last batch
    previous_batch: list[RowJob] = field(default_factory=list)  # the last batch itself (ids recomputed on change)
    returned: int = 0  # how many of them are in `ready` again

    @property
    def working(self) -> bool:
        """Whether it has anything to run (a plan to make)."""
        return bool(self.ready or self.active or self.held)


class Scheduler:
    """The queues of one model. Thread-safe; `next_plan`, `carry` and `finish` are for the batcher thread.

    A session is in one place at a time: waiting in its size's `ready`, or in the batch. A new batch (nothing in
    progress) waits up to `max_wait_s` for more sessions: until it is full, or every session of the previous batch
    of its size is back.

    Sessions of different memory sizes N are batched apart (docs/memory-size.md): each N
    has its own `SizeQueue`, and each plan is one size's. The sizes with work take turns, one plan each (round
    robin), so a busy size cannot starve another: a size waits at most one plan of every other size. With one
    size (every session at the trained N) this is the scheduler as it was."""

    def __init__(self, model: str, *, batching: bool, max_batch: int, max_wait_s: float, max_queue: int,
                 on_depth: Callable[[int], None] = lambda depth: None,
                 cap: Callable[[int], int] | None = None) -> None:
        """`cap`: the most sessions of memory size N per step call (at most max_batch); None: max_batch for all."""
        self.model = model
        self.batching = batching
        self.max_batch = max_batch
        self._cap = cap or (lambda rows: max_batch)
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self._on_depth = on_depth  # told the number of queued jobs after every change (a metric)
        self._cond = threading.Condition()
        self._queues: dict[SessionRecord, deque[Job]] = {}  # sessions with jobs waiting or running, FIFO each
        self._sizes: dict[int, SizeQueue] = {}  # N -> its queue
        self._turns: deque[SizeQueue] = deque()  # the sizes in turn order: the first with work plans next
        self._queued = 0  # jobs waiting or running
        self._stopping = False

    @property
    def queued(self) -> int:
        return self._queued

    def size_of(self, rows: int) -> SizeQueue:
        """Under the lock: the queue of memory size `rows`, made on first use."""
        size = self._sizes.get(rows)
        if size is None:
            size = self._sizes[rows] = SizeQueue(rows, max(1, min(self.max_batch, self._cap(rows))))
            self._turns.append(size)
        return size

    def forget(self, rows: int) -> None:
        """The last session of size `rows` has ended (the engine dropped its group): drop its queue unless new work
        came meanwhile (a new session's create)."""
        with self._cond:
            size = self._sizes.get(rows)
            if size is not None and not size.working and not size.arrived:
                del self._sizes[rows]
                self._turns.remove(size)

    def submit(self, job: Job, force: bool = False, wake: bool = True) -> None:
        """Queue a job behind the session's earlier ones (a pack: behind each of its sessions' earlier ones, all
        at once; it counts as one job per session). RESOURCE_EXHAUSTED when the queue is full and UNAVAILABLE
        once stopping; `force` skips both (jobs that free resources, snapshot reads). `wake` False: the batcher
        thread is not woken (the caller calls `wake` or gets a plan with `plan_now` next)."""
        sessions = job.sessions if isinstance(job, PackJob) else (job.session,)
        with self._cond:
            if self._stopping and not force:
                raise unavailable("server is shutting down")
            if self._queued + len(sessions) > self.max_queue and not force:
                raise exhausted(f"model {self.model}: {self._queued} requests queued (limit {self.max_queue}); "
                                "retry later")
            self._queued += len(sessions)
            for session in sessions:
                queue = self._queues.get(session)
                if queue is not None:
                    queue.append(job)
                else:
                    self._queues[session] = deque([job])
                    self._make_ready(session)
            if wake:
                self._cond.notify()
        self._on_depth(self._queued)

    def stop(self) -> None:
        """No new jobs from now on (except forced ones); `next_plan` returns None once all are done."""
        with self._cond:
            self._stopping = True
            self._cond.notify()

    def wake(self) -> None:
        """Wake the batcher thread if jobs wait for it (after `submit(wake=False)`)."""
        with self._cond:
            for size in self._turns:
                if size.ready or size.held:
                    self._cond.notify()
                    return

    def _turn(self) -> SizeQueue | None:
        """Under the lock: the size whose turn it is, the first in turn order with work; None when none has."""
        turns = self._turns
        for _ in range(len(turns)):
            size = turns[0]
            if size.ready or size.active or size.held:
                return size
            turns.rotate(-1)
        return None

    def next_plan(self) -> Plan | None:
        """Block until there is work; None when stopping and nothing is left. The plan is one size's."""
        with self._cond:
            while (size := self._turn()) is None:
                if self._stopping:
                    return None
                self._cond.wait()
            if self.batching and not size.active and not size.held:
                self._wait_for_batch(size)
            return self._take(size)

    def plan_now(self, max_rows: int) -> Plan | None:
        """A plan that may run at once on the caller's thread, or None. Only one the batcher thread would take
        now without waiting and run in one step call with nothing to remember: no request in progress or held
        (of any size), one size with work, the batch complete by the policy (full, or every session of the last
        batch back; batching off: any), and every ready session's next job a one-step request, at most `max_rows`
        rows in all."""
        with self._cond:
            if self._stopping:
                return None
            size = self._turn()
            if size is None or size.active or size.held or len(size.ready) > max_rows:
                return None
            if len(self._turns) > 1 and any(other.working for other in self._turns if other is not size):
                return None  # the model's thread takes turns between the sizes
            if self.batching and not self._complete(size):
                return None
            for session in size.ready:
                job = self._queues[session][0]
                if isinstance(job, ControlJob) or job.steps != 1:
                    return None
            return self._take(size)

    def _take(self, size: SizeQueue) -> Plan:
        """Under the lock: the next plan of `size` by the policy (`take`), remembering its sessions as the size's
        last batch; the size's turn goes to the back."""
        plan = take(size.ready, self._queues, size.active, size.max_batch, size.arrived, size.held, size.rows)
        if plan.batch:
            if plan.batch != size.previous_batch:  # jobs compare by identity: a C loop, no Python per job
                size.previous_batch = plan.batch
                size.previous = {session.id for job in plan.batch for session in job.sessions}
            size.returned = 0  # none of them is in ready now: a session is in one place at a time
        if len(self._turns) > 1:
            self._turns.remove(size)
            self._turns.append(size)
        return plan

    def carry(self, in_progress: list[RowJob], rows: int = 0) -> None:
        """After a step call of size `rows`: its requests that have steps left (they open its next plan's batch)."""
        with self._cond:
            self.size_of(rows).active = in_progress

    def finish(self, *sessions: SessionRecord) -> None:
        """The sessions' head job is done (one job, or a pack's sessions): each goes back to ready if it has more
        (at the end: fairness)."""
        with self._cond:
            for session in sessions:
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
        size = self.size_of(session.memory_rows)
        size.ready.append(session)
        if session.id in size.previous:
            size.returned += 1

    def _complete(self, size: SizeQueue) -> bool:
        """Under the lock: whether a new batch of `size` need wait no longer: it is full, or every session of its
        last batch is back."""
        full = len(size.ready) >= size.max_batch
        return full or (bool(size.previous) and size.returned >= len(size.previous))

    def _wait_for_batch(self, size: SizeQueue) -> None:
        """Under the lock: let a new batch of `size` fill, until full, every session of its last batch is back, or
        max_wait."""
        deadline = time.monotonic() + self.max_wait_s
        while not self._stopping and not self._complete(size):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._cond.wait(remaining)
