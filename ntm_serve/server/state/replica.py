"""Replica mode (`--store-url`): this server is one of several behind a proxy, and the shared store
(ntm_serve/server/state/store.py) is the source of truth for every session's state.

- A session this replica does not hold is **taken over** from the store on its first call here: the claim
  raises the session's epoch (fencing out the replica that held it), the state is loaded into a row, and
  the session is served from the device from then on.
- Every answered step is **committed** (compare-and-set on epoch and steps) before its response leaves, by
  default; the commits of one batch go to the store in one pipeline (a commit thread, woken once per
  engine call). With `--commit-every N` a session is committed every N-th request and responses do not
  wait: a crash loses up to N-1 answered requests per session (docs/scale-out.md).
- A commit that fails (fenced by a newer holder, store unreachable, session deleted) drops the local copy
  and answers with a status the SDK retries (ABORTED, UNAVAILABLE) or NOT_FOUND: never two writers.
- A replica that lacks the weights a session was made by (its `ntm.checkpoint_sha256`) refuses it with
  UNAVAILABLE, before touching it, so the client lands on a replica that has them.
- A retry of a request whose commit landed but whose answer was lost (crash, broken stream, a commit's reply lost
  and the commit sent again) is answered again from the store's record of the session's last REPLAY_DEPTH
  answers (ntm_serve/api/replay.py) instead of being refused.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
from prometheus_client import Counter, Histogram

from ntm_serve.api.errors import PackError, ServiceError, exhausted, invalid, not_found, unavailable
from ntm_serve.api.headers import group_of
from ntm_serve.api.replay import REPLAY_DEPTH
from ntm_serve.server.batcher import defer_wakeup
from ntm_serve.server.jobs import Job, PackOutcome, StepOutcome
from ntm_serve.server.memory_size import restorable
from ntm_serve.server.metrics import BATCH_BUCKETS, LATENCY_BUCKETS
from ntm_serve.server.registry import weights_missing
from ntm_serve.server.sessions import MAX_ID_CHARS, Done, MakePack, SessionRecord, init_action, new_session_id
from ntm_serve.server.state.store import (
    STORE_ERRORS,
    Answer,
    CommitItem,
    PackCommit,
    SessionStore,
    StoreError,
    StoreLimit,
    StoreUnavailable,
    state_blob,
)

if TYPE_CHECKING:
    from ntm_serve.api.proto_gen.ntm.v1 import ntm_pb2
    from ntm_serve.server.metrics import Metrics
    from ntm_serve.server.registry import ModelSet, ServedModel
    from ntm_serve.server.sessions import SessionRegistry

log = logging.getLogger(__name__)

MakeJob = Callable[[SessionRecord, Done], Job]
Control = Callable[[SessionRecord, Callable[..., Any]], Awaitable[Any]]
OUT_DTYPE = np.dtype("<f4")


def aborted(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.ABORTED, message)


def model_version(model: ServedModel) -> str:
    """The served version number of a model, as the store keeps it (a string: any version label fits)."""
    return str(model.version)


@dataclass(eq=False)
class Held:
    """What this replica knows of a session it holds."""

    epoch: int  # the epoch its takeover got; commits name it
    queued_to: int  # steps of the last commit handed to the commit thread (batcher thread)
    committed: int  # steps the store acknowledged (commit thread)
    answers: deque[Answer] = field(default_factory=lambda: deque(maxlen=REPLAY_DEPTH))  # (for answering retries)
    uncommitted: int = 0  # answered requests not committed yet (commit_every > 1)


@dataclass(eq=False)
class Pending:
    session: SessionRecord
    held: Held
    item: CommitItem
    respond: tuple[Done, StepOutcome] | None  # answered after the commit (None: already answered)
    queued: float = field(default_factory=time.perf_counter)


@dataclass(eq=False)
class PackPending:
    """A packed message's commits, answered (or refused) as one once the store has all or none of them."""

    sessions: tuple[SessionRecord, ...]  # entry order
    helds: tuple[Held, ...]
    item: PackCommit
    respond: tuple[Done, PackOutcome]
    queued: float = field(default_factory=time.perf_counter)


