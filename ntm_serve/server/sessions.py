"""The live sessions: ids, owners, TTLs, limits, and the hand-off of their requests to the batchers.

A session's id is made here (128 random bits, URL-safe). Its state is a row of its model's state pool,
created, read and freed by control jobs that run on the model's batcher thread in the session's order.
One lock guards the table; a session is never evicted while it has a request accepted and unfinished,
and its id, once gone, answers NOT_FOUND with the reason (expired or deleted).
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

import grpc

from ntm_serve.api.errors import PackError, ServiceError, exhausted, invalid, not_found
from ntm_serve.api.headers import GROUP_SEPARATOR

if TYPE_CHECKING:
    from ntm_serve.runtime.engine import Engine
    from ntm_serve.server.metrics import Metrics

log = logging.getLogger(__name__)

ID_BYTES = 16  # 128 random bits (the contract asks for at least 122)
TOMBSTONES = 100_000  # remembered ids of ended sessions, for a helpful NOT_FOUND message
MAX_ID_CHARS = 128  # longer session ids are refused before any lookup (ours have 22, or 23 + a group of <= 64)

Done = Callable[[Any], None]  # a job's answer: called once, on the batcher thread, with a result or a ServiceError


@dataclass(eq=False)
class SessionRecord:
    id: str
    model: str
    owner: str
    ttl_s: float
    created_wall: float
    last_used: float  # monotonic clock
    slot: int = -1  # row in the model's state pool; -1 until created, and after it is freed
    steps: int = 0  # time steps applied (written by the batcher thread only)
    inflight: int = 0  # jobs accepted and not finished (under the registry lock)
    ended: bool = False  # deleted, expired or discarded (set under the registry lock)
    checkpoint_sha256: str = ""  # the weights (model version) it runs on, for life
    memory_rows: int = 0  # its memory size N, for life (0: the model's trained N); its row is in that N's group

    @property
    def key(self) -> tuple[str, str]:
        """Its served model version (ntm_serve/server/registry.py): the model name and the weights."""
        return self.model, self.checkpoint_sha256

    def expires_wall(self, now_mono: float, now_wall: float) -> float:
        """When the session expires if nothing uses it from now on (wall clock, seconds)."""
        return now_wall + max(0.0, self.last_used + self.ttl_s - now_mono)


Action = Callable[["Engine", SessionRecord], Any]  # a control job's work, run on the model's batcher thread
MakeJob = Callable[[SessionRecord, Done], Any]  # builds the job (ntm_serve/server/jobs.py) for a session and its answer
MakePack = Callable[[tuple[SessionRecord, ...], Done], Any]  # builds a packed message's job for its sessions


class JobQueue(Protocol):
    """A model's batcher, as the registry sees it (ntm_serve/server/batcher.py; this module does not import it)."""

    def submit(self, job: Any, force: bool = False) -> None: ...

    def submit_control(self, session: SessionRecord, action: Action, done: Done, force: bool = False) -> None: ...


def new_session_id(group: str = "") -> str:
    """128 random bits, URL-safe; after "<group>." when the session has a placement group (ntm_serve/api/headers.py:
    the proxy routes on it)."""
    random = secrets.token_urlsafe(ID_BYTES)
    return f"{group}{GROUP_SEPARATOR}{random}" if group else random


def init_action(state: dict[str, Any] | None) -> Callable[[Engine, SessionRecord], None]:
    """Control job: give the session a row holding `state`, or the model's initial state."""

    def run(engine: Engine, session: SessionRecord) -> None:
        session.slot = engine.new_row(state, session.memory_rows)

    return run


def read_action(engine: Engine, session: SessionRecord) -> tuple[dict[str, Any], int]:
    """Control job: the session's state on the host and its step count, taken between its requests."""
    return engine.read_row(session.slot, session.memory_rows), session.steps


def free_action(engine: Engine, session: SessionRecord) -> None:
    """Control job: release the session's row (after every job queued before it)."""
    if session.slot >= 0:
        engine.free_row(session.slot, session.memory_rows)
        session.slot = -1


