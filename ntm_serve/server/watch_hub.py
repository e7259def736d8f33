"""Watching a session think, the server's half: who may watch which session, attaching and detaching watchers,
ending every watch of a session when it ends, and the WatchSession RPC. The batcher's half (frames, the one-frame
slots) is ntm_serve/server/watch.py; the inspector page (ntm_serve/ui) watches through this same hub.

A watch ends with the reason its session ended, after the frames of every step accepted before that: NOT_FOUND
"deleted" or "expired" (or the forced unload's own error), ABORTED when a replica dropped the session because another
took it over, UNAVAILABLE when the server stops.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import grpc

from ntm_serve.api.errors import ServiceError, invalid, not_found, unavailable
from ntm_serve.api.proto_gen.ntm.v1 import ntm_pb2
from ntm_serve.api.tensors import to_tensor
from ntm_serve.api.wire import Malformed
from ntm_serve.server.jobs import ControlJob
from ntm_serve.server.sessions import SessionRecord
from ntm_serve.server.watch import HEADS, Frame, Tap, Watcher

if TYPE_CHECKING:
    from ntm_serve.runtime.engine import Engine
    from ntm_serve.server.auth import TokenAuth
    from ntm_serve.server.metrics import Metrics
    from ntm_serve.server.registry import ModelSet
    from ntm_serve.server.sessions import SessionRegistry

log = logging.getLogger(__name__)

MAX_EVERY = 1_000_000_000


class Keeping(Protocol):
    """Where sessions are kept (ntm_serve/server/state/keeping.py), as far as watching needs it."""

    replica_name: str | None  # replica mode: sessions move between replicas

    async def ensure_local(self, session_id: str, owner: str) -> None: ...


@dataclass(frozen=True)
class Caller:
    """Who asks: the owner name of a session token (None for an admin token that is not one), and whether it may
    see every session (an admin token, or a server without any tokens)."""

    owner: str | None
    admin: bool

    def may_see(self, session: SessionRecord) -> bool:
        return self.admin or session.owner == self.owner


def frame_message(frame: Frame, dropped: int, heads_only: bool) -> ntm_pb2.WatchFrame:
    message = ntm_pb2.WatchFrame(session_id=frame.session_id, steps=frame.steps, snapshot=frame.snapshot,
                                 dropped=dropped)
    for name, array in frame.state.items():
        if not heads_only or name in HEADS:
            getattr(message, name).CopyFrom(to_tensor(array))
    if not heads_only and frame.inputs is not None and frame.outputs is not None:
        message.inputs.CopyFrom(to_tensor(frame.inputs))
        message.outputs.CopyFrom(to_tensor(frame.outputs))
    return message


def aborted(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.ABORTED, message)


def _settle(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


class WatchHub:
    """Every open watch of one server. Lives on its event loop; `on_end` may be called from any thread."""

    def __init__(self, models: ModelSet, registry: SessionRegistry, metrics: Metrics, auth: TokenAuth,
                 admin: TokenAuth, loop: asyncio.AbstractEventLoop, keeping: Keeping) -> None:
        self._models = models
        self._registry = registry
        self._metrics = metrics
        self._auth = auth
        self._admin = admin
        self._loop = loop
        self._keeping = keeping  # where sessions are kept (replica mode: taken over before it is watched)
        self._lock = threading.Lock()
        self._open: dict[Watcher, Tap] = {}
        self._draining = False
        previous = registry.on_end

        def on_end(session: SessionRecord) -> None:
            if previous is not None:
                previous(session)
            self._session_ended(session)

        registry.on_end = on_end

    # --- who may watch what ---------------------------------------------------------------------------

    def caller(self, metadata: Sequence[tuple[str, Any]] | None) -> Caller | None:
        """The caller of a call with this metadata (`authorization: Bearer <token>`), or None when its token is
        neither a session token nor an admin token."""
        owner = self._auth.owner(metadata)
        if not self._auth.enabled and not self._admin.enabled:
            return Caller(owner, True)
        admin = self._admin.enabled and self._admin.owner(metadata) is not None
        if owner is None and not admin:
            return None
        return Caller(owner, admin)

    def sessions(self, caller: Caller) -> list[SessionRecord]:
        """The live sessions `caller` may watch (on this replica, in replica mode)."""
        return [s for s in self._registry.sessions() if caller.may_see(s)]

    def sent_counter(self, watcher: Watcher) -> Any:
        """The counter of frames sent, for a watcher's model (incremented by whoever sends them)."""
        return self._metrics.watch_frames.labels(watcher.session.model)

    def watchers(self, session_id: str) -> int:
        with self._lock:
            return sum(1 for w in self._open if w.session.id == session_id)

    async def find(self, session_id: str, caller: Caller) -> SessionRecord:
        """The live session `caller` may watch, or the error saying why not (as the other calls name it)."""
        if caller.owner is not None:
            await self._keeping.ensure_local(session_id, caller.owner)
            found = self._registry.find_many([session_id], caller.owner)[0]
            if isinstance(found, SessionRecord):
                return found
            if not caller.admin or found.code != grpc.StatusCode.PERMISSION_DENIED:
                raise found
        session = next((s for s in self._registry.sessions() if s.id == session_id), None)
        if session is None:
            found = self._registry.find_many([session_id], "")[0]  # why not: deleted, expired, unknown
            raise found if isinstance(found, ServiceError) else not_found(f"session {session_id} has ended")
        return session

    # --- opening and closing watches ------------------------------------------------------------------

    async def open(self, session_id: str, caller: Caller, every: int = 1, heads_only: bool = False) -> Watcher:
        """A watcher of the session, attached between two of its requests; its first frame is the state then."""
        if self._draining:
            raise unavailable("server stopping: no new watches; watch again when it is back")
        if not 0 <= every <= MAX_EVERY:
            raise invalid(f"every must be 0 (every step) to {MAX_EVERY}, got {every}")
        session = await self.find(session_id, caller)
        served = self._models.get_key(session.key)
        if served is None:
            raise not_found(f"session {session.id} has ended: its model version was unloaded")
        tap = served.batcher.tap
        watcher = Watcher(session, every, heads_only, self._loop,
                          self._metrics.watch_frames_dropped.labels(session.model).inc)
        with self._lock:
            self._open[watcher] = tap
        self._metrics.watchers.labels(session.model).inc()
        try:
            future: asyncio.Future[Any] = self._loop.create_future()

            def attach(engine: Engine, _: SessionRecord) -> None:
                if not watcher.ended:  # ended while queued (its session ended): nothing to attach
                    tap.snapshot(engine, watcher)

            def done(result: Any) -> None:
                self._loop.call_soon_threadsafe(_settle, future, result)

            if not self._registry.submit_internal(session, lambda s, d: ControlJob(s, attach, d), done):
                raise self._why_ended(session)
            result = await future
            if isinstance(result, BaseException):
                raise result
        except BaseException:
            self.close(watcher)
            raise
        return watcher

    def close(self, watcher: Watcher) -> None:
        """Detach a watcher (its reader has gone, or its watch ended); idempotent."""
        with self._lock:
            tap = self._open.pop(watcher, None)
        if tap is None:
            return
        tap.remove(watcher)
        self._metrics.watchers.labels(watcher.session.model).dec()

    def drain(self) -> None:
        """On stop: every watch ends UNAVAILABLE (after the frame it holds), and no new ones open."""
        self._draining = True
        with self._lock:
            watchers = list(self._open)
        for watcher in watchers:
            watcher.finish(unavailable("server stopping: watch again when it is back"))

    def _session_ended(self, session: SessionRecord) -> None:
        """Any thread, right after `session` ended: its watches end with the reason, after the frames of the steps
        it had accepted (a control job queued behind them, before its row is freed)."""
        with self._lock:
            watchers = [(w, tap) for w, tap in self._open.items() if w.session is session]
        if not watchers:
            return
        why = self._why_ended(session)

        def end(_engine: Engine | None = None, _session: SessionRecord | None = None) -> None:
            for watcher, tap in watchers:
                tap.remove(watcher)
                watcher.finish(why)

        served = self._models.get_key(session.key)
        if served is None:  # its version is gone: no more steps can come
            end()
            return
        try:
            served.batcher.submit_control(session, end, lambda _: None, force=True)
        except ServiceError:  # the batcher has stopped
            end()

    def _why_ended(self, session: SessionRecord) -> ServiceError:
        found = self._registry.find_many([session.id], session.owner)[0]
        if isinstance(found, ServiceError) and not found.message.startswith("unknown session"):
            return found  # deleted, expired, its version force-unloaded
        # No tombstone: a replica let it go because another one took it over.
        if self._keeping.replica_name is not None:
            return aborted(f"session {session.id} moved to another replica: watch it again (the proxy routes the "
                           "call to the replica that holds it)")
        return not_found(f"session {session.id} has ended")

    # --- the RPC --------------------------------------------------------------------------------------

    async def serve(self, request: ntm_pb2.WatchSessionRequest | Malformed, context: Any) -> None:
        """WatchSession: frames until the session ends (its reason as the status) or the caller goes."""
        try:
            if isinstance(request, Malformed):
                raise invalid(request.message)
            caller = self.caller(context.invocation_metadata())
            if caller is None:
                raise ServiceError(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")
            watcher = await self.open(request.session_id, caller, request.every, request.heads_only)
        except ServiceError as err:
            self._metrics.errors.labels("WatchSession", err.code.name).inc()
            await context.abort(err.code, err.message)
        sent = self.sent_counter(watcher)
        try:
            while True:
                item = await watcher.next()
                if isinstance(item, ServiceError):
                    await context.abort(item.code, item.message)
                frame, dropped = item
                await context.write(frame_message(frame, dropped, watcher.heads_only))
                sent.inc()
        finally:
            self.close(watcher)