class ClusterMetrics:
    def __init__(self, metrics: Metrics) -> None:
        r = metrics.registry
        self.takeovers = Counter("ntm_cluster_takeovers", "Sessions taken over from the store.", ["model"],
                                 registry=r)
        self.commits = Counter("ntm_cluster_commits", "Commits by outcome (ok, fenced, steps, missing, "
                               "unreachable, unreplicated: applied by the store's primary but not confirmed by "
                               "--store-min-replicas store replicas, so refused UNAVAILABLE).", ["outcome"],
                               registry=r)
        self.commit_seconds = Histogram("ntm_cluster_commit_seconds", "Time from a step's end to its commit "
                                        "acknowledged by the store.", buckets=LATENCY_BUCKETS, registry=r)
        self.commit_batch = Histogram("ntm_cluster_commit_batch", "Commits per store pipeline.",
                                      buckets=BATCH_BUCKETS, registry=r)
        self.replays = Counter("ntm_cluster_replays", "Retried requests answered from the store's record of "
                               "their committed result.", registry=r)
        self.dropped = Counter("ntm_cluster_dropped", "Local session copies dropped (reason: fenced, steps, "
                               "missing, unreachable, unreplicated, stale).", ["reason"], registry=r)


class Committer:
    """The commit thread: takes every commit queued since its last round and sends them in one pipeline."""

    def __init__(self, store: SessionStore, handle: Callable[[list[Pending | PackPending], list[Any]], None],
                 metrics: ClusterMetrics) -> None:
        self._store = store
        self._handle = handle
        self._metrics = metrics
        self._cond = threading.Condition()
        self._queue: deque[Pending | PackPending] = deque()
        self._signalled = False
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="committer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, pending: Pending | PackPending) -> None:
        with self._cond:
            self._queue.append(pending)
            if self._signalled:
                return
            self._signalled = True
        if not defer_wakeup(self._notify):  # on a batcher thread: once per engine call, not per request
            self._notify()

    def _notify(self) -> None:
        with self._cond:
            self._signalled = False
            self._cond.notify()

    def stop(self) -> None:
        """Commit everything queued, then end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait(0.05)  # a wake-up deferred by a batcher that then stopped is not lost
                if not self._queue:
                    return
                batch = list(self._queue)
                self._queue.clear()
            results = self._store.commit_many([p.item for p in batch])
            self._metrics.commit_batch.observe(len(batch))
            try:
                self._handle(batch, results)
            except Exception:  # the commit thread must outlive any one bad round
                log.exception("handling %d commit results failed", len(batch))


class Replica:
    def __init__(self, store: SessionStore, registry: SessionRegistry, models: ModelSet,
                 metrics: Metrics, control: Control, *, name: str, commit_every: int = 1) -> None:
        self.store = store
        self.registry = registry
        self.models = models
        self.name = name
        self.commit_every = commit_every
        self._control = control
        self._metrics = ClusterMetrics(metrics)
        self._held: dict[SessionRecord, Held] = {}
        self._adopting: dict[str, asyncio.Task[None]] = {}
        self.committer = Committer(store, self._committed, self._metrics)
        registry.on_end = self._ended

    def start(self) -> None:
        self.committer.start()

    # --- create, take over, delete (event loop) -------------------------------------------------------

    async def create(self, served: ServedModel, ttl_seconds: float, owner: str,
                     state: dict[str, np.ndarray] | None = None, steps: int = 0, group: str = "",
                     memory_rows: int = 0) -> SessionRecord:
        """A new session written to the store only: whichever replica its calls hash to takes it over. The limits
        (--max-sessions, --max-sessions-per-owner) are counted in the store, across the cluster. Its memory size
        `memory_rows` (0: the trained N) goes with its state's shapes."""
        model, digest = served.spec.name, served.spec.checkpoint_sha256
        rows = memory_rows or served.spec.trained_rows
        session = SessionRecord(new_session_id(group), model, owner, self.registry.ttl_for(ttl_seconds), time.time(),
                                self.registry.clock(), steps=steps, checkpoint_sha256=digest, memory_rows=rows)
        tensors = served.batcher.engine.initial_state_at(rows) if state is None else state
        blob = state_blob(session.id, model, owner, session.ttl_s, session.created_wall, steps, digest, tensors)
        try:
            created = await self.store.create(session.id, model=model, version=model_version(served), digest=digest,
                                              owner=owner, ttl_s=session.ttl_s, created_wall=session.created_wall,
                                              steps=steps, blob=blob, max_sessions=self.registry.max_sessions,
                                              max_per_owner=self.registry.max_sessions_per_owner)
        except STORE_ERRORS as err:
            raise unavailable(f"session store unreachable, session not created: {err}") from err
        except StoreLimit as err:
            raise _limit_error(err, self.registry.max_sessions, self.registry.max_sessions_per_owner) from err
        if not created:  # 128 random bits collided: never seen, but never overwrite
            raise aborted("session id collision; retry")
        return session

    async def ensure_local(self, session_id: str, owner: str, verify: bool = False) -> SessionRecord:
        """The session held here, taken over from the store first if need be. `verify` (reads: GetSession,
        ExportSession) also checks that no other replica took it over since (one store round trip), so a read
        never answers from a stale copy; steps need not: their commit is fenced."""
        _check_id(session_id)
        session = self._local(session_id, owner)
        if session is not None and verify:
            held = self._held.get(session)
            try:
                current = await self.store.epoch(session_id)
            except STORE_ERRORS as err:
                raise unavailable(f"session store unreachable: {err}") from err
            if held is None or current != held.epoch:
                self._drop(session, "stale")
                session = None
        if session is None:
            await self._take_over(session_id, owner)
            session = self._local(session_id, owner)
            if session is None:  # dropped again at once (a failed commit): the client retries
                raise aborted(f"session {session_id} moved while being taken over; retry")
        return session

    async def prepare_step(self, request: ntm_pb2.StepRequest, owner: str) -> StepOutcome | None:
        """Before a step: hold the session (take it over if need be). A copy here that stands elsewhere than
        the request expects is refreshed from the store once (it may be stale: the session moved away and
        back). Returns the recorded answer when the request is a retry of the last committed one."""
        expect = request.expect_steps if request.HasField("expect_steps") else None
        session = await self.ensure_local(request.session_id, owner)
        if expect is None or session.inflight > 0 or session.steps == expect:
            return None
        held = self._held.get(session)
        replay = self._replay(held, request, expect, session.steps)
        if replay is not None:
            return replay
        self._drop(session, "stale")
        session = await self.ensure_local(request.session_id, owner)
        return self._replay(self._held.get(session), request, expect, session.steps)

    def moved(self, session_id: str) -> ServiceError:
        """For a session that vanished from this replica between its take-over and its step."""
        return aborted(f"session {session_id} was dropped by this replica (taken over elsewhere, or its commit "
                       "failed); retry with expect_steps")

    async def delete(self, session_id: str, owner: str) -> None:
        _check_id(session_id)
        try:
            outcome = await self.store.delete(session_id, owner)
        except STORE_ERRORS as err:
            raise unavailable(f"session store unreachable, session not deleted: {err}") from err
        if outcome == "owner":
            raise ServiceError(grpc.StatusCode.PERMISSION_DENIED, f"session {session_id} belongs to another client")
        session = self._local(session_id, owner)
        if session is not None:
            self.registry.close(session_id, owner, lambda _: None)
        if outcome == "missing":
            raise await self._missing(session_id)

    async def _missing(self, session_id: str) -> ServiceError:
        try:
            gone = await self.store.gone(session_id)
        except STORE_ERRORS:
            gone = None
        if gone == "deleted":
            return not_found(f"session {session_id} was deleted")
        return not_found(f"unknown session {session_id!r} (never created, or expired: idle longer than its TTL)")

    def _local(self, session_id: str, owner: str) -> SessionRecord | None:
        try:
            session = self.registry.get(session_id, owner)
        except ServiceError as err:
            if err.code == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return session if session in self._held else None

    async def _take_over(self, session_id: str, owner: str) -> None:
        """One take-over per session at a time; it runs to its end even if the caller goes away."""
        task = self._adopting.get(session_id)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._claim_and_load(session_id, owner))
            self._adopting[session_id] = task
            task.add_done_callback(lambda _: self._adopting.pop(session_id, None))
        await asyncio.shield(task)

    async def _claim_and_load(self, session_id: str, owner: str) -> None:
        try:
            digests = sorted({m.spec.checkpoint_sha256 for m in self.models.every()})  # versions come and go
            claim = await self.store.claim(session_id, owner, digests, self.name)
        except STORE_ERRORS as err:
            raise unavailable(f"session store unreachable, session {session_id} not loaded: {err}") from err
        except StoreError as err:
            raise ServiceError(grpc.StatusCode.DATA_LOSS, str(err)) from err
        if claim.outcome == "missing":
            raise await self._missing(session_id)
        if claim.outcome == "owner":
            raise ServiceError(grpc.StatusCode.PERMISSION_DENIED, f"session {session_id} belongs to another client")
        if claim.outcome == "digest":  # refused before the claim: the holder is not fenced out for nothing
            raise weights_missing(claim.model, claim.digest, retryable=True)
        stored = claim.session
        assert stored is not None
        served = self.models.get_key((stored.model, stored.digest))
        if served is None:  # unloaded between claim and now
            raise weights_missing(stored.model, stored.digest, retryable=True)
        rows = restorable(served.spec, {name: a.shape for name, a in stored.state.items()})
        if rows is None:  # this replica's export of those weights runs on other memory sizes
            low, high = served.spec.memory_rows
            raise unavailable(f"session {session_id}: its state's shapes do not fit {served.label} here (its graphs "
                              f"run on {low} to {high} memory rows); retry: another replica may run it")
        if self.registry.count() >= self.registry.max_sessions:
            raise exhausted(f"replica {self.name} holds {self.registry.count()} sessions (its limit); retry later")
        session = SessionRecord(session_id, stored.model, owner, stored.ttl_s, stored.created_wall,
                                self.registry.clock(), steps=stored.steps, checkpoint_sha256=stored.digest,
                                memory_rows=rows)
        self._held[session] = Held(stored.epoch, stored.steps, stored.steps,
                                   deque(stored.answers, maxlen=REPLAY_DEPTH))
        self.registry.adopt(session)
        try:
            await self._control(session, init_action(stored.state))
        except BaseException:
            self._held.pop(session, None)
            self.registry.discard(session)
            raise
        self._metrics.takeovers.labels(stored.model).inc()
        log.info("session taken over", extra={"session": session_id, "model": stored.model, "steps": stored.steps,
                                               "epoch": stored.epoch})

    def _replay(self, held: Held | None, request: ntm_pb2.StepRequest, expect: int,
                steps: int) -> StepOutcome | None:
        """The recorded answer of `request` when it is a retry of one of the session's last committed requests
        (a client that sent several before it lost their answers sends them again in order)."""
        shape = request.inputs.shape
        answer = _recorded(held, steps, request.request_id, expect, shape[0] if len(shape) == 2 else -1)
        if answer is None:
            return None
        self._metrics.replays.inc()
        outputs = np.frombuffer(answer.out, OUT_DTYPE).reshape(answer.t, -1).astype(np.float32)
        return StepOutcome(outputs, answer.to_steps, None, None)

    # --- commits (batcher thread, then commit thread) -------------------------------------------------

    def committing(self, make: MakeJob, request_id: str) -> MakeJob:
        """Wrap a step job so that its answer is committed (or, every N-th, committed first)."""

        def make_committed(session: SessionRecord, done: Done) -> Job:
            return make(session, self._after_step(session, request_id, done))

        return make_committed

    def _after_step(self, session: SessionRecord, request_id: str, done: Done) -> Done:
        def finished(result: Any) -> None:  # on the batcher thread, right after the request's last step
            if not isinstance(result, StepOutcome):
                done(result)  # refused or failed: nothing changed
                return
            held = self._held.get(session)
            if held is None:
                done(self.moved(session.id))
                return
            held.uncommitted += 1
            respond_now = self.commit_every > 1
            if held.uncommitted >= self.commit_every:
                item = self._commit_item(session, held, result.steps, request_id, result.outputs)
                self.committer.put(Pending(session, held, item, None if respond_now else (done, result)))
            if respond_now:
                done(result)

        return finished

    def _commit_item(self, session: SessionRecord, held: Held, steps: int, request_id: str,
                     outputs: np.ndarray) -> CommitItem:
        """On the batcher thread (or after it stopped): the session's row is its state after `steps`."""
        served = self.models.get_key(session.key)
        if served is None:
            raise RuntimeError(f"session {session.id}: its model version was unloaded")
        state = served.batcher.engine.read_row(session.slot, session.memory_rows)
        blob = state_blob(session.id, session.model, session.owner, session.ttl_s, session.created_wall, steps,
                          session.checkpoint_sha256, state)
        item = CommitItem(session.id, held.epoch, held.queued_to, steps, blob, request_id, len(outputs),
                          np.ascontiguousarray(outputs, OUT_DTYPE).tobytes(), session.ttl_s)
        held.queued_to = steps
        held.uncommitted = 0
        return item

    def _committed(self, batch: list[Pending | PackPending], results: list[Any]) -> None:
        """On the commit thread: answer (or fail) each request, drop sessions whose commit failed."""
        now = time.perf_counter()
        for pending, result in zip(batch, results, strict=True):
            reason, detail = (_failure(result), str(result)) if isinstance(result, Exception) else result
            if isinstance(pending, PackPending):
                self._pack_committed(pending, reason, detail, now)
                continue
            self._metrics.commits.labels(reason).inc()
            item = pending.item
            if reason == "ok":
                held = pending.held
                _record(held, item)
                self._metrics.commit_seconds.observe(now - pending.queued)
                if pending.respond is not None:
                    done, outcome = pending.respond
                    done(outcome)
                continue
            self._drop(pending.session, reason)
            error = _commit_error(item, reason, detail)
            if pending.respond is not None:
                pending.respond[0](error)
            else:
                log.error("answered steps of session %s were not committed (%s): a retry will see the store's "
                          "last committed step", item.session_id, error.message)

    def _drop(self, session: SessionRecord, reason: str) -> None:
        """Forget the local copy; the store's last commit stays the truth. Out of the registry first, so a
        call arriving meanwhile takes the session over afresh instead of finding a half-dropped copy."""
        if session not in self._held:
            return
        self.registry.discard(session)  # idempotent; tells _ended, which forgets the Held
        self._held.pop(session, None)
        self._metrics.dropped.labels(reason).inc()
        log.info("session dropped", extra={"session": session.id, "reason": reason})

    def _ended(self, session: SessionRecord) -> None:
        """Expired here or deleted: this replica no longer holds it (the store keeps its own TTL)."""
        self._held.pop(session, None)

    # --- packed messages (StreamPackedSteps) -----------------------------------------------------------
    # A message's sessions share one placement group, which the proxy places on one replica (ntm_serve/api/headers.py).
    # Here every entry is taken over like a per-session step, the message runs as one PackJob, and its commits go to
    # the store as one script (PackCommit): the store holds all of the message or none of it.

    async def prepare_pack(self, request: ntm_pb2.PackedStepRequest, owner: str) -> PackOutcome | None:
        """Before a packed message: one group, every session held here (taken over if need be; a copy that stands
        elsewhere than its entry expects is refreshed from the store once). Returns the recorded answer when the
        message is a retry of the one its sessions last committed."""
        ids = [entry.session_id for entry in request.entries]
        expect = [entry.expect_steps if entry.HasField("expect_steps") else None for entry in request.entries]
        _check_group(ids)
        sessions = await self._hold_all(ids, owner)
        off = [e for e, (s, x) in enumerate(zip(sessions, expect, strict=True))
               if x is not None and s.inflight == 0 and s.steps != x]
        if not off:
            return None
        replay = self._pack_replay(sessions, request, expect)
        if replay is not None:
            return replay
        for e in off:
            self._drop(sessions[e], "stale")
        return self._pack_replay(await self._hold_all(ids, owner), request, expect)

    async def _hold_all(self, ids: list[str], owner: str) -> list[SessionRecord]:
        """Every entry's session held here, taken over together; a PackError naming the entries that could not be."""
        found = self.registry.find_many(ids, owner)
        missing = [e for e, s in enumerate(found) if not isinstance(s, SessionRecord) or s not in self._held]
        if missing:
            taken = await asyncio.gather(*(self.ensure_local(ids[e], owner) for e in missing), return_exceptions=True)
            refused: dict[int, ServiceError] = {}
            for e, outcome in zip(missing, taken, strict=True):
                if isinstance(outcome, ServiceError):
                    refused[e] = outcome
                elif isinstance(outcome, BaseException):
                    raise outcome
                else:
                    found[e] = outcome
            if refused:
                raise PackError(refused, len(ids))
        return [s for s in found if isinstance(s, SessionRecord)]

    def _pack_replay(self, sessions: list[SessionRecord], request: ntm_pb2.PackedStepRequest,
                     expect: list[int | None]) -> PackOutcome | None:
        """The recorded answer of `request` when every entry recorded this message among its last committed ones."""
        shape = request.inputs.shape
        if len(shape) != 3 or shape[0] != len(sessions):
            return None
        answers = []
        for session, x in zip(sessions, expect, strict=True):
            answer = _recorded(self._held.get(session), session.steps, request.request_id, x, shape[1])
            if answer is None:
                return None
            answers.append(answer)
        self._metrics.replays.inc()
        outputs = np.stack([np.frombuffer(a.out, OUT_DTYPE).reshape(a.t, -1) for a in answers])
        return PackOutcome(outputs.astype(np.float32), [a.to_steps for a in answers], None, None)

    def committing_pack(self, make: MakePack, request_id: str) -> MakePack:
        """Wrap a packed job so that its answer leaves once the store has every entry's commit (whatever
        --commit-every says: the store never holds half a message)."""

        def make_committed(sessions: tuple[SessionRecord, ...], done: Done) -> Job:
            return make(sessions, self._after_pack(sessions, request_id, done))  # type: ignore[no-any-return]

        return make_committed

    def _after_pack(self, sessions: tuple[SessionRecord, ...], request_id: str, done: Done) -> Done:
        def finished(result: Any) -> None:  # on the batcher thread, right after the message's last step
            if not isinstance(result, PackOutcome):
                done(result)  # refused or failed: nothing changed
                return
            helds = [self._held.get(s) for s in sessions]
            if any(h is None for h in helds):  # an entry was dropped meanwhile: so are the others' new rows
                for session in sessions:
                    self._drop(session, "stale")
                done(aborted("a session of this packed message was dropped by this replica (taken over elsewhere, "
                             "or its commit failed); nothing was applied: retry with expect_steps"))
                return
            try:
                item = self._pack_commit(sessions, helds, request_id, result)  # type: ignore[arg-type]
            except Exception as err:  # e.g. its version force-unloaded: nothing committed, so nothing answered
                log.exception("packed message of %d sessions not committed", len(sessions))
                for session in sessions:
                    self._drop(session, "unreachable")
                done(unavailable(f"packed message not committed: {err}; retry with expect_steps"))
                return
            self.committer.put(PackPending(sessions, tuple(helds), item, (done, result)))  # type: ignore[arg-type]

        return finished

    def _pack_commit(self, sessions: tuple[SessionRecord, ...], helds: list[Held], request_id: str,
                     result: PackOutcome) -> PackCommit:
        """On the batcher thread: every entry's row is its state after the message (read in one pass)."""
        served = self.models.get_key(sessions[0].key)
        if served is None:
            raise RuntimeError(f"session {sessions[0].id}: its model version was unloaded")
        size = sessions[0].memory_rows  # one N for every entry (packed.py)
        states = served.batcher.engine.peek_rows([s.slot for s in sessions], rows=size)  # name -> (E, ...)
        t = result.outputs.shape[1]
        items = []
        for e, (session, held) in enumerate(zip(sessions, helds, strict=True)):
            steps = result.steps[e]
            blob = state_blob(session.id, session.model, session.owner, session.ttl_s, session.created_wall, steps,
                              session.checkpoint_sha256, {name: rows[e] for name, rows in states.items()})
            out = np.ascontiguousarray(result.outputs[e], OUT_DTYPE).tobytes()
            items.append(CommitItem(session.id, held.epoch, held.queued_to, steps, blob, request_id, t, out,
                                    session.ttl_s))
            held.queued_to = steps
            held.uncommitted = 0
        return PackCommit(tuple(items))

    def _pack_committed(self, pending: PackPending, reason: str, detail: str, now: float) -> None:
        """On the commit thread: answer the message, or refuse it and drop every one of its sessions."""
        self._metrics.commits.labels(reason).inc(len(pending.sessions))
        done, outcome = pending.respond
        if reason == "ok":
            for held, item in zip(pending.helds, pending.item.items, strict=True):
                _record(held, item)
            self._metrics.commit_seconds.observe(now - pending.queued)
            done(outcome)
            return
        for session in pending.sessions:
            self._drop(session, reason)
        if reason not in ("fenced", "steps", "missing"):  # store unreachable, or the write not confirmed
            done(unavailable(f"session store unreachable, packed message not committed: retry with expect_steps "
                             f"({detail})"))
            return
        entry, _, why = detail.partition(":")
        e = int(entry)
        done(PackError({e: _commit_error(pending.item.items[e], reason, why)}, len(pending.sessions)))

    # --- drain ----------------------------------------------------------------------------------------

    def flush(self) -> int:
        """After the batchers stopped: commit every answered request not committed yet (commit_every > 1),
        wait for the commit thread, and return how many sessions were written."""
        items = [Pending(s, h, self._commit_item(s, h, s.steps, "", np.zeros((0, 1), np.float32)), None)
                 for s, h in list(self._held.items()) if h.uncommitted > 0 and self.models.get_key(s.key)]
        for pending in items:
            self.committer.put(pending)
        self.committer.stop()
        return len(items)

    def close(self) -> None:
        self.store.close()