class SessionRegistry:
    def __init__(self, batchers: Mapping[tuple[str, str], JobQueue], metrics: Metrics, *, max_sessions: int,
                 max_sessions_per_owner: int, default_ttl_s: float, max_ttl_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._batchers = batchers
        self._metrics = metrics
        self.max_sessions = max_sessions
        self.max_sessions_per_owner = max_sessions_per_owner
        self.default_ttl_s = default_ttl_s
        self.max_ttl_s = max_ttl_s
        self.clock = clock
        self._lock = threading.Lock()
        self._sessions: dict[str, SessionRecord] = {}
        self._per_owner: Counter[str] = Counter()
        self._gone: OrderedDict[str, str | ServiceError] = OrderedDict()  # id -> why it ended
        self.on_end: Callable[[SessionRecord], None] | None = None  # told (outside the lock) when a session ends

    # --- limits and lookups ---------------------------------------------------------------------------

    def ttl_for(self, requested: float) -> float:
        if math.isnan(requested) or requested < 0:
            raise invalid(f"ttl_seconds must be >= 0 (0 takes the default), got {requested}")
        return self.default_ttl_s if requested == 0 else min(requested, self.max_ttl_s)

    def open(self, model: str, ttl_s: float, owner: str, checkpoint_sha256: str = "", group: str = "",
             memory_rows: int = 0) -> SessionRecord:
        """A new session record on the model version with these weights (in placement group `group`, of memory size
        `memory_rows`, both checked by the caller), counted against the limits; its row comes from an init job."""
        if not model:
            raise invalid("model is required")
        if (model, checkpoint_sha256) not in self._batchers:
            raise not_found(f"unknown model {model!r}; ListModels lists them")
        ttl = self.ttl_for(ttl_s)
        with self._lock:
            if len(self._sessions) >= self.max_sessions:
                raise exhausted(f"session limit reached ({self.max_sessions} live sessions); delete sessions or "
                                "wait for idle ones to expire")
            if self.max_sessions_per_owner and self._per_owner[owner] >= self.max_sessions_per_owner:
                raise exhausted(f"per-client session limit reached ({self.max_sessions_per_owner})")
            session = SessionRecord(new_session_id(group), model, owner, ttl, time.time(), self.clock(),
                                    checkpoint_sha256=checkpoint_sha256, memory_rows=memory_rows)
            self._sessions[session.id] = session
            self._per_owner[owner] += 1
        self._metrics.live_sessions.labels(model).inc()
        return session

    def _find(self, session_id: str, owner: str) -> SessionRecord:
        """Under the lock."""
        if not session_id:
            raise invalid("session_id is required")
        if len(session_id) > MAX_ID_CHARS:
            raise invalid(f"session_id has {len(session_id)} characters, more than {MAX_ID_CHARS}: not one of ours")
        session = self._sessions.get(session_id)
        if session is None:
            why = self._gone.get(session_id)
            if isinstance(why, ServiceError):  # a fresh one each time: a raised instance keeps its traceback
                raise ServiceError(why.code, why.message)
            if why == "expired":
                raise not_found(f"session {session_id} expired (idle longer than its TTL) and was evicted")
            if why == "deleted":
                raise not_found(f"session {session_id} was deleted")
            raise not_found(f"unknown session {session_id!r}")
        if session.owner != owner:
            raise ServiceError(grpc.StatusCode.PERMISSION_DENIED, f"session {session_id} belongs to another client")
        return session

    def get(self, session_id: str, owner: str) -> SessionRecord:
        with self._lock:
            session = self._find(session_id, owner)
            session.last_used = self.clock()
            return session

    def find_many(self, session_ids: Sequence[str], owner: str) -> list[SessionRecord | ServiceError]:
        """Each id's live session, or why there is none for `owner` (what `get` would raise); touches none."""
        found: list[SessionRecord | ServiceError] = []
        with self._lock:
            table = self._sessions
            every = [table.get(session_id) for session_id in session_ids]
            if all(s is not None and s.owner == owner for s in every):  # the usual message: one pass, no errors
                return cast(list[SessionRecord | ServiceError], every)
            for session_id in session_ids:
                try:
                    found.append(self._find(session_id, owner))
                except ServiceError as err:
                    found.append(err)
        return found

    def sessions(self) -> list[SessionRecord]:
        """Every live session (a snapshot of the table: for state snapshots and reports)."""
        with self._lock:
            return list(self._sessions.values())

    def count(self) -> int:
        return len(self._sessions)

    def adopt(self, session: SessionRecord) -> None:
        """Add a session restored from a snapshot, with its own id, owner and row (at start-up). It counts
        against the limits but is never refused: a restart must not lose sessions."""
        with self._lock:
            if session.id in self._sessions:
                raise ValueError(f"session {session.id} exists already")
            self._sessions[session.id] = session
            self._per_owner[session.owner] += 1
            self._gone.pop(session.id, None)
        self._metrics.live_sessions.labels(session.model).inc()

    def remember_gone(self, session_id: str, why: str | ServiceError) -> None:
        """Answer later calls naming `session_id` with NOT_FOUND and the reason (e.g. expired while down), or
        with the error given (e.g. its weights are not served)."""
        with self._lock:
            self._remember(session_id, why)

    # --- handing jobs to the batchers -----------------------------------------------------------------

    def submit(self, session_id: str, owner: str, make_job: MakeJob,
               done: Done) -> SessionRecord:
        """Look the session up and queue a job for it, atomically with respect to eviction and delete."""
        with self._lock:
            session = self._find(session_id, owner)
            self._enqueue(session, make_job, done)
            return session

    def submit_pack(self, sessions: Sequence[SessionRecord], make_job: MakePack, done: Done, wake: bool = True) -> None:
        """Queue one job for several sessions of one model version (a packed message), atomically with respect to
        eviction and delete: a session that ended since it was looked up refuses the whole job (PackError).
        `wake` False: the caller calls the batcher's `run_now` next (which wakes the model's thread if needed)."""
        with self._lock:
            ended = {e: not_found(f"session {s.id} ended while the message was checked")
                     for e, s in enumerate(sessions) if s.ended}
            if ended:
                raise PackError(ended, len(sessions))

            def finished(result: Any) -> None:
                with self._lock:
                    now = self.clock()
                    for session in sessions:
                        session.inflight -= 1
                        session.last_used = now
                done(result)

            self._batchers[sessions[0].key].submit(make_job(tuple(sessions), finished), wake=wake)  # may be full
            now = self.clock()
            for session in sessions:
                session.inflight += 1
                session.last_used = now

    def submit_to(self, session: SessionRecord, make_job: MakeJob, done: Done) -> None:
        """Queue a job for a record already in hand (its create)."""
        with self._lock:
            self._enqueue(session, make_job, done)

    def submit_internal(self, session: SessionRecord, make_job: MakeJob,
                        done: Done) -> bool:
        """Queue a server-side job (a snapshot read) for a live session: it neither refreshes the session's
        idle clock nor counts against the queue limit. False when the session has ended."""
        with self._lock:
            if session.ended:
                return False
            self._enqueue(session, make_job, done, touch=False, force=True)
            return True

    def _enqueue(self, session: SessionRecord, make_job: MakeJob, done: Done,
                 touch: bool = True, force: bool = False) -> None:
        def finished(result: Any) -> None:
            with self._lock:
                session.inflight -= 1
                if touch:
                    session.last_used = self.clock()
            done(result)

        job = make_job(session, finished)
        self._batchers[session.key].submit(job, force=force)  # RESOURCE_EXHAUSTED when the queue is full
        session.inflight += 1
        if touch:
            session.last_used = self.clock()

    def close(self, session_id: str, owner: str, done: Done) -> SessionRecord:
        """Delete: the id answers NOT_FOUND from now on; the row is freed after the jobs already queued."""
        with self._lock:
            session = self._find(session_id, owner)
            self._forget(session, "deleted")
        self._ended(session)
        self._free(session, done)
        log.info("session deleted", extra={"session": session.id, "model": session.model, "steps": session.steps})
        return session

    def discard(self, session: SessionRecord) -> None:
        """Drop a record whose create failed."""
        with self._lock:
            if self._sessions.get(session.id) is session:
                self._forget(session, None)
        self._ended(session)
        self._free(session, lambda _: None)

    def end(self, sessions: list[SessionRecord], why: ServiceError) -> list[SessionRecord]:
        """End these sessions now (their model version is force-unloaded): later calls naming them get `why`;
        requests already accepted finish first, then their rows are freed."""
        with self._lock:
            ended = [s for s in sessions if self._sessions.get(s.id) is s]
            for session in ended:
                self._forget(session, None)
                self._remember(session.id, why)
        for session in ended:
            self._ended(session)
            self._free(session, lambda _: None)
        return ended

    def reap(self) -> list[SessionRecord]:
        """Evict every session idle for longer than its TTL (none with a request in progress)."""
        now = self.clock()
        with self._lock:
            expired = [s for s in self._sessions.values() if s.inflight == 0 and now - s.last_used > s.ttl_s]
            for session in expired:
                self._forget(session, "expired")
        for session in expired:
            self._ended(session)
            self._metrics.evictions.labels(session.model, "ttl").inc()
            self._free(session, lambda _: None)
            log.info("session expired", extra={"session": session.id, "model": session.model, "steps": session.steps,
                                               "ttl_s": session.ttl_s})
        return expired

    def _forget(self, session: SessionRecord, why: str | None) -> None:
        """Under the lock."""
        del self._sessions[session.id]
        session.ended = True
        self._per_owner[session.owner] -= 1
        if self._per_owner[session.owner] <= 0:
            del self._per_owner[session.owner]
        if why:
            self._remember(session.id, why)
        self._metrics.live_sessions.labels(session.model).dec()

    def _remember(self, session_id: str, why: str | ServiceError) -> None:
        """Under the lock."""
        self._gone[session_id] = why
        while len(self._gone) > TOMBSTONES:
            self._gone.popitem(last=False)

    def _ended(self, session: SessionRecord) -> None:
        """Outside the lock: tell the listener (the snapshot store removes the session's file)."""
        if self.on_end is not None and session.ended:
            try:
                self.on_end(session)
            except Exception:  # a failing listener must not fail the delete
                log.exception("on_end listener failed for session %s", session.id)

    def _free(self, session: SessionRecord, done: Done) -> None:
        self._batchers[session.key].submit_control(session, free_action, done, force=True)