def _recorded(held: Held | None, steps: int, rid: str, expect: int | None, t: int) -> Answer | None:
    """The recorded answer of request `rid` of `t` steps that expected `expect`, if this copy (at `steps`, all of
    them committed: it is the store's state) has it on record."""
    if held is None or not rid or expect is None or steps != held.committed:
        return None
    for answer in held.answers:
        if answer.rid == rid and answer.t == t and answer.to_steps - t == expect:
            return answer
    return None


def _record(held: Held, item: CommitItem) -> None:
    """On the commit thread, once the store has `item`: the copy's committed count, and its answer on record."""
    held.committed = item.to_steps
    if item.rid:
        held.answers.append(Answer(item.rid, item.to_steps, item.t, item.out))


def _check_id(session_id: str) -> None:
    if not session_id:
        raise invalid("session_id is required")
    if len(session_id) > MAX_ID_CHARS:
        raise invalid(f"session_id has {len(session_id)} characters, more than {MAX_ID_CHARS}: not one of ours")


def _check_group(ids: list[str]) -> None:
    """A packed message's sessions share one placement group (the proxy places a group on one replica): else a
    PackError (INVALID_ARGUMENT) naming every entry outside the first entry's group."""
    groups = [group_of(sid) for sid in ids]
    first = next((e for e, g in enumerate(groups) if g), None)
    refused: dict[int, ServiceError] = {}
    for e, (sid, group) in enumerate(zip(ids, groups, strict=True)):
        if not group:
            refused[e] = invalid(f"session {sid} has no group: a replica serves a packed message only when all its "
                                 "sessions share one group (create them with group=...), which the proxy places on "
                                 "one replica")
        elif first is not None and group != groups[first]:
            refused[e] = invalid(f"session {sid} is in group {group!r}, entry {first}'s in {groups[first]!r}: a "
                                 "packed message steps sessions of one group")
    if refused:
        raise PackError(refused, len(ids))


def _limit_error(err: StoreLimit, max_sessions: int, max_per_owner: int) -> ServiceError:
    """The single server's RESOURCE_EXHAUSTED, for a limit counted in the store (the same on every replica)."""
    if err.which == "owner":
        return exhausted(f"per-client session limit reached ({max_per_owner} live sessions across the cluster)")
    return exhausted(f"session limit reached ({max_sessions} live sessions across the cluster); delete sessions or "
                     "wait for idle ones to expire")


def _failure(err: Exception) -> str:
    """A commit that raised: the store was not reached, or it answered without confirming the write."""
    return "unreplicated" if isinstance(err, StoreUnavailable) else "unreachable"


def _commit_error(item: CommitItem, reason: str, detail: str) -> ServiceError:
    sid = item.session_id
    if reason == "fenced":
        return aborted(f"session {sid} was taken over by another replica (epoch {detail}, ours {item.epoch}); "
                       "this step was not applied: retry with expect_steps")
    if reason == "steps":
        return aborted(f"session {sid}: the store stands at {detail} steps, this replica's copy at "
                       f"{item.from_steps}; the step was not applied: retry with expect_steps")
    if reason == "missing":
        return not_found(f"session {sid} was deleted or expired")
    return unavailable(f"session store unreachable, step of session {sid} not committed: retry with expect_steps "
                       f"({detail})")
